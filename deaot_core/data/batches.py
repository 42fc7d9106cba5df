"""Training clips -> optimiser-step batches.

:class:`ClipSource` wraps any indexable clip source (item ``i`` -> :class:`~deaot_core.data.synthetic.Clip`,
a function of (seed, i)): objects renumbered from the reference frame, ID slots shuffled, clips
augmented. :class:`StepBatches` stacks the clips of one optimiser step; :func:`batch_to_tensors`
makes the model's input tensors.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..devices import IMAGE_MEAN, IMAGE_STD
from .augment import augment_clip, shuffle_ids
from .synthetic import Clip, clip_rng, relabel_from_reference

__all__ = ["IMAGE_MEAN", "IMAGE_STD", "ClipSource", "StepBatches", "stack_clips", "batch_to_tensors", "clips_to_batch"]


def stack_clips(clips: Sequence[Clip]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Clips of equal size -> (frames (B, T, H, W, 3) uint8, labels (B, T, H, W) uint8, object counts)."""
    counts = []
    for c in clips:
        ref = c.labels[0]
        ref = ref[ref != 255]
        counts.append(int(ref.max()) if ref.size else 0)
    return np.stack([c.frames for c in clips]), np.stack([c.labels for c in clips]), counts


def batch_to_tensors(frames, labels, counts: list[int], device: torch.device | str = "cpu"
                     ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """:func:`stack_clips` output (numpy arrays or tensors) -> (frames (B, T, 3, H, W) normalised
    float, labels (B, T, H, W) int64, counts) on ``device``."""
    frames = torch.as_tensor(frames).to(device, non_blocking=True)
    frames = frames.permute(0, 1, 4, 2, 3).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=device).view(1, 1, 3, 1, 1)
    frames = (frames - mean) / std
    labels = torch.as_tensor(labels).to(device, non_blocking=True).long()
    return frames, labels, [int(c) for c in counts]


def clips_to_batch(clips: Sequence[Clip], device: torch.device | str = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Clips of equal size -> (frames (B, T, 3, H, W) normalised float, labels (B, T, H, W) int64,
    object counts)."""
    return batch_to_tensors(*stack_clips(clips), device=device)


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` = the stacked clips of that optimiser step (:func:`stack_clips`), the same
    whichever process makes it, so a run with data workers sees exactly the serial run's data."""

    def __init__(self, source, batch_size: int):
        self.source, self.batch_size = source, batch_size

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, step: int):
        b = self.batch_size
        return stack_clips([self.source[step * b + i] for i in range(b)])


class ClipSource:
    """Training clips: item i is determined by (seed, i); objects renumbered 1..K from the
    reference frame, optionally moved to random ID slots (``id_shuffle`` probability), flip /
    photometric augmentation added."""

    def __init__(self, base, seed: int, augment: bool = True, max_objects: int = 10, id_shuffle: float = 0.0):
        self.base, self.seed, self.augment, self.max_objects = base, seed, augment, max_objects
        self.id_shuffle = id_shuffle

    def __getitem__(self, index: int) -> Clip:
        clip = self.base[index]
        rng = clip_rng([self.seed, 7919], index)
        labels = relabel_from_reference(clip.labels, rng, self.max_objects)
        if self.id_shuffle > 0 and rng.random() < self.id_shuffle:
            labels = shuffle_ids(labels, rng, self.max_objects)
        clip = Clip(clip.frames, labels)
        return augment_clip(clip, rng) if self.augment else clip
