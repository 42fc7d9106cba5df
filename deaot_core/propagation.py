"""Whole-video propagation: ``propagate_video(tracker, frames, keyframes)`` yields one
:class:`FrameResult` per frame, in the caller's object ids.

The pass order (:mod:`deaot_core.schedule`): forward from the first keyframe to the last frame
(every keyframe applied on its frame), then, when the first keyframe is not frame 0, a backward
pass from it (stepped again as the reference, not yielded again) down to frame 0. With
``bidirectional``, each gap between two keyframes also runs backward from the later keyframe and
its frames are the fusion of both passes (:mod:`deaot_core.fusion`). With ``previous`` (the
signatures of stored results), only the frames whose inputs changed are computed; the forward pass
resumes from a saved tracker state (:mod:`deaot_core.states`) where one exists. Object identity
is owned here: the caller's ids (any positive ints) become the tracker's contiguous ids 1..K in
order of first appearance and are mapped back in every result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .fusion import GapBuffer, forward_weight, fuse
from .schedule import Schedule, Work, keyframe_hash, plan_work
from .states import StateStore
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
    meta: text that is part of the keyframe's identity for incremental re-runs (e.g. the class
        names the caller attaches to its objects): changing it recomputes the frames that depend
        on the keyframe.
    """

    label_map: np.ndarray
    objects: Collection[int] | None = None
    meta: str = ""


@dataclass
class FrameResult:
    """The result of one frame.

    index: 0-based frame index. label_map: (H, W) int64 in the caller's ids, 0 background.
    confidences: caller's id -> mean probability over its pixels in ``label_map`` (objects new on
    this frame's keyframe get no entry). keyframe: the keyframe applied on this frame, if any.
    reverse: True in the backward pass (frames before the first keyframe).
    signature: a hash of everything the result was computed from (:mod:`deaot_core.schedule`);
        store it with the result and pass it back as ``previous`` for incremental re-runs.
    agreement: on fused frames (``bidirectional``), the IoU of the two passes' masks of every
        object both know (a disagreement signal); None elsewhere.
    """

    index: int
    label_map: np.ndarray
    confidences: dict[int, float]
    keyframe: Keyframe | None
    reverse: bool
    signature: str = ""
    agreement: dict[int, float] | None = None

    @property
    def fused(self) -> bool:
        return self.agreement is not None


@dataclass
class PropagationStats:
    """What one :func:`propagate_video` call did (filled in as it runs).

    computed: frames yielded; reused: frames whose ``previous`` signature still holds (not
    yielded); replayed: frames the forward pass stepped only to rebuild its memory; resumed_from:
    the frame whose saved tracker state the forward pass resumed after (None: none)."""

    computed: int = 0
    reused: int = 0
    replayed: int = 0
    resumed_from: int | None = None


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

    def to_caller_ids(self, tracker_ids) -> list[int]:
        return [int(self._to_caller[i]) for i in tracker_ids]

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


