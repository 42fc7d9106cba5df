"""One video (or clip), the same way for every entry point: :func:`propagate` (the operator, the
CLI and queued tasks go through it) and the zoo model's ``predict`` call
:func:`propagate_sample`, which reads the keyframes (keeping only the marked ones of a track
field, ``keyframe_marks``), parses and checks them, runs the video pass (:mod:`.video_pass`),
retries it smaller and then on the CPU on an out-of-memory error, and returns a
:class:`SampleResult`. Where the labels go is the ``target``'s business (staging fields, or the
zoo's :class:`.video_pass.MemoryTarget`).
"""
from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import math
import os
from typing import Any, Callable, Optional

import torch

from ..label_frames import keep_marked_keyframes, read_label_frames
from ..video_io import VideoError, open_video
from .cancel import PropagationCancelled
from .clips import check_overlaps, clip_frames, view_rows
from .corrections import add_corrections, read_corrections
from .errors import NoKeyframesError, add_context, error_text
from .options import PropagationOptions
from .plan import RunPlan, SamplePlan, name_clip, parse_keyframes
from .trackers import TrackerPool
from .video_pass import FrameCursor, PassResult, PassTarget, Report, run_video

log = logging.getLogger(__name__)

OOM_HALVINGS = 2  # out-of-memory retries at 1/2 and 1/4 of the resolution (then the CPU, from CUDA)
OOM_MIN_LONG_EDGE = 32  # never retry below this network input long edge
NO_KEYFRAMES = "skipped: no keyframes"

Ask = Callable[[float, str], None]  # progress(fraction, label); raises PropagationCancelled to stop


@dataclasses.dataclass
class SampleResult:
    """How one sample ended: ``status`` is ``ok``, ``skipped: ...`` or ``error: <type>: <message>``
    (``error``: the exception, kept for the run's failure list); ``passed``: what the video pass
    did when it ran."""

    status: str
    frames_written: Optional[int] = None
    passed: Optional[PassResult] = None
    error: Optional[BaseException] = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def summary_row(sample: SamplePlan) -> dict[str, Any]:
    """The sample's line of :func:`propagate`'s summary (``samples``)."""
    row: dict[str, Any] = dict(id=sample.sample_id, filepath=sample.filepath)
    if sample.clip is not None:
        row.update(clip_id=sample.clip.clip_id, support=list(sample.clip.support))
    if sample.loaded:
        row.update(frames=sample.frames, width=sample.width, height=sample.height, keyframes=sorted(sample.keyframes),
                   objects=sample.registry.num_objects)
    result = sample.result
    if result is None:
        return row
    row["status"] = result.status
    if result.passed is not None:
        row.update({k: v for k, v in dataclasses.asdict(result.passed).items()
                    if k not in ("device", "max_long_edge", "warnings")})
        row.update(device=result.passed.device, max_long_edge=result.passed.max_long_edge,
                   warnings=result.passed.warnings)
    elif result.frames_written is not None:
        row["frames_written"] = result.frames_written
    return row


def load_sample(sample: SamplePlan, options: PropagationOptions, with_segmentation: bool,
                keep_open: bool = True) -> None:
    """Open the sample's video and parse its ``label_frames`` into keyframes (of a track field
    only the marked labels, ``options.keyframe_marks``; boxes and points made masks by
    ``options.prompt_model``), validating everything (KeyframeError, VideoError). ``keep_open``:
    keep the reader on the plan for the pass."""
    label_frames = keep_marked_keyframes(sample.label_frames or [], options.keyframe_marks)
    reader = open_video(sample.filepath, sample.frame_count)
    frames = clip_frames(reader, sample.clip)
    if not frames.num_frames:
        raise VideoError(f"{sample.clip.describe()} starts after the last frame of the video, which has "
                         f"{reader.num_frames} frames")
    parse_keyframes(sample, label_frames, reader, sample.mask_targets, with_segmentation, options.prompt_model)
    sample.frames, sample.width, sample.height = frames.num_frames, reader.width, reader.height
    if sample.corrections:  # the output's corrections (:mod:`.corrections`) are keyframes too
        add_corrections(sample, sample.corrections, reader.height, reader.width, options.output_field)
    sample.video = reader if keep_open else None


def _check_sample(sample_collection, plan: RunPlan, sample: SamplePlan, keep_open: bool) -> None:
    """Read and load one sample of a :func:`propagate` run; a failure or a sample without
    keyframes gets its result (it will not run)."""
    try:
        field = plan.options.keyframes_field
        sample.label_frames = read_label_frames(sample_collection, sample.view_id, field)
        sample.mask_targets = plan.mask_targets
        sample.corrections = read_corrections(sample_collection, sample, field, plan.options.output_field)
        existing = plan.dataset.select(sample.sample_id).values("frames.frame_number")
        sample.existing = set(existing[0] or []) if existing else set()
        load_sample(sample, plan.options, bool(plan.options.write_segmentation), keep_open)
        if not sample.keyframes:
            inside = " inside the clip" if sample.clip is not None else ""
            log.warning("%s: no keyframe with objects in '%s'%s; skipped (its output is unchanged)",
                        sample.describe() if sample.clip is not None else sample.filepath, field, inside)
            sample.result = SampleResult(NO_KEYFRAMES, frames_written=0)
    except Exception as err:  # KeyframeError, VideoError, or anything unexpected
        _name_sample(err, sample, plan.options)
        plan.failures.append(err)
        sample.result = SampleResult(f"error: {error_text(err)}", error=err)
        log.error("%s", err)


