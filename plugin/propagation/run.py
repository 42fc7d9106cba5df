"""Propagate keyframe masks through the videos of a FiftyOne collection with DeAOT / AOT.

Nothing is lost or half-written, whatever happens:

- every input is checked before anything is written (:mod:`.plan`: fields, model, checkpoint,
  then each sample: its video opens and decodes, its keyframes parse into exactly the masks
  given); bad input raises an error naming the sample, the frame and the field, and the dataset
  is unchanged;
- results go to staging fields (:mod:`.staging`: ``<field>_deaot_tmp``) that reach the output
  field(s) only once good: an error, a cancel (progress callback, SIGTERM/SIGINT with
  :func:`cancel_on_signals`) or a crash leaves the output field as it was, and frame documents
  this run created are deleted again; a killed run's leftovers are recovered by the next run;
- with ``skip_failures`` a failing video keeps its previous output values and is listed in the
  summary (``failed``) while the others are written;
- a CUDA out-of-memory error retries the video at half, then a quarter of the resolution, then
  on the CPU, with a warning in the summary (:mod:`.sample_path`, the per-video path every entry
  point takes).

Values are written in bulk with ``set_values`` (dict form keyed by sample id and frame number,
which also creates missing frame documents).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Optional

import fiftyone as fo

from ..fields import root_dataset
from ..mask_targets import merge_mask_targets, segmentation_targets
from ..metadata import fill_video_metadata
from .cancel import ProgressCallback, PropagationCancelled
from .durability import RestartWatch
from .options import PropagationOptions
from .plan import RunPlan, SamplePlan, check_video_collection, output_kinds, plan_run
from .sample_path import SampleResult, check_samples, propagate_sample, summary_row
from .staging import LocalSwap, Staging
from .trackers import TrackerFactory, TrackerPool
from ..weights import weights_identity
from .video_pass import PassTarget

log = logging.getLogger(__name__)


def resolve_options(keyframes_field=None, output_field=None, options: Optional[PropagationOptions] = None,
                    **option_values) -> PropagationOptions:
    """The run's options: ``options`` (also accepted in place of ``keyframes_field``) with
    ``option_values`` and the field names given applied; TypeError on an unknown name."""
    if isinstance(keyframes_field, PropagationOptions):
        options, keyframes_field = keyframes_field, None
    given = dict(option_values)
    if keyframes_field is not None:
        given["keyframes_field"] = keyframes_field
    if output_field is not None:
        given["output_field"] = output_field
    return options.replace(**given) if options is not None else PropagationOptions(**given)


def propagate(sample_collection, keyframes_field=None, output_field=None, *,
              options: Optional[PropagationOptions] = None, progress: Optional[ProgressCallback] = None,
              staging: Optional[Staging] = None, tracker_factory: Optional[TrackerFactory] = None,
              **option_values) -> dict[str, Any]:
    """Propagate the keyframe masks of ``keyframes_field`` to every frame of every video in
    ``sample_collection`` and store ``fo.Detections`` (instance masks) in ``output_field``.

    On a clip view (``to_clips``, ``to_trajectories``) each clip propagates within its own frames,
    from the keyframes inside it, and only its frames are written (the video's other frames keep
    their values); clips run one after another through the same staging, and two clips of one
    video that share frames are refused (``ClipOverlapError``, naming both) before anything runs.

    Settings come as a :class:`PropagationOptions` (``options``, or in place of
    ``keyframes_field``) and/or as its field names as keyword arguments:

        keyframes_field: frame field with Detections (instance masks), Segmentation or Polylines
        output_field: frame field to create (``fo.Detections`` with masks, ``index``, ``confidence``)
        model: official model name (``deaot_core.MODEL_NAMES``)
        checkpoint: path or URL of the weights; default: cache dir, then the demo checkpoint
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
        overwrite: replace existing output field(s) (else refuse)
        long_term_gap, max_long_term_frames, max_short_edge, max_long_edge, precision: engine knobs
        compile_model: run the network through ``torch.compile`` (opt-in; compiling takes a
            minute or so on CPU, then each frame is 10-25 % faster)
        test_scales, test_flip: test-time augmentation as the official evaluator's ``--ms`` /
            ``--flip`` (``deaot_core.Tracker``): one pass per scale, and per mirrored scale with
            ``test_flip``; the probabilities are averaged. Default: one pass at scale 1
        write_segmentation: optional frame field for a ``fo.Segmentation`` label map whose
            values are the objects' ``index``
        write_polylines: optional frame field for ``fo.Polylines``: each object's mask as one
            closed, filled polygon with its ``index``, ``keyframe=True`` on the run's keyframes
            (False elsewhere): what ``export(dataset_type=fo.types.CVATVideoDataset)`` writes as
            polygon tracks
        skip_failures: a video that fails (bad keyframes, undecodable, an error while running)
            keeps its previous output values and is listed in ``failed``; the others are written.
            Without it (the default) the first failure raises and nothing is written
        allow_random_weights: run with random weights when no checkpoint exists (demo only)
        keyframe_marks: "auto" (default), "on" or "off": in a track field (CVAT's, the App's),
            only labels marked ``keyframe=True`` are keyframes ("auto": when any label is marked)
        bidirectional: frames between two keyframes fuse the forward pass with a backward pass
            from the later keyframe (``deaot_core.fusion``; about 2x the work between keyframes)
        incremental: when the output exists, recompute only the frames whose inputs (keyframes
            they depend on, model, weights, options) changed and keep the others; implies
            ``overwrite`` for the output field(s), which are updated in place
        write_every: frames buffered per bulk write

    ``progress(fraction, label)`` is called per frame; return False (or raise
    ``PropagationCancelled``) to cancel: nothing is written then. ``staging`` is internal: how
    labels reach the output (default :class:`.staging.LocalSwap`; a queued job's task passes
    :class:`.staging.JobCommit`); ``tracker_factory`` too (how the run builds its tracker,
    :class:`.trackers.TrackerPool`; tests pass a scripted one).

    Returns:
        a dict with the run settings, ``samples`` (one summary dict per sample: ``status`` is
        ``ok``, ``skipped: no keyframes`` or ``error: <type>: <message>``), ``failed`` (id,
        filepath, error of each failed sample) and ``written`` (whether the output was replaced)

    Raises:
        ValueError (bad field names/types, unknown model, bad knobs), ``OutputExistsError``,
        ``NoKeyframesError``, ``KeyframeError``, ``VideoError``, ``ModelUnavailableError``,
        ``deaot_core.CheckpointError``, ``PropagationCancelled``; without ``skip_failures`` also
        whatever a video's propagation raised (with a note naming the sample and frame).
    """
    start_time = time.time()
    options = resolve_options(keyframes_field, output_field, options, **option_values)
    staging = staging if staging is not None else LocalSwap()
    dataset = root_dataset(sample_collection, clips=True)
    check_video_collection(sample_collection, "; propagation needs videos")
    with contextlib.ExitStack() as stack:
        staging.open(stack, dataset, [options.output_field, options.write_segmentation, options.write_polylines],
                     options.keyframes_field)
        summary = _propagate_staged(sample_collection, dataset, options, staging, progress, start_time,
                                    tracker_factory)
    # the videos written get the metadata they lack, so the App plays them without ffprobe
    fill_video_metadata(dataset.select([row["id"] for row in summary["samples"] if row.get("status") == "ok"]))
    return summary


class _Progress:
    """The run's progress: every call beats the staging's claims and asks the callback, whose
    False cancels (PropagationCancelled)."""

    def __init__(self, staging: Staging, callback: Optional[ProgressCallback]):
        self.staging, self.callback = staging, callback

    def __call__(self, fraction: float, label: str) -> None:
        self.staging.heartbeat()
        if self.callback is not None and self.callback(min(max(fraction, 0.0), 1.0), label) is False:
            raise PropagationCancelled("cancelled by the progress callback")

    def for_sample(self, sample: SamplePlan, total: int):
        """``report(done, count, label)`` for one video's frames."""
        position, name = sample.position, os.path.basename(sample.filepath)
        if sample.clip is not None:
            name += f" {sample.clip.describe()}"

        def report(done: int, count: int, label: str) -> None:
            if self.callback is None and not self.staging.beats:
                return
            self((position + (done / count if count else 1.0)) / total, f"[{position + 1}/{total}] {name}: {label}")

        return report


