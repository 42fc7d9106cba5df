"""Where to label next: a per-frame score of how likely the propagated masks are wrong, from
signals that need no ground truth.

Signals per frame (each in [0, 1], higher = more suspect):

- ``distance``: frames from the nearest keyframe, over the video's largest such distance
  (errors accumulate with every propagated frame);
- ``confidence``: 1 - the mean confidence of the frame's objects (an object tracked before but
  missing counts as confidence 0);
- ``change``: the largest change of one object's mask from the previous frame in propagation
  order (1 - IoU of the two masks, which covers area jumps, shape changes and vanishing or
  appearing objects);
- ``lost``: how far the objects' areas have moved from their area on the keyframe that gave them,
  averaged over the objects (per object 1 - min(r, 1/r) for the area ratio r: 0 unchanged, 1
  vanished or blown up), as a tracked object that fades or leaks is the commonest failure;
- ``disagreement``: 1 - the smallest IoU of the forward and backward passes' masks of an
  object, on frames fused from both (bidirectional runs; 0 elsewhere);
- ``cut``: a scene cut, from the change of the frame's colour histogram (when frames are given).

A confidence or agreement that is not a finite number (NaN, an infinity: a numerical failure, so
unknown) counts as 0, the most doubtful, as a missing confidence does: such a frame is scored and
suggested, never skipped. Finite values are clipped to [0, 1].

The score is a weighted sum, ``WEIGHTS`` (chosen on synthetic clips held apart from the
benchmark's, see BENCHMARKS.md), divided by the weights' total; a frame right after a scene cut
(``cut`` above ``CUT_THRESHOLD``) scores at least its cut value. Keyframes score 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

SIGNALS = ("distance", "confidence", "change", "lost", "disagreement", "cut")
# Tuned on 8 synthetic clips held apart from the benchmark's (bench_annotation_loop.py --part tune):
# disagreement and cut earned no weight there (synthetic clips have no scene cuts); a real cut
# is flagged by CUT_THRESHOLD instead.
WEIGHTS = {"distance": 1.0, "confidence": 0.5, "change": 0.5, "lost": 4.0, "disagreement": 0.0, "cut": 0.0}
CUT_THRESHOLD = 0.4  # a histogram change above this is a scene cut (synthetic motion stays below 0.2, a cut ~1)
REVIEW_SIZE = 128  # label maps are compared at most this many pixels on their long side


@dataclass
class FrameReview:
    """One frame's propagated result as the review reads it.

    label_map: (H, W) ids, 0 background; confidences: id -> confidence; agreement: id -> IoU of the
    two passes (fused frames only)."""

    label_map: np.ndarray
    confidences: Mapping[int, float] = field(default_factory=dict)
    agreement: Optional[Mapping[int, float]] = None


def _probability(value: float) -> float:
    """A confidence or agreement as used here: non-finite (unknown) -> 0, else clipped to [0, 1]."""
    value = float(value)
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


def _small(label_map: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(max(label_map.shape) / REVIEW_SIZE)))
    return np.asarray(label_map)[::step, ::step]


def _mask_change(previous: np.ndarray, current: np.ndarray) -> float:
    """The largest 1 - IoU of one object's masks in two label maps (objects of either)."""
    ids = (set(np.unique(previous)) | set(np.unique(current))) - {0}
    worst = 0.0
    for object_id in ids:
        a, b = previous == object_id, current == object_id
        union = int((a | b).sum())
        if union:
            worst = max(worst, 1.0 - int((a & b).sum()) / union)
    return worst


def _propagation_order(count: int, keyframes: Sequence[int]) -> dict[int, int]:
    """frame -> the frame it was propagated from (forward after the first keyframe, backward
    before it); keyframes map to themselves."""
    first = min(keyframes)
    source = {t: t - 1 for t in range(first + 1, count)}
    source.update({t: t + 1 for t in range(first)})
    source.update({k: k for k in keyframes})
    return source


