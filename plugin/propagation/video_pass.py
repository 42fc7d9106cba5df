"""One video through the tracker: open it, run :func:`deaot_core.video.propagate_video` on
its parsed keyframes, turn each frame's result into FiftyOne labels and write them as they
come. Out-of-memory failures are retried smaller, then on the CPU (:func:`run_with_retries`).

FiftyOne frame numbers are 1-based, the core's frame indexes 0-based: index = number - 1.
"""
from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import math
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from deaot_core.video import FrameResult, Keyframe as CoreKeyframe, propagate_video

from ..labels import mask_to_detections, mask_to_segmentation
from ..video import VideoReader, open_video, prefetch
from .plan import SamplePlan
from .trackers import TrackerPool
from .writer import FrameLabelWriter

log = logging.getLogger(__name__)

OOM_HALVINGS = 2  # out-of-memory retries at 1/2 and 1/4 of the resolution (then the CPU, from CUDA)
OOM_MIN_LONG_EDGE = 32  # never retry below this network input long edge

Report = Callable[[int, int, str], None]  # report(done, total, label)


@dataclasses.dataclass
class PassTarget:
    """Where one video's labels go: the (staging) fields and the bulk-write size."""

    dataset: Any
    output_field: str
    segmentation_field: Optional[str]
    write_every: int


class VideoFrames:
    """A :class:`deaot_core.video.FrameSource` over a decord reader: 0-based indexes, read
    sequentially (backward in forward-decoded chunks) and prefetched on a thread. Each frame
    handed over sets ``where["frame"]`` to its frame number (the frame being computed)."""

    def __init__(self, reader: VideoReader, where: dict):
        self.reader, self.where = reader, where

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
            self.where["frame"] = number
            yield number - 1, frame


class LabelMaker:
    """A video's :class:`FrameResult` -> (Detections, Segmentation or None), with the object
    labels of the keyframes met so far (the backward pass: those of the first keyframe)."""

    def __init__(self, sample: SamplePlan, with_segmentation: bool):
        self.sample, self.with_segmentation = sample, with_segmentation
        self.first = min(sample.keyframes)
        self.labels: dict[int, Any] = {}
        self.reversed = False

    def __call__(self, result: FrameResult) -> tuple[Any, Any]:
        number, registry = result.index + 1, self.sample.registry
        keyframe = self.sample.keyframes.get(number) if result.keyframe is not None else None
        if result.reverse and not self.reversed:
            self.reversed, self.labels = True, dict(self.sample.keyframes[self.first].labels)
        if keyframe is not None:
            self.labels.update(keyframe.labels)
        detections = mask_to_detections(result.label_map, result.confidences, registry, self.labels,
                                        exact=keyframe.exact if keyframe is not None else None,
                                        given=set(keyframe.objects) if keyframe is not None else None)
        segmentation = mask_to_segmentation(result.label_map, registry) if self.with_segmentation else None
        return detections, segmentation


def core_keyframes(sample: SamplePlan) -> dict[int, CoreKeyframe]:
    """The sample's keyframes as the core API takes them: 0-based index -> label map and the
    object ids given on it (also those given as absent)."""
    return {number - 1: CoreKeyframe(kf.label_map, kf.objects) for number, kf in sample.keyframes.items()}


def run_video(tracker, sample: SamplePlan, target: PassTarget, report: Report, where: dict) -> dict[str, Any]:
    """Propagate one video with ``tracker`` into ``target``'s fields; returns its summary row
    (``status`` ok, ``frames_written``, ``seconds``, ``fps``). ``where`` gets the video's
    ``height``/``width`` and the ``frame`` being computed (for error messages and retries)."""
    start = time.time()
    reader = open_video(sample.filepath, sample.frame_count)
    count = reader.num_frames
    where.update(height=reader.height, width=reader.width, frame=None)
    row: dict[str, Any] = dict(frames=count, width=reader.width, height=reader.height,
                               keyframes=sorted(sample.keyframes), objects=sample.registry.num_objects)
    make_labels = LabelMaker(sample, target.segmentation_field is not None)
    writer = FrameLabelWriter(target.dataset, sample.sample_id, target.output_field, target.segmentation_field,
                              target.write_every)
    with torch.inference_mode(), writer:
        for done, result in enumerate(propagate_video(tracker, VideoFrames(reader, where), core_keyframes(sample)),
                                      start=1):
            writer.add(result.index + 1, *make_labels(result))
            report(done, count, f"frame {result.index + 1}/{count}" + (" (backward)" if result.reverse else ""))
    seconds = time.time() - start
    row.update(status="ok", frames_written=writer.written, seconds=round(seconds, 3),
               fps=round(writer.written / seconds, 2) if seconds > 0 else None)
    log.info("%s: %s frames, keyframes %s, %s objects, %.1fs", sample.filepath, count, row["keyframes"],
             row["objects"], seconds)
    return row


def oom_plan(device: str, max_long_edge, height: int, width: int) -> list[tuple[str, Any]]:
    """(device, max_long_edge) attempts: as asked, at 1/2 and 1/4 of the effective network input
    long edge (not below ``OOM_MIN_LONG_EDGE``), then, from CUDA, the CPU as asked."""
    plan = [(device, max_long_edge)]
    edge = min(max_long_edge or math.inf, max(height, width))
    for _ in range(OOM_HALVINGS):
        edge = int(edge // 2)
        if edge < OOM_MIN_LONG_EDGE:
            break
        plan.append((device, edge))
    if device != "cpu":
        plan.append(("cpu", max_long_edge))
    return plan


def _oom_errors() -> tuple[type, ...]:
    return (torch.OutOfMemoryError, MemoryError)


def _free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _oom_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def run_with_retries(trackers: TrackerPool, sample: SamplePlan, target: PassTarget, report: Report,
                     clear: Callable[[], None], where: dict) -> dict[str, Any]:
    """:func:`run_video`, retried on out-of-memory errors along :func:`oom_plan` from
    ``trackers.requested``, each attempt with ``trackers.get(device, max_long_edge)``;
    ``clear()`` empties the sample's target values before each attempt. The row also says the
    ``device``, ``max_long_edge`` and ``warnings`` (one per retry) of the attempt that succeeded."""
    device, max_long_edge = trackers.requested
    plan: Optional[list[tuple[str, Any]]] = None  # made at the first out-of-memory error
    warnings: list[str] = []
    for attempt in itertools.count():
        dev, edge = plan[attempt] if plan else (device, max_long_edge)
        tracker = trackers.get(dev, edge)
        try:
            clear()  # a clean slate (the staging field may hold a copy of the old output, or a failed attempt)
            row = run_video(tracker, sample, target, report, where)
            row.update(device=dev, max_long_edge=edge, warnings=warnings)
            return row
        except _oom_errors() as err:
            if plan is None:
                plan = oom_plan(device, max_long_edge, where.get("height", 0), where.get("width", 0))
            if attempt + 1 >= len(plan):
                raise
            oom = _oom_text(err)
        finally:
            tracker.reset()
        _free_memory(dev)
        next_dev, next_edge = plan[attempt + 1]
        message = (f"out of memory at frame {where.get('frame')} on {dev} with max_long_edge {edge} ({oom}); "
                   f"retrying the video " + (f"on {next_dev} " if next_dev != dev else "")
                   + f"with max_long_edge {next_edge}")
        log.warning("%s: %s", sample.filepath, message)
        warnings.append(message)
