"""Whole-video propagation: ``propagate_video(tracker, frames, keyframes)`` yields one
:class:`FrameResult` per frame, in the caller's object ids.

The pass order is the plugin's: forward from the first keyframe to the last frame (every keyframe
applied on its frame), then, when the first keyframe is not frame 0, a backward pass from it
(stepped again as the reference, not yielded again) down to frame 0. Object identity is owned
here: the caller's ids (any positive ints) become the tracker's contiguous ids 1..K in order of
first appearance and are mapped back in every result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .tracker import Tracker


class FrameSource(Protocol):
    """The frames of one video; a numpy (T, H, W, 3) uint8 array fits as is.

    ``source[i]`` is frame i (0-based) as an (H, W, 3) uint8 RGB array. A source may also have
    ``iter_frames(indexes) -> Iterator[(index, frame)]`` (a sequential or prefetching reader);
    :func:`propagate_video` reads through it when present, in the order of ``indexes``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


@dataclass
class Keyframe:
    """The masks given on one frame.

    label_map: (H, W) int, 0 background, the caller's object ids (any positive ints).
    objects: the ids given on this frame, including ones with no pixels here (given as absent);
        None: the ids present in ``label_map``. Ids with pixels are always given.
    """

    label_map: np.ndarray
    objects: Collection[int] | None = None


@dataclass
class FrameResult:
    """The result of one frame.

    index: 0-based frame index. label_map: (H, W) int64 in the caller's ids, 0 background.
    confidences: caller's id -> mean probability over its pixels in ``label_map`` (objects new on
    this frame's keyframe get no entry). keyframe: the keyframe applied on this frame, if any.
    reverse: True in the backward pass (frames before the first keyframe).
    """

    index: int
    label_map: np.ndarray
    confidences: dict[int, float]
    keyframe: Keyframe | None
    reverse: bool