def colour_cut_scores(frames) -> np.ndarray:
    """(T,) in [0, 1]: half the L1 distance of each frame's 8x8x8 colour histogram to the
    previous frame's (frame 0: 0). ``frames``: a sequence of (H, W, 3) uint8 RGB images."""
    scores, previous = [], None
    for frame in frames:
        small = np.asarray(frame)[::4, ::4].reshape(-1, 3) // 32
        codes = small[:, 0].astype(np.int64) * 64 + small[:, 1] * 8 + small[:, 2]
        histogram = np.bincount(codes, minlength=512) / max(1, len(codes))
        scores.append(0.0 if previous is None else 0.5 * float(np.abs(histogram - previous).sum()))
        previous = histogram
    return np.asarray(scores, dtype=np.float64)


def review_signals(frames: Sequence[FrameReview], keyframes: Sequence[int],
                   cuts: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """Signal name -> (T,) values in [0, 1] for the T ``frames`` (every frame of the video, in
    order) propagated from the 0-based ``keyframes``; ``cuts``: :func:`colour_cut_scores`."""
    count = len(frames)
    if not keyframes:
        raise ValueError("review_signals needs the keyframes the frames were propagated from")
    keys = sorted(int(k) for k in keyframes)
    index = np.arange(count)
    distance = np.min(np.abs(index[:, None] - np.asarray(keys)[None, :]), axis=1).astype(np.float64)
    signals = {name: np.zeros(count) for name in SIGNALS}
    signals["distance"] = distance / max(1.0, distance.max())
    small = [_small(f.label_map) for f in frames]
    reference_area: dict[int, int] = {}  # object -> its area on the first keyframe that gives it
    for k in keys:
        ids, areas = np.unique(small[k], return_counts=True)
        for object_id, area in zip(ids, areas):
            if object_id > 0:
                reference_area.setdefault(int(object_id), int(area))
    tracked: set[int] = set()
    source = _propagation_order(count, keys)
    for t in sorted(range(count), key=lambda i: (i < keys[0], i if i >= keys[0] else -i)):
        frame = frames[t]
        present = {int(i) for i in np.unique(small[t]) if i > 0}
        tracked |= present
        confidences = [_probability(frame.confidences.get(i, 0.0)) for i in sorted(tracked)]
        signals["confidence"][t] = 1.0 - float(np.mean(confidences)) if confidences else 0.0
        if source[t] != t:
            signals["change"][t] = _mask_change(small[source[t]], small[t])
        if reference_area:
            ids, areas = np.unique(small[t], return_counts=True)
            area = dict(zip(ids.tolist(), areas.tolist()))
            ratios = [area.get(i, 0) / a for i, a in reference_area.items() if a > 0]
            signals["lost"][t] = float(np.mean([1.0 - min(r, 1.0 / r) if r > 0 else 1.0 for r in ratios]))
        if frame.agreement:
            signals["disagreement"][t] = 1.0 - min(_probability(v) for v in frame.agreement.values())
    if cuts is not None:
        signals["cut"] = np.clip(np.asarray(cuts, dtype=np.float64), 0.0, 1.0)
    for k in keys:
        for name in SIGNALS:
            signals[name][k] = 0.0
    return signals


def review_scores(frames: Sequence[FrameReview], keyframes: Sequence[int], cuts: Optional[np.ndarray] = None,
                  weights: Optional[Mapping[str, float]] = None) -> np.ndarray:
    """(T,) scores in [0, 1], higher = more likely wrong: the weighted signals of
    :func:`review_signals` (``weights``: default :data:`WEIGHTS`)."""
    weights = dict(WEIGHTS if weights is None else weights)
    signals = review_signals(frames, keyframes, cuts)
    total = sum(weights.get(name, 0.0) for name in SIGNALS) or 1.0
    score = sum(weights.get(name, 0.0) * signals[name] for name in SIGNALS) / total
    cut = np.where(signals["cut"] > CUT_THRESHOLD, signals["cut"], 0.0)
    return np.maximum(score, cut)


def top_frames(scores: np.ndarray, count: int, spacing: int = 1) -> list[int]:
    """The ``count`` highest-scoring frames (0-based), at least ``spacing`` frames apart, best first."""
    chosen: list[int] = []
    for t in np.argsort(-np.asarray(scores), kind="stable"):
        if len(chosen) >= count:
            break
        if scores[t] > 0 and all(abs(int(t) - c) >= spacing for c in chosen):
            chosen.append(int(t))
    return chosen