def _compact(label_map: np.ndarray, given: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """A keyframe in ids 1..m (those with pixels first, then those given as absent) and the
    original id of each: a gap's backward pass tracks only that keyframe's objects."""
    present = [int(i) for i in np.unique(label_map) if i > 0]
    order = present + sorted(set(int(i) for i in given) - set(present))
    lookup = np.zeros(int(max(order, default=0)) + 1, dtype=np.int64)
    lookup[order] = np.arange(1, len(order) + 1)
    return lookup[label_map], order


class _VideoRun:
    """One :func:`propagate_video` call: the passes of its :class:`Work` over the frames."""

    def __init__(self, tracker: Tracker, frames: FrameSource, keyframes: dict[int, Keyframe], ids: ObjectIds,
                 schedule: Schedule, states: StateStore | None, stats: PropagationStats) -> None:
        self.tracker, self.frames, self.keyframes, self.ids = tracker, frames, keyframes, ids
        self.schedule, self.states, self.stats = schedule, states, stats
        self.masks = {i: ids.to_tracker(kf) for i, kf in keyframes.items()}  # tracker ids: (label map, given)
        self.checkpoints = set(schedule.checkpoints())

    def _step(self, index: int, frame: np.ndarray) -> torch.Tensor:
        if index not in self.masks:
            return self.tracker.step(frame)
        mask, given = self.masks[index]
        return self.tracker.step(frame, mask, objects=given)

    def _result(self, index: int, probs: torch.Tensor | None, label_map: np.ndarray, reverse: bool,
                agreement: dict[int, float] | None = None) -> FrameResult:
        label_map, confidences = self.ids.to_caller(label_map, mean_confidences(probs, label_map))
        if agreement is not None:
            agreement = dict(zip(self.ids.to_caller_ids(agreement), agreement.values()))
        self.stats.computed += 1
        return FrameResult(index, label_map, confidences, self.keyframes.get(index), reverse,
                           self.schedule.signature(index), agreement)

    def _resume(self, needed_from: int) -> int:
        """Restore the latest saved forward state before ``needed_from``; the frame to step next."""
        first = self.schedule.first
        if self.states is not None:
            for point in sorted((p for p in self.checkpoints if p < needed_from), reverse=True):
                state = self.states.get(self.schedule.state_key(point))
                if state is None:
                    continue
                try:
                    self.tracker.load_state(state)
                except (ValueError, KeyError, TypeError, RuntimeError):
                    continue  # a state of other options: recompute instead
                self.stats.resumed_from = point
                return point + 1
        self.tracker.reset()
        return first

    def _save(self, index: int) -> None:
        if self.states is not None and index in self.checkpoints:
            self.states.put(self.schedule.state_key(index), self.tracker.state())

    def _gap_pass(self, gap: tuple[int, int], lowest: int) -> tuple[GapBuffer | None, list[int]]:
        """Run the gap's backward pass from its later keyframe down to ``lowest``; the forward
        pass's state is set aside and restored. Returns the probabilities and the (tracker) id of
        each of the pass's own ids."""
        later = gap[1]
        compact, order = _compact(*self.masks[later])
        saved = self.tracker.state(device=None)
        buffer = None
        try:
            self.tracker.reset()
            for index, frame in _read(self.frames, range(later, lowest - 1, -1)):
                if index == later:
                    self.tracker.step(frame, compact)
                    continue
                probs = self.tracker.step(frame)
                if buffer is None:
                    buffer = GapBuffer(later - lowest, probs.shape[0], tuple(probs.shape[-2:]))
                buffer.put(index, probs)
        finally:
            self.tracker.load_state(saved)
        return buffer, order

    def _chunks(self, start: int, stop: int) -> list[tuple[int, int]]:
        """[start, stop] split before every keyframe: each chunk is at most one keyframe and the
        frames after it up to the next."""
        points = [start] + [k for k in self.schedule.indexes if start < k <= stop]
        return [(a, b - 1) for a, b in zip(points, points[1:])] + [(points[-1], stop)]

    def forward(self, work: Work) -> Iterator[FrameResult]:
        if work.forward_to is None:
            return
        todo = set(work.todo)
        for chunk_start, chunk_stop in self._chunks(self._resume(work.forward_from), work.forward_to):
            inner = chunk_start + 1 if chunk_start in self.masks else chunk_start
            gap = self.schedule.gap(inner) if inner <= chunk_stop else None
            buffer, order = self._gap_pass(gap, work.gaps[gap]) if gap in work.gaps else (None, [])
            for index, frame in _read(self.frames, range(chunk_start, chunk_stop + 1)):
                probs = self._step(index, frame)
                self._save(index)
                if index not in todo:
                    self.stats.replayed += 1
                    continue
                if buffer is None or index == chunk_start and chunk_start in self.masks:
                    yield self._result(index, probs, self.tracker.label, reverse=False)
                    continue
                weight = forward_weight(index, gap[0], gap[1], self.schedule.fusion)
                fused, agreement = fuse(probs, buffer.get(index, probs.device), order, weight)
                label_map = Tracker._argmax(fused).cpu().numpy().astype(np.int64)
                yield self._result(index, fused, label_map, reverse=False, agreement=agreement)

    def head(self, work: Work) -> Iterator[FrameResult]:
        if work.head_to is None:
            return
        todo, first = set(work.todo), self.schedule.first
        self.tracker.reset()
        for index, frame in _read(self.frames, range(first, work.head_to - 1, -1)):
            if index == first:  # the reference of the head pass, already yielded by the forward pass
                self._step(index, frame)
                continue
            probs = self.tracker.step(frame)
            if index in todo:
                yield self._result(index, probs, self.tracker.label, reverse=True)


def propagate_video(tracker: Tracker, frames: FrameSource, keyframes: Mapping[int, Keyframe | np.ndarray], *,
                    bidirectional: bool = False, fusion: str = "distance",
                    previous: Mapping[int, str] | None = None, states: StateStore | None = None,
                    provenance: str = "", stats: PropagationStats | None = None) -> Iterator[FrameResult]:
    """Propagate ``keyframes`` (frame index -> Keyframe, or an (H, W) label map) through ``frames``.

    Yields one :class:`FrameResult` per frame as it is computed: forward from the first keyframe
    to the last frame, then backward (``reverse=True``) from the frame before the first keyframe
    down to frame 0. Each keyframe is authoritative for the ids it gives (see
    :meth:`Tracker.step`).

    bidirectional: frames between two keyframes fuse the forward pass with a backward pass from
        the later keyframe (``fusion``: "distance" or "equal" weights, :mod:`deaot_core.fusion`);
        about twice the work between keyframes.
    previous: frame index -> the ``signature`` of a stored result; frames whose signature still
        holds are not computed (nor yielded): their stored results are what a full run would give.
    states: where the forward pass saves its state at keyframes and looks for one to resume
        from (:mod:`deaot_core.states`); without it an incremental run restarts the forward pass
        at the first keyframe (same results, more work).
    provenance: text that identifies everything else the results depend on (model, weights,
        options, the video): part of every signature and state key.
    stats: filled with what was computed, reused and replayed.

    The tracker is reset before and after the video, also when the generator is closed early,
    so it is reusable at once. Bad keyframes (none, an index outside the video, a label map that
    is not (H, W) non-negative integers) raise ValueError when the generator starts.
    """
    count = len(frames)
    if not keyframes:
        raise ValueError("propagate_video needs at least one keyframe")
    checked = {int(i): _as_keyframe(int(i), kf) for i, kf in keyframes.items()}
    outside = sorted(i for i in checked if not 0 <= i < count)
    if outside:
        raise ValueError(f"keyframe indexes {outside} are outside the video's {count} frames")
    ids = ObjectIds(checked)
    hashes = {}
    for index, keyframe in checked.items():
        label_map, given = ids.to_tracker(keyframe)
        hashes[index] = keyframe_hash(label_map, given, keyframe.meta)
    schedule = Schedule(count, hashes, bidirectional=bool(bidirectional), fusion=fusion, provenance=provenance)
    stats = stats if stats is not None else PropagationStats()
    todo = schedule.todo(previous)
    stats.reused = count - len(todo)
    run = _VideoRun(tracker, frames, checked, ids, schedule, states, stats)
    work = plan_work(schedule, todo)
    tracker.reset()
    try:
        yield from run.forward(work)
        yield from run.head(work)
    finally:
        tracker.reset()
