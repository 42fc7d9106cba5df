"""Augmentations of training clips (numpy + OpenCV), shared by every clip source.

* :func:`random_scale_crop` -- rescale a clip and crop the training size ("balanced" crop);
* :func:`augment_clip` -- DeAOT's 'v2' photometric augmentation + horizontal flip;
* :func:`shuffle_ids` -- objects moved to random ID-bank slots.

Every function takes the random generator it draws from: a clip is a function of its seed.
"""
from __future__ import annotations

import cv2
import numpy as np

from .synthetic import Clip

__all__ = ["random_scale_crop", "augment_clip", "shuffle_ids"]


def random_scale_crop(frames: np.ndarray, labels: np.ndarray, rng: np.random.Generator, height: int, width: int,
                      scale_range: tuple[float, float] = (0.7, 1.3), tries: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Rescale a clip (short edge ~ the crop's short side x U(scale_range)) and crop
    (height, width), preferring crops where the reference frame shows an object (official
    "balanced" crop). Smaller results are padded (image grey, labels 0)."""
    t, ih, iw = labels.shape
    base = min(height, width) / 0.97
    s = base * rng.uniform(*scale_range) / min(ih, iw)
    nh, nw = max(1, int(round(ih * s))), max(1, int(round(iw * s)))
    if (nh, nw) != (ih, iw):
        frames = np.stack([cv2.resize(f, (nw, nh), interpolation=cv2.INTER_LINEAR) for f in frames])
        labels = np.stack([cv2.resize(l, (nw, nh), interpolation=cv2.INTER_NEAREST) for l in labels])
    ph, pw = max(0, height - nh), max(0, width - nw)
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=0)
        frames[:, nh:, :] = (124, 116, 104)
        frames[:, :, nw:] = (124, 116, 104)
        labels = np.pad(labels, ((0, 0), (0, ph), (0, pw)), constant_values=0)
        nh, nw = labels.shape[1:]
    best = None
    for _ in range(tries):
        y0, x0 = int(rng.integers(0, nh - height + 1)), int(rng.integers(0, nw - width + 1))
        ref = labels[0, y0:y0 + height, x0:x0 + width]
        if best is None:
            best = (y0, x0)
        if ((ref > 0) & (ref != 255)).any():
            best = (y0, x0)
            break
    y0, x0 = best
    return frames[:, y0:y0 + height, x0:x0 + width], labels[:, y0:y0 + height, x0:x0 + width]


def augment_clip(clip: Clip, rng: np.random.Generator) -> Clip:
    """DeAOT's 'v2' photometric augmentation + flip, applied consistently to a clip:
    horizontal flip (p 0.5), colour jitter (p 0.8), grayscale (p 0.2), Gaussian blur (p 0.3)."""
    frames = clip.frames.astype(np.float32)
    labels = clip.labels
    if rng.random() < 0.5:
        frames, labels = frames[:, :, ::-1], labels[:, :, ::-1]
    if rng.random() < 0.8:
        b, c, s = rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4)
        frames = frames * b
        mean = frames.mean(axis=(1, 2, 3), keepdims=True)
        frames = (frames - mean) * c + mean
        gray = frames.mean(axis=3, keepdims=True)
        frames = gray + (frames - gray) * s
        hue = rng.uniform(-0.1, 0.1)
        if abs(hue) > 0.01:
            out = []
            for f in np.clip(frames, 0, 255).astype(np.uint8):
                hsv = cv2.cvtColor(f, cv2.COLOR_RGB2HSV)
                hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(hue * 180))) % 180).astype(np.uint8)
                out.append(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
            frames = np.stack(out).astype(np.float32)
    if rng.random() < 0.2:
        frames = np.repeat(frames.mean(axis=3, keepdims=True), 3, axis=3)
    if rng.random() < 0.3:
        sigma = rng.uniform(0.1, 2.0)
        frames = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])
    return Clip(np.ascontiguousarray(np.clip(frames, 0, 255).astype(np.uint8)), np.ascontiguousarray(labels))


def shuffle_ids(labels: np.ndarray, rng: np.random.Generator, max_objects: int = 10) -> np.ndarray:
    """Move objects 1..K to K distinct random ID-bank slots in 1..max_objects (255 kept), so
    that every slot gets trained, like the official trainer's identity shuffling."""
    k = int(labels[labels != 255].max()) if (labels != 255).any() else 0
    lut = np.arange(256, dtype=np.uint8)
    lut[1:k + 1] = rng.choice(np.arange(1, max_objects + 1), size=k, replace=False)
    return lut[labels]