def _propagate_staged(sample_collection, dataset: fo.Dataset, options: PropagationOptions, staging: Staging,
                      progress: Optional[ProgressCallback], start_time: float,
                      tracker_factory: Optional[TrackerFactory]) -> dict[str, Any]:
    """:func:`propagate` once ``staging`` is open: plan and check, run the videos, commit."""
    plan = plan_run(sample_collection, dataset, options,
                    options.overwrite or options.incremental or staging.forced_overwrite)
    trackers = TrackerPool(plan.choice, plan.options, plan.device, tracker_factory)
    trackers.get(*trackers.requested)  # weights and settings are checked before any video
    ask = _Progress(staging, progress)
    summary = _summary_head(plan)
    check_samples(sample_collection, plan, ask)
    try:
        if any(sample.runnable for sample in plan.samples):
            watch = RestartWatch(f"the preparation of the output field(s) of dataset '{dataset.name}'")
            staging.prepare(dataset, _outputs(plan.options))
            watch.check()
        for sample in plan.samples:
            if sample.runnable:
                _run_sample(plan, sample, staging, trackers, ask, summary)
        staging.finish(summary, ask)
    finally:
        staging.close()
        trackers.clear()
    if summary.get("written") and plan.options.write_segmentation:
        set_segmentation_mask_targets(dataset, plan)
    return _summary_tail(summary, plan, start_time, progress)