def mean_confidences(probs: torch.Tensor | None, label_map: np.ndarray) -> dict[int, float]:
    """Object id -> mean probability of that object over its pixels in ``label_map``.

    probs: (K+1, h, w) tensor on any device, channel 0 background (resized bilinearly to
    ``label_map``'s (H, W) when its size differs); computed on its device with one gather and one
    scatter. Ids beyond the K channels (new on this frame) get no entry; None gives {}.
    """
    if probs is None:
        return {}
    height, width = label_map.shape
    if tuple(probs.shape[-2:]) != (height, width):
        probs = F.interpolate(probs[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
    channels = probs.shape[0]
    labels = torch.from_numpy(np.ascontiguousarray(label_map, dtype=np.int64)).to(probs.device)
    inside = labels < channels
    picked = probs.float().gather(0, labels.clamp(max=channels - 1)[None])[0] * inside
    size = int(labels.max()) + 1 if labels.numel() else 1
    sums = torch.zeros(size, dtype=torch.float64, device=probs.device).scatter_add_(
        0, labels.flatten(), picked.flatten().double())
    counts = torch.bincount(labels.flatten(), minlength=size)
    return {k: float(sums[k] / counts[k]) for k in range(1, min(size, channels)) if counts[k] > 0}


def _as_keyframe(index: int, value: Keyframe | np.ndarray) -> Keyframe:
    keyframe = value if isinstance(value, Keyframe) else Keyframe(np.asarray(value))
    label_map = np.asarray(keyframe.label_map)
    if label_map.ndim != 2 or not (np.issubdtype(label_map.dtype, np.integer) or label_map.dtype == bool):
        raise ValueError(f"keyframe {index}: label_map must be an (H, W) integer array, "
                         f"got {label_map.dtype} {label_map.shape}")
    if label_map.size and int(label_map.min()) < 0:
        raise ValueError(f"keyframe {index}: label_map ids must be >= 0 (0 = background)")
    if keyframe.objects is not None and any(int(i) < 1 for i in keyframe.objects):
        raise ValueError(f"keyframe {index}: objects must be ids >= 1, got {sorted(keyframe.objects)}")
    return keyframe


def _given_ids(keyframe: Keyframe) -> list[int]:
    """The caller's ids a keyframe gives, ascending: those with pixels and those listed."""
    present = {int(i) for i in np.unique(np.asarray(keyframe.label_map)) if i > 0}
    return sorted(present | {int(i) for i in (keyframe.objects or ())})


class ObjectIds:
    """The caller's object ids <-> the tracker's contiguous ids 1..K (in order of first
    appearance over the keyframes in frame order; ascending within a keyframe)."""

    def __init__(self, keyframes: Mapping[int, Keyframe]) -> None:
        self.caller_ids: list[int] = []
        self._tracker_id: dict[int, int] = {}
        for index in sorted(keyframes):
            for caller_id in _given_ids(keyframes[index]):
                if caller_id not in self._tracker_id:
                    self.caller_ids.append(caller_id)
                    self._tracker_id[caller_id] = len(self.caller_ids)
        self._to_caller = np.array([0] + self.caller_ids, dtype=np.int64)

    def to_tracker(self, keyframe: Keyframe) -> tuple[np.ndarray, list[int]]:
        """(the keyframe's (H, W) int64 label map, the ids it gives), in tracker ids."""
        values, inverse = np.unique(np.asarray(keyframe.label_map), return_inverse=True)
        mapped = np.array([self._tracker_id.get(int(v), 0) for v in values], dtype=np.int64)
        label_map = mapped[inverse].reshape(np.shape(keyframe.label_map))
        return label_map, [self._tracker_id[i] for i in _given_ids(keyframe)]

    def to_caller(self, label_map: np.ndarray, confidences: dict[int, float]) -> tuple[np.ndarray, dict[int, float]]:
        """A tracker label map and its confidences in the caller's ids."""
        return self._to_caller[label_map], {int(self._to_caller[k]): v for k, v in confidences.items()}


def _read(frames: FrameSource, indexes: Sequence[int]) -> Iterable[tuple[int, np.ndarray]]:
    """(index, frame) for ``indexes`` in order, through ``frames.iter_frames`` when it has one."""
    iter_frames = getattr(frames, "iter_frames", None)
    if iter_frames is not None:
        return iter_frames(indexes)
    return ((index, frames[index]) for index in indexes)


def _step(tracker: Tracker, ids: ObjectIds, index: int, frame: np.ndarray, keyframe: Keyframe | None,
          reverse: bool) -> FrameResult:
    """One tracker step on ``frame`` (with ``keyframe``'s masks, if any) as a FrameResult."""
    if keyframe is None:
        probs = tracker.step(frame)
    else:
        mask, given = ids.to_tracker(keyframe)
        probs = tracker.step(frame, mask, objects=given)
    label_map = tracker.label
    label_map, confidences = ids.to_caller(label_map, mean_confidences(probs, label_map))
    return FrameResult(index, label_map, confidences, keyframe, reverse)


def propagate_video(tracker: Tracker, frames: FrameSource,
                    keyframes: Mapping[int, Keyframe | np.ndarray]) -> Iterator[FrameResult]:
    """Propagate ``keyframes`` (frame index -> Keyframe, or an (H, W) label map) through ``frames``.

    Yields one :class:`FrameResult` per frame as it is computed: forward from the first keyframe
    to the last frame, then backward (``reverse=True``) from the frame before the first keyframe
    down to frame 0. Each keyframe is authoritative for the ids it gives (see
    :meth:`Tracker.step`). The tracker is reset before and after the video, also when the
    generator is closed early, so it is reusable at once. Bad keyframes (none, an index outside
    the video, a label map that is not (H, W) non-negative integers) raise ValueError when the
    generator starts.
    """
    count = len(frames)
    if not keyframes:
        raise ValueError("propagate_video needs at least one keyframe")
    checked = {int(i): _as_keyframe(int(i), kf) for i, kf in keyframes.items()}
    outside = sorted(i for i in checked if not 0 <= i < count)
    if outside:
        raise ValueError(f"keyframe indexes {outside} are outside the video's {count} frames")
    ids = ObjectIds(checked)
    first = min(checked)
    tracker.reset()
    try:
        for index, frame in _read(frames, range(first, count)):
            yield _step(tracker, ids, index, frame, checked.get(index), reverse=False)
        if first > 0:
            tracker.reset()
            for index, frame in _read(frames, range(first, -1, -1)):
                if index == first:  # the reference of the backward pass, already yielded
                    mask, given = ids.to_tracker(checked[first])
                    tracker.step(frame, mask, objects=given)
                    continue
                yield _step(tracker, ids, index, frame, None, reverse=True)
    finally:
        tracker.reset()