def _name_sample(err: BaseException, sample: SamplePlan, options: PropagationOptions,
                 frame: Optional[int] = None) -> BaseException:
    """Name the sample, the keyframes field, the clip and (as ``err.deaot_frame``) the frame."""
    add_context(err, sample.sample_id, sample.filepath, frame)
    if frame is not None and getattr(err, "deaot_frame", None) is None:
        err.deaot_frame = frame
    if hasattr(err, "with_context"):
        err.with_context(field=options.keyframes_field)
    return name_clip(err, sample)


def check_samples(sample_collection, plan: RunPlan, ask: Ask) -> None:
    """Check every sample into ``plan.samples`` (a run of one video keeps it open for the pass).
    Without ``skip_failures`` the first failure is raised (its message lists the others);
    NoKeyframesError when nothing could run."""
    samples = view_rows(sample_collection)
    what = "clips" if samples and samples[0][3] is not None else "samples"
    if not samples:
        raise NoKeyframesError(f"nothing to propagate: the view of dataset '{plan.dataset.name}' has no samples")
    check_overlaps(samples)
    for i, (sid, path, meta_count, clip) in enumerate(samples):
        name = os.path.basename(path) + (f" {clip.describe()}" if clip is not None else "")
        ask(0.0, f"[{i + 1}/{len(samples)}] {name}: checking the video and keyframes")
        sample = SamplePlan(i, sid, path, meta_count, clip=clip)
        _check_sample(sample_collection, plan, sample, keep_open=len(samples) == 1)
        plan.samples.append(sample)
    failures = plan.failures
    if failures and not plan.options.skip_failures:
        first = failures[0]
        if len(failures) > 1:
            more = "; ".join(str(e) for e in failures[1:4]) + ("; ..." if len(failures) > 4 else "")
            first.args = (f"{first.args[0]} [and {len(failures) - 1} more sample(s) failed the checks: {more}]",) \
                + tuple(first.args[1:])
        first.failures = failures
        raise first
    if not failures and not any(s.runnable for s in plan.samples):
        raise NoKeyframesError(
            f"no keyframes: none of the {len(samples)} {what} has a non-empty '{plan.options.keyframes_field}' "
            f"label on any frame{' inside it' if what == 'clips' else ''} (label a few frames with instance masks "
            f"first)")


def propagate_sample(trackers: TrackerPool, sample: SamplePlan, options: PropagationOptions, target: PassTarget,
                     report: Optional[Report] = None) -> SampleResult:
    """Propagate one sample into ``target``: load it unless its checks did (keyframes with marks,
    the video), then the video pass with out-of-memory retries. Returns its result (also set
    on ``sample.result``). A failure names the sample, its clip and the frame; it is raised,
    or with ``options.skip_failures`` returned as an ``error: ...`` result. A cancel is raised."""
    cursor = FrameCursor()
    try:
        if not sample.loaded:
            load_sample(sample, options, target.with_segmentation)
        if not sample.keyframes:
            result = SampleResult(NO_KEYFRAMES, frames_written=0)
        else:
            result = SampleResult("ok", passed=run_with_retries(trackers, sample, target, report or _quiet, cursor))
    except (PropagationCancelled, KeyboardInterrupt):
        raise
    except Exception as err:
        _name_sample(err, sample, options, cursor.frame)
        if not options.skip_failures:
            raise
        text = error_text(err, cursor.frame)
        if sample.clip is not None and sample.clip.clip_id not in text:
            text = f"{sample.clip.describe()}: {text}"
        log.error("%s failed, its output is unchanged: %s", sample.describe(), text)
        result = SampleResult(f"error: {text}", frames_written=0, error=err)
    finally:
        sample.video = None  # the pass is over: release the decoder
    sample.result = result
    return result


def _quiet(done: int, count: int, label: str) -> None:
    return None


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
                     cursor: FrameCursor) -> PassResult:
    """:func:`.video_pass.run_video`, retried on out-of-memory errors along :func:`oom_plan` from
    ``trackers.requested``, each attempt with ``trackers.get(device, max_long_edge)`` and a
    clean target (``target.reset()``). The result also says the ``device``, ``max_long_edge``
    and ``warnings`` (one per retry) of the attempt that succeeded."""
    device, max_long_edge = trackers.requested
    plan: Optional[list[tuple[str, Any]]] = None  # made at the first out-of-memory error
    warnings: list[str] = []
    for attempt in itertools.count():
        dev, edge = plan[attempt] if plan else (device, max_long_edge)
        tracker = trackers.get(dev, edge)
        try:
            target.reset()
            passed = run_video(tracker, sample, target, report, cursor)
            return dataclasses.replace(passed, device=dev, max_long_edge=edge, warnings=warnings)
        except _oom_errors() as err:
            if plan is None:
                plan = oom_plan(device, max_long_edge, sample.height or 0, sample.width or 0)
            if attempt + 1 >= len(plan):
                raise
            oom = _oom_text(err)
        finally:
            tracker.reset()
        _free_memory(dev)
        next_dev, next_edge = plan[attempt + 1]
        message = (f"out of memory at frame {cursor.frame} on {dev} with max_long_edge {edge} ({oom}); "
                   f"retrying the video " + (f"on {next_dev} " if next_dev != dev else "")
                   + f"with max_long_edge {next_edge}")
        log.warning("%s: %s", sample.filepath, message)
        warnings.append(message)
    raise AssertionError("unreachable")  # pragma: no cover
