"""One video through the tracker: open it, run :func:`deaot_core.propagation.propagate_video` on
its parsed keyframes, turn each frame's result into FiftyOne labels and write them as they
come (:func:`run_video`: one attempt; :mod:`.sample_path` retries out-of-memory failures).

FiftyOne frame numbers are 1-based, the core's frame indexes 0-based: index = number - 1.
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import logging
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from deaot_core import TrackerOptions
from deaot_core.states import DirectoryStates, StateStore
from deaot_core.propagation import FrameResult, Keyframe as CoreKeyframe, PropagationStats, propagate_video

from ..fields import RUN_SIGNATURE
from ..labels import mask_to_detections, mask_to_segmentation
from ..polygons import detections_to_polylines
from ..video_io import VideoReader, file_digest, open_video, prefetch
from .clips import clip_frames
from .corrections import LABELS_DIGEST_ATTRIBUTE, edited_since_written, keep_corrections, labels_digest
from .plan import SamplePlan
from .writer import FrameLabelWriter

log = logging.getLogger(__name__)

Report = Callable[[int, int, str], None]  # report(done, total, label)


SIGNATURE_ATTRIBUTE = RUN_SIGNATURE  # on each output fo.Detections: the frame's signature (deaot_core.schedule)
KEYFRAME_ATTRIBUTE = "deaot_keyframe"  # on each output fo.Detections: True on the run's keyframes
AGREEMENT_ATTRIBUTE = "agreement"  # on each fo.Detection of a fused frame: IoU of the two passes' masks


@dataclasses.dataclass
class PassTarget:
    """Where one video's labels go and how they are computed: the (staging) fields (the polygons
    field's values are derived from the Detections as they are written), the bulk-write size, the fields holding the previous output (read by incremental runs), the
    passes (``bidirectional``), ``incremental`` and ``weights`` (an identity of the weights, part
    of every frame's signature)."""

    dataset: Any
    output_field: str
    segmentation_field: Optional[str]
    write_every: int
    previous_fields: tuple = ()
    bidirectional: bool = False
    incremental: bool = False
    weights: str = ""

    clear: Optional[Callable[[], None]] = None  # empties the sample's values before an attempt
    polylines_field: Optional[str] = None

    def states(self) -> Optional[StateStore]:
        """Where incremental runs save and find the forward pass's tracker states."""
        return DirectoryStates() if self.incremental else None

    @property
    def with_segmentation(self) -> bool:
        return self.segmentation_field is not None

    def reset(self) -> None:
        """A clean slate before an attempt (the staging field may hold a copy of the old output,
        or a failed attempt's values)."""
        if self.clear is not None:
            self.clear()

    def writer(self, sample_id: str):
        """A context manager with ``add(frame_number, detections, segmentation)`` and ``written``."""
        return FrameLabelWriter(self.dataset, sample_id, self.output_field, self.segmentation_field,
                                self.write_every, self.polylines_field, frame_polylines)


def frame_polylines(detections):
    """A frame's output Detections as filled polygons (:mod:`deaot_vos.polygons`), marked
    ``keyframe`` when the frame is one of the run's keyframes. Derived from the Detections
    alone, so an incremental run's reused frames get theirs without being recomputed."""
    keyframe = detections is not None and bool(detections.get_field(KEYFRAME_ATTRIBUTE)
                                                 if detections.has_field(KEYFRAME_ATTRIBUTE) else False)
    return detections_to_polylines(detections, keyframe)


class MemoryTarget(PassTarget):
    """A :class:`PassTarget` that keeps a sample's labels in memory (``labels``: video frame
    number -> (Detections, Segmentation or None)) instead of writing them: what the zoo model
    returns to ``apply_model``."""

    def __init__(self, segmentation: bool, bidirectional: bool, weights: str):
        super().__init__(None, "detections", "segmentation" if segmentation else None, 1,
                         bidirectional=bidirectional, weights=weights)
        self.labels: dict[int, tuple[Any, Any]] = {}
        self.written = 0

    def reset(self) -> None:
        self.labels = {}

    def writer(self, sample_id: str) -> "MemoryTarget":
        return self

    def add(self, frame_number: int, detections, segmentation=None) -> None:
        self.labels[frame_number] = (detections, segmentation)
        self.written = len(self.labels)

    def __enter__(self) -> "MemoryTarget":
        return self

    def __exit__(self, *exc) -> None:
        return None


@dataclasses.dataclass
class FrameCursor:
    """Where a video pass is: the video frame number being computed (None before the first);
    error messages and out-of-memory warnings name it."""

    frame: Optional[int] = None


@dataclasses.dataclass
class PassResult:
    """What one successful video pass did (an incremental run's ``reused`` frames were kept
    from the previous output) and the ``device`` / ``max_long_edge`` it ran at."""

    frames_written: int
    frames_recomputed: int
    frames_reused: int
    frames_replayed: int
    seconds: float
    fps: Optional[float]
    device: str = ""
    max_long_edge: Any = None
    warnings: list = dataclasses.field(default_factory=list)


class VideoFrames:
    """A :class:`deaot_core.propagation.FrameSource` over a decord reader (or a clip of one,
    :class:`.clips.ClipFrames`): 0-based indexes, read sequentially (backward in forward-decoded
    chunks) and prefetched on a thread. Each frame handed over sets ``cursor.frame`` to its
    video frame number (the frame being computed; a clip's frame + ``offset``)."""

    def __init__(self, reader: VideoReader, cursor: FrameCursor, offset: int = 0):
        self.reader, self.cursor, self.offset = reader, cursor, offset

    def __len__(self) -> int:
        return self.reader.num_frames

    def __getitem__(self, index: int) -> np.ndarray:
        return self.reader.frame(index + 1)

    def _numbered(self, indexes: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        indexes = list(indexes)
        if not indexes:
            return iter(())
        first, last = indexes[0] + 1, indexes[-1] + 1
        if indexes == list(range(indexes[0], indexes[-1] + 1)):
            return self.reader.forward(first, last)
        if indexes == list(range(indexes[0], indexes[-1] - 1, -1)):
            return self.reader.backward(first, last)
        return ((i + 1, self.reader.frame(i + 1)) for i in indexes)

    def iter_frames(self, indexes: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        for number, frame in prefetch(self._numbered(indexes)):
            self.cursor.frame = number + self.offset
            yield number - 1, frame


class LabelMaker:
    """A video's :class:`FrameResult` -> (Detections, Segmentation or None). Object labels come
    from the keyframes the frame depends on (those up to it; on the head pass, the first one; on
    a fused frame also the later keyframe of its gap), so frames computed in any order or subset
    get the labels of a full run. Each Detections carries the frame's signature, whether it is
    a keyframe and a digest of its labels (:mod:`.corrections`, which also puts a keyframe's
    corrected labels back as the user left them); on fused frames each Detection carries the
    passes' ``agreement``."""

    def __init__(self, sample: SamplePlan, with_segmentation: bool):
        self.sample, self.with_segmentation = sample, with_segmentation
        self.numbers = sorted(sample.keyframes)
        self._labels: list[dict[int, Any]] = []  # after each keyframe, in frame order
        labels: dict[int, Any] = {}
        for number in self.numbers:
            labels = {**labels, **sample.keyframes[number].labels}
            self._labels.append(labels)

    def labels_at(self, number: int, reverse: bool, fused: bool) -> dict[int, Any]:
        if reverse:
            return dict(self.sample.keyframes[self.numbers[0]].labels)
        position = max(0, bisect.bisect_right(self.numbers, number) - 1)
        labels = dict(self._labels[position])
        if fused and position + 1 < len(self.numbers):
            for obj_id, label in self.sample.keyframes[self.numbers[position + 1]].labels.items():
                labels.setdefault(obj_id, label)
        return labels

    def __call__(self, result: FrameResult) -> tuple[Any, Any]:
        number, registry = result.index + 1, self.sample.registry
        keyframe = self.sample.keyframes.get(number) if result.keyframe is not None else None
        labels = self.labels_at(number, result.reverse, result.fused)
        detections = mask_to_detections(result.label_map, result.confidences, registry, labels,
                                        exact=keyframe.exact if keyframe is not None else None,
                                        given=set(keyframe.objects) if keyframe is not None else None)
        if keyframe is not None and keyframe.corrected:
            keep_corrections(detections, keyframe, registry)
        detections[SIGNATURE_ATTRIBUTE] = result.signature
        detections[LABELS_DIGEST_ATTRIBUTE] = labels_digest(detections)
        detections[KEYFRAME_ATTRIBUTE] = keyframe is not None
        if result.agreement:
            by_index = {registry.by_id[i].index: v for i, v in result.agreement.items() if i in registry.by_id}
            for detection in detections.detections:
                if detection.index in by_index:
                    detection[AGREEMENT_ATTRIBUTE] = round(by_index[detection.index], 4)
        segmentation = mask_to_segmentation(result.label_map, registry) if self.with_segmentation else None
        return detections, segmentation


def _keyframe_meta(sample: SamplePlan, number: int) -> str:
    """What the output takes from a keyframe besides its masks: the label and output index of
    each object it gives, and the given detections copied exactly (part of its identity)."""
    keyframe, registry = sample.keyframes[number], sample.registry
    given = [(obj_id, keyframe.labels.get(obj_id), registry.by_id[obj_id].index) for obj_id in sorted(keyframe.objects)]
    exact = [(obj_id, list(getattr(det, "bounding_box", None) or [])) for obj_id, det in sorted(keyframe.exact.items())]
    return repr((given, exact))


def core_keyframes(sample: SamplePlan) -> dict[int, CoreKeyframe]:
    """The sample's keyframes as the core API takes them: 0-based index -> label map, the
    object ids given on it (also those given as absent) and its labels as ``meta``."""
    return {number - 1: CoreKeyframe(kf.label_map, kf.objects, meta=_keyframe_meta(sample, number))
            for number, kf in sample.keyframes.items()}


def video_provenance(tracker, sample: SamplePlan, target: PassTarget, reader: VideoReader) -> str:
    """Everything a frame's result depends on besides its keyframes: weights, model, the
    tracker's options and device type, the fields written, the video file and, for a clip, its
    frames (``reader``: the frames propagated, a clip's own)."""
    file_identity = file_digest(sample.filepath)  # content, not size and time: a replaced file is recomputed
    device = getattr(tracker, "device", None)
    options = getattr(tracker, "options", None)
    if isinstance(options, TrackerOptions):
        options = options.replace(threads=None)  # the thread count changes no label
    parts = (target.weights, type(tracker).__name__, getattr(getattr(tracker, "cfg", None), "name", None),
             options, getattr(device, "type", device),
             target.segmentation_field is not None, sample.filepath, file_identity, reader.num_frames,
             reader.height, reader.width)
    return repr(parts + (("clip", sample.support),) if sample.clip is not None else parts)


def holds_every_output(target: PassTarget, segmentation) -> bool:
    """Whether a frame's previous output can be reused for every field this run writes: the
    Detections carry the signature; a label map is needed too when the run writes one (a new or
    deleted segmentation field has none, so its frames are recomputed)."""
    return target.segmentation_field is None or segmentation is not None


def read_previous(target: PassTarget, sample: SamplePlan) -> tuple[dict[int, str], dict[int, tuple]]:
    """The previous output of the sample (of a clip: on its frames): 0-based frame index (within
    the clip) -> stored signature, and video frame number -> (Detections, Segmentation or None) of
    every frame that has a signature and was not edited since (:mod:`.corrections`)."""
    output, segmentation = (list(target.previous_fields) + [None, None])[:2]
    schema = target.dataset.get_frame_field_schema()
    if not output or output not in schema:
        return {}, {}
    fields = ["frames.frame_number", "frames." + output]
    with_segmentation = bool(segmentation) and segmentation in schema
    if with_segmentation:
        fields.append("frames." + segmentation)
    values = target.dataset.select(sample.sample_id).values(fields)
    numbers, detections = values[0][0] or [], values[1][0] or []
    segmentations = values[2][0] or [] if with_segmentation else [None] * len(numbers)
    previous, old = {}, {}
    first, last = sample.support or (1, None)
    for number, dets, seg in zip(numbers, detections, segmentations):
        if number < first or (last is not None and number > last):
            continue
        signature = dets[SIGNATURE_ATTRIBUTE] if dets is not None and dets.has_field(SIGNATURE_ATTRIBUTE) else None
        if signature and holds_every_output(target, seg) and not edited_since_written(dets):
            previous[number - 1 - sample.offset] = signature
            old[number] = (dets, seg)
    return previous, old


def sample_labels(tracker, sample: SamplePlan, reader: VideoReader, cursor: FrameCursor, with_segmentation: bool,
                  **passes) -> Iterator[tuple[int, FrameResult, Any, Any]]:
    """Propagate one sample (a clip: within its frames, from the keyframes inside it) and yield
    (video frame number, result, Detections, Segmentation or None) per frame computed.
    ``reader``: the opened video; ``passes``: :func:`deaot_core.propagation.propagate_video`'s
    ``bidirectional``, ``previous`` (clip-local indexes), ``states``, ``provenance``, ``stats``."""
    frames, local = clip_frames(reader, sample.clip), sample.local()
    make_labels = LabelMaker(local, with_segmentation)
    for result in propagate_video(tracker, VideoFrames(frames, cursor, sample.offset), core_keyframes(local),
                                  **passes):
        yield (result.index + 1 + sample.offset, result, *make_labels(result))


def run_video(tracker, sample: SamplePlan, target: PassTarget, report: Report, cursor: FrameCursor) -> PassResult:
    """Propagate one loaded sample with ``tracker`` into ``target``; ``cursor`` follows the frame
    being computed. The video is the one its checks opened when the plan kept it open."""
    start = time.time()
    reader = sample.video if sample.video is not None else open_video(sample.filepath, sample.frame_count)
    frames = clip_frames(reader, sample.clip)
    count, last = frames.num_frames, frames.num_frames + sample.offset
    cursor.frame = None
    previous, old = read_previous(target, sample) if target.incremental else (None, {})
    stats = PropagationStats()
    results = sample_labels(tracker, sample, reader, cursor, target.with_segmentation,
                            bidirectional=target.bidirectional, previous=previous, states=target.states(),
                            provenance=video_provenance(tracker, sample, target, frames), stats=stats)
    computed: set[int] = set()
    # closing(results): a failed attempt stops its decoding thread before a retry reuses the reader
    with torch.inference_mode(), contextlib.closing(results), target.writer(sample.sample_id) as writer:
        for done, (number, result, detections, segmentation) in enumerate(results, start=1):
            writer.add(number, detections, segmentation)
            computed.add(number)
            report(done, count - stats.reused, f"frame {number}/{last}" + (" (backward)" if result.reverse else ""))
        reused = [n for n in sorted(old) if n not in computed and n <= last]
        for number in reused:
            writer.add(number, *old[number])
    seconds = time.time() - start
    log.info("%s: %s frames (%s recomputed, %s reused), keyframes %s, %s objects, %.1fs", sample.filepath, count,
             stats.computed, len(reused), sorted(sample.keyframes), sample.registry.num_objects, seconds)
    return PassResult(frames_written=writer.written, frames_recomputed=stats.computed, frames_reused=len(reused),
                      frames_replayed=stats.replayed, seconds=round(seconds, 3),
                      fps=round(stats.computed / seconds, 2) if seconds > 0 else None)
