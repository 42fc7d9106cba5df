"""The propagation order of one video and what each frame's result depends on.

With keyframes k_1 < ... < k_n on a video of T frames (0-based indexes):

- the forward pass starts at k_1 and runs to frame T-1, applying every keyframe on its frame;
  its result on frame t depends on the keyframes k_i <= t (their content and positions);
- the head pass runs backward from k_1 (its reference) down to frame 0; frames t < k_1 depend
  on k_1 alone;
- with ``bidirectional``, each gap between two keyframes (k_i, k_i+1) also gets a backward pass
  from k_i+1 (its reference) down to k_i + 1; a frame in the gap is the fusion of both passes
  and depends on the keyframes <= k_i and on k_i+1. Frames after k_n come from the forward pass
  alone.

A frame's *signature* hashes exactly these inputs (plus the caller's ``provenance``: model,
weights, options, video): equal signatures mean equal results, which is what incremental re-runs
use to keep a stored frame instead of recomputing it.
"""
from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

FUSIONS = ("distance", "equal")  # how the two passes of a gap are weighted (see deaot_core.fusion)


def keyframe_hash(label_map: np.ndarray, given: Iterable[int], meta: str = "") -> str:
    """Content hash of one keyframe: its (H, W) label map, the ids it gives and ``meta`` (any
    text the caller attaches to the keyframe, e.g. the class names of its objects)."""
    digest = hashlib.sha1()
    array = np.ascontiguousarray(label_map, dtype=np.int64)
    digest.update(repr((array.shape, sorted(int(i) for i in given), meta)).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:20]


def _digest(*parts) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:20]


@dataclass
class Schedule:
    """The passes over one video and the dependencies of every frame.

    count: frames in the video; keyframes: 0-based index -> content hash (:func:`keyframe_hash`);
    provenance: text that changes every result when it changes (model, weights, options, video).
    """

    count: int
    keyframes: Mapping[int, str]
    bidirectional: bool = False
    fusion: str = "distance"
    provenance: str = ""
    indexes: list[int] = field(init=False)
    _signatures: dict[int, str] = field(init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.keyframes:
            raise ValueError("a schedule needs at least one keyframe")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        self.indexes = sorted(int(i) for i in self.keyframes)

    @property
    def first(self) -> int:
        return self.indexes[0]

    def gap(self, t: int) -> Optional[tuple[int, int]]:
        """(k_i, k_i+1) when frame t is fused from both passes (bidirectional, strictly between
        two keyframes), else None."""
        if not self.bidirectional or t in self.keyframes or t < self.first or t > self.indexes[-1]:
            return None
        after = bisect.bisect_right(self.indexes, t)
        return self.indexes[after - 1], self.indexes[after]

    def gaps(self) -> list[tuple[int, int]]:
        """The fused gaps (k_i, k_i+1) that hold at least one frame, in frame order."""
        if not self.bidirectional:
            return []
        return [(a, b) for a, b in zip(self.indexes, self.indexes[1:]) if b - a > 1]

    def _forward_inputs(self, t: int) -> tuple:
        return tuple((k, self.keyframes[k]) for k in self.indexes if k <= t)

    def inputs(self, t: int) -> tuple:
        """What frame t's result is computed from (see the module docstring)."""
        if t < self.first:
            return ("head", (self.first, self.keyframes[self.first]))
        gap = self.gap(t)
        if gap is None:
            return ("forward", self._forward_inputs(t))
        a, b = gap
        return ("fused", self.fusion, self._forward_inputs(a), (b, self.keyframes[b]))

    def signature(self, t: int) -> str:
        """A short hash of frame t's inputs and the provenance (computed once per frame)."""
        if t not in self._signatures:
            self._signatures[t] = _digest(self.provenance, t, self.inputs(t))
        return self._signatures[t]

    def signatures(self) -> dict[int, str]:
        return {t: self.signature(t) for t in range(self.count)}

    def state_key(self, t: int) -> str:
        """The key of the forward pass's tracker state after stepping frame t (t >= k_1)."""
        return _digest(self.provenance, "forward-state", t, self._forward_inputs(t))

    def checkpoints(self) -> list[int]:
        """Frames after which the forward pass saves its state for later incremental runs: each
        keyframe and the frame before each keyframe but the first."""
        points = set(self.indexes) | {k - 1 for k in self.indexes[1:]}
        return sorted(p for p in points if self.first <= p < self.count)

    def todo(self, previous: Optional[Mapping[int, str]]) -> list[int]:
        """The frames to compute: all without ``previous`` (frame index -> stored signature),
        else those whose stored signature differs from (or lacks) the current one."""
        if previous is None:
            return list(range(self.count))
        return [t for t in range(self.count) if previous.get(t) != self.signature(t)]


@dataclass
class Work:
    """The passes one run needs for its ``todo`` frames (sorted 0-based indexes)."""

    todo: list[int]
    head_to: Optional[int]  # the head pass runs from k_1 - 1 down to this frame (None: no head pass)
    forward_to: Optional[int]  # the forward pass runs up to this frame (None: no forward pass)
    forward_from: Optional[int]  # the first frame the forward pass must have computed
    gaps: dict[tuple[int, int], int]  # fused gap -> the lowest frame its backward pass must reach


def plan_work(schedule: Schedule, todo: Sequence[int]) -> Work:
    """Which passes cover ``todo``: the head pass down to its lowest frame, the forward pass
    from the first todo frame at or after k_1 (fused frames need the forward result too) to the
    last, and each fused gap's backward pass down to its lowest todo frame."""
    first = schedule.first
    head = [t for t in todo if t < first]
    forward = [t for t in todo if t >= first]
    gaps: dict[tuple[int, int], int] = {}
    for t in forward:
        gap = schedule.gap(t)
        if gap is not None:
            gaps[gap] = min(gaps.get(gap, t), t)
    return Work(list(todo), min(head) if head else None, max(forward) if forward else None,
                min(forward) if forward else None, gaps)