def set_segmentation_mask_targets(dataset: fo.Dataset, plan: RunPlan) -> None:
    """Give the segmentation output field mask targets: 0 -> "background" and each written
    object's ``index`` -> its label (merged into the field's existing targets), so FiftyOne's
    evaluation and the App name the pixel values."""
    registries = [sample.registry for sample in plan.samples
                  if sample.registry is not None and sample.result is not None and sample.result.ok]
    dataset.reload()
    merge_mask_targets(dataset, plan.options.write_segmentation, segmentation_targets(registries))


def _outputs(options: PropagationOptions) -> list[tuple[str, type]]:
    return output_kinds(options.output_field, options.write_segmentation, options.write_polylines)


def _run_sample(plan: RunPlan, sample: SamplePlan, staging: Staging, trackers: TrackerPool, ask: _Progress,
                summary: dict) -> None:
    """Propagate one checked sample through ``staging`` (:func:`.sample_path.propagate_sample`);
    with ``skip_failures`` a failure is recorded in its result, else raised."""
    sid, support = sample.sample_id, sample.support
    watch = RestartWatch(f"the start of sample {sid}")
    if not staging.begin_sample(sid, sample.existing, support):
        sample.result = SampleResult("skipped: claimed by another task", frames_written=0)
        return
    watch.check()
    options = plan.options
    # output field -> where this run writes it (staging.prepare got the fields in this order)
    stages = dict(zip([name for name, _ in _outputs(options)], staging.stage_fields))
    target = PassTarget(plan.dataset, stages[options.output_field], stages.get(options.write_segmentation),
                        options.write_every, previous_fields=(options.output_field, options.write_segmentation),
                        bidirectional=options.bidirectional, incremental=options.incremental,
                        weights=weights_identity(plan.choice), clear=lambda: staging.clear_sample(sid, support),
                        polylines_field=stages.get(options.write_polylines))
    result = propagate_sample(trackers, sample, options, target, ask.for_sample(sample, plan.total))
    if result.ok:
        staging.sample_done(sid, summary, support)
    elif result.error is not None:
        staging.sample_failed(sid, result.status[len("error: "):], support)
        plan.failures.append(result.error)


def _summary_head(plan: RunPlan) -> dict[str, Any]:
    options, choice = plan.options, plan.choice
    return dict(model=choice.model, checkpoint=choice.checkpoint, weights=choice.source, device=plan.device,
                keyframes_field=options.keyframes_field, output_field=options.output_field,
                segmentation_field=options.write_segmentation, polylines_field=options.write_polylines, samples=[],
                failed=[], written=False)


def _summary_tail(summary: dict, plan: RunPlan, start_time: float,
                  progress: Optional[ProgressCallback]) -> dict[str, Any]:
    rows = [summary_row(sample) for sample in plan.samples]
    summary["samples"] = rows
    summary["failed"] = [dict(id=r["id"], filepath=r["filepath"], error=r["status"][len("error: "):],
                              **({"clip_id": r["clip_id"]} if "clip_id" in r else {}))
                         for r in rows if str(r.get("status", "")).startswith("error")]
    summary["seconds"] = round(time.time() - start_time, 3)
    if summary["failed"]:
        log.warning("%s of %s samples failed (their output is unchanged): %s", len(summary["failed"]), plan.total,
                    "; ".join(f"{os.path.basename(f['filepath'])}: {f['error']}" for f in summary["failed"]))
    if progress is not None:
        progress(1.0, "done")
    return summary
