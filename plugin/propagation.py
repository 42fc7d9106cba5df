"""Propagate keyframe masks through the videos of a FiftyOne collection with DeAOT / AOT.

Nothing is lost or half-written, whatever happens:

- every input is checked before anything is written (fields, model, checkpoint, then each
  sample: its video opens and decodes, its keyframes parse into exactly the masks given); bad
  input raises an error naming the sample, the frame and the field, and the dataset is unchanged;
- results go to temporary frame fields (``<field>_deaot_tmp``) that are renamed onto the output
  field(s) only at the end: an error, a cancel (progress callback, SIGTERM/SIGINT with
  :func:`cancel_on_signals`) or a crash leaves the output field as it was, and frame documents
  this run created are deleted again; a killed run's leftovers are recovered by the next run;
- with ``skip_failures`` a failing video keeps its previous output values and is listed in the
  summary (``failed``) while the others are written;
- a CUDA out-of-memory error retries the video at half, then a quarter of the resolution, then
  on the CPU, with a warning in the summary.

Values are written in bulk with ``set_values`` (dict form keyed by sample id and frame number,
which also creates missing frame documents).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import gc
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

import fiftyone as fo

from .labels import (KEYFRAME_TYPES, KeyframeError, ObjectRegistry, mask_to_detections, mask_to_segmentation,
                     mean_confidences, parse_keyframe)
from .models import DEFAULT_MODEL, PRECISIONS, load_model, resolve_checkpoint, resolve_device
from .fields import root_dataset
from .journal import (FRAME_DEFAULT_FIELDS as RESERVED_FRAME_FIELDS, RESERVED_SUFFIXES, TMP_SUFFIX, FieldBusyError,
                      FieldClaim, claim_fields, copy_values, drop_temporary_field, finish_swap, note_deferred_signal,
                      refuse_unowned_temporaries, reserved_name, signals_deferred, swap_in_progress)
from .video import VideoError, open_video, prefetch

log = logging.getLogger(__name__)

OOM_HALVINGS = 2  # out-of-memory retries at 1/2 and 1/4 of the resolution (then the CPU, from CUDA)
OOM_MIN_LONG_EDGE = 32  # never retry below this network input long edge

ProgressCallback = Callable[[float, str], Optional[bool]]


class PropagationCancelled(Exception):
    """Raised when the progress callback asked to stop; nothing was written."""


class OutputExistsError(ValueError):
    """The output field exists and ``overwrite`` is False (``.field`` names it)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class NoKeyframesError(ValueError):
    """No sample of the collection has a keyframe (a non-empty label in the keyframes field)."""


def _oom_errors() -> tuple[type, ...]:
    import torch

    return (torch.OutOfMemoryError, MemoryError)


@contextlib.contextmanager
def cancel_on_signals(signals=(signal.SIGTERM,), resend: bool = False) -> Iterator[threading.Event]:
    """Turn ``signals`` into a cooperative cancel for the duration of the block.

    Yields an event that is set on the first signal; a progress callback that returns False
    when it is set stops the run at the next frame with nothing written. A second signal
    raises ``KeyboardInterrupt`` at once (the temporary fields are still dropped). With
    ``resend``, a caught signal is sent again to this process once the previous handlers are
    back (a host process, e.g. a delegated worker being terminated, still gets it). Only in the
    main thread (elsewhere Python cannot install handlers: the event is never set).
    """
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    received: list[int] = []

    def handler(signum, frame):
        if swap_in_progress():  # the output is being swapped in: never stop halfway
            note_deferred_signal(signum)
            received.append(signum)
            event.set()
            return
        if event.is_set():
            raise KeyboardInterrupt(f"signal {signum}")
        log.warning("signal %s: cancelling at the next frame (nothing will be written)", signum)
        received.append(signum)
        event.set()

    handler.defers_during_swap = True

    previous = {}
    for sig in signals:
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # pragma: no cover - not in the main thread / unsupported
            pass
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if resend and received:
            os.kill(os.getpid(), received[0])


CANCEL_POLL_SECONDS = 2.0


class DelegatedCancelCheck:
    """``check()`` is True once the delegated operation ``run_id`` was marked failed from
    outside (``fiftyone delegated fail <id>``, the App's *Mark as failed*): FiftyOne's way to
    stop a running delegated operation. The database is asked at most every
    ``CANCEL_POLL_SECONDS``; without a ``run_id`` it is always False."""

    def __init__(self, run_id=None):
        self.run_id = run_id
        self._last = -math.inf
        self._cancelled = False

    def __call__(self) -> bool:
        if self.run_id is None or self._cancelled:
            return self._cancelled
        now = time.monotonic()
        if now - self._last < CANCEL_POLL_SECONDS:
            return False
        self._last = now
        try:
            from fiftyone.operators.delegated import DelegatedOperationService
            from fiftyone.operators.executor import ExecutionRunState

            doc = DelegatedOperationService().get(self.run_id)
            self._cancelled = doc is not None and doc.run_state == ExecutionRunState.FAILED
        except Exception as err:  # an unreachable database must not kill a long run
            log.warning("could not check whether operation %s was cancelled: %s", self.run_id, err)
        if self._cancelled:
            log.warning("delegated operation %s was marked failed: cancelling (nothing will be written)", self.run_id)
        return self._cancelled


def _field_name(name: str | None, what: str) -> str | None:
    if name is None or str(name).strip() == "":
        return None
    name = str(name).strip()
    if name.startswith("frames."):
        name = name[len("frames."):]
    if not name or "." in name or name.startswith("_") or name in RESERVED_FRAME_FIELDS:
        raise ValueError(f"invalid {what} {name!r}: expected a top-level frame field name")
    if reserved_name(name):
        raise ValueError(f"invalid {what} {name!r}: names ending in {' or '.join(RESERVED_SUFFIXES)} are reserved "
                         f"for the plugin's temporary fields")
    return name


def _embedded_type(schema: dict, name: str):
    field = schema.get(name)
    return getattr(field, "document_type", None) if field is not None else None


def check_fields(sample_collection, keyframes_field: str, output_field: str,
                 write_segmentation: str | None = None, overwrite: bool = False) -> tuple[str, str, str | None]:
    """Validate field names/types; returns the normalised (keyframes, output, segmentation) names.

    Raises ``OutputExistsError`` naming the field when an output exists and not ``overwrite``.
    """
    dataset = root_dataset(sample_collection)
    if sample_collection.media_type != fo.core.media.VIDEO:
        raise ValueError(f"'{dataset.name}' is not a video collection (media type "
                         f"{sample_collection.media_type!r})")
    keyframes_field = _field_name(keyframes_field, "keyframes_field")
    output_field = _field_name(output_field, "output_field")
    write_segmentation = _field_name(write_segmentation, "write_segmentation")
    if keyframes_field is None or output_field is None:
        raise ValueError("keyframes_field and output_field are required")
    schema = dataset.get_frame_field_schema()
    kf_type = _embedded_type(schema, keyframes_field)
    usable = sorted(n for n in schema if _embedded_type(schema, n) in KEYFRAME_TYPES)
    hint = f" (frame fields that could be: {', '.join(usable)})" if usable else \
        " (it has no Detections, Segmentation or Polylines frame field)"
    if keyframes_field not in schema:
        raise ValueError(f"keyframes field: dataset '{dataset.name}' has no frame field '{keyframes_field}'{hint}")
    if kf_type not in KEYFRAME_TYPES:
        raise ValueError(f"keyframes field: frame field '{keyframes_field}' of dataset '{dataset.name}' holds "
                         f"{getattr(kf_type, '__name__', None) or type(schema[keyframes_field]).__name__}, not "
                         f"Detections (with instance masks), Segmentation or Polylines{hint}")
    names = [output_field] + ([write_segmentation] if write_segmentation else [])
    if len(set(names + [keyframes_field])) != len(names) + 1:
        raise ValueError("keyframes_field, output_field and write_segmentation must be different fields")
    for name, kind in ((output_field, fo.Detections), (write_segmentation, fo.Segmentation)):
        if name is None or name not in schema:
            continue
        if not overwrite:
            raise OutputExistsError(f"frame field '{name}' already exists on dataset '{dataset.name}'; "
                                    f"pass overwrite=True to replace it, or choose another output field", field=name)
        existing = _embedded_type(schema, name)
        if existing is not kind:
            raise ValueError(f"frame field '{name}' exists with type {getattr(existing, '__name__', existing)}, "
                             f"not {kind.__name__}; delete it or choose another field")
    return keyframes_field, output_field, write_segmentation


def _prepare_tmp(dataset: fo.Dataset, claim: FieldClaim, kind) -> str:
    """The run's temporary field, journalled before it exists: a copy of the output field when
    it exists (samples that are not processed, skipped or fail keep their values), else a new
    empty field."""
    final, tmp = claim.field, claim.field + TMP_SUFFIX
    claim.set_phase("staging", tmp=tmp, staged_at=datetime.datetime.now(datetime.timezone.utc))
    claim.tmp = tmp
    # declared first, then filled server-side: no document ever holds an undeclared field
    dataset.add_frame_field(tmp, fo.EmbeddedDocumentField, embedded_doc_type=kind)
    if final in dataset.get_frame_field_schema():
        copy_values(dataset, final, tmp)
    return tmp


def _roll_back(dataset: fo.Dataset, claim: FieldClaim, created: dict[str, set]) -> None:
    """Undo a run that did not commit ``claim``'s field: the frame documents it created
    (``created``: sample id -> frame numbers that existed before, on the root dataset), then its
    temporary field. Best effort: on failure the journal lets the next run finish the undo."""
    try:
        dataset.reload()
        if created:
            _delete_created_frames(dataset, created)
        drop_temporary_field(dataset, claim.tmp)
        claim.set_phase("claimed", tmp=None)
        claim.tmp = None
    except Exception as err:
        log.warning("could not remove the temporary field '%s' (the next run into '%s' will): %s", claim.tmp,
                    claim.field, err)


def _delete_created_frames(dataset: fo.Dataset, existing: dict[str, set]) -> None:
    """Delete the frame documents of samples ``existing`` (sample id -> frame numbers that
    existed before the run) that this run created."""
    if not existing:
        return
    sids, fids, numbers = dataset.select(list(existing)).values(["id", "frames.id", "frames.frame_number"])
    doomed = [fid for sid, ids, nums in zip(sids, fids, numbers)
              for fid, n in zip(ids or [], nums or []) if n not in existing[sid]]
    if doomed:
        dataset.delete_frames(doomed)


def _reset_sample(dataset: fo.Dataset, sid: str, tmps: list[str], finals: list[str], existing: set,
                  restore: bool) -> None:
    """Clear the sample's temporary values; with ``restore``, also delete the frame documents
    this run created for it and copy its previous output values back (a failed sample)."""
    one = dataset.select(sid)
    if restore:
        _delete_created_frames(dataset, {sid: existing})
    schema = dataset.get_frame_field_schema()
    for tmp, final in zip(tmps, finals):
        one.clear_frame_field(tmp)
        if restore and final in schema:
            numbers, values = one.values(["frames.frame_number", "frames." + final])
            previous = {n: v for n, v in zip(numbers[0] or [], values[0] or []) if v is not None}
            if previous:
                dataset.set_values("frames." + tmp, {sid: previous}, key_field="id")


def _commit_sample(dataset: fo.Dataset, sid: str, stages: list[str], finals: list[str]) -> None:
    """Move one sample's staged values onto the output fields, server-side and only on that
    sample's frame documents (other tasks write other samples of the same fields meanwhile);
    its frames without a staged value get no output value."""
    from bson import ObjectId

    frames = dataset._frame_collection
    oid = ObjectId(sid)
    for stage, final in zip(stages, finals):
        # first the frames without a staged value (none of this run: its output goes), then the move
        frames.update_many({"_sample_id": oid, stage: None, final: {"$ne": None}},
                           {"$set": {final: None, "last_modified_at": datetime.datetime.now(datetime.timezone.utc)},
                            "$unset": {stage: ""}})
        frames.update_many({"_sample_id": oid, stage: {"$ne": None}},
                           [{"$set": {final: "$" + stage, "last_modified_at": "$$NOW"}}, {"$unset": stage}])


def _add_context(err: BaseException, sid: str, path: str, frame: int | None = None) -> BaseException:
    """Name the sample (and frame) in the error: in the message of our own error types, as a
    note on others (shown in tracebacks)."""
    where = f"sample {sid} ({os.path.basename(path)})"
    if isinstance(err, KeyframeError):
        return err.with_context(sid, path)
    if isinstance(err, (VideoError, NoKeyframesError)) and err.args and str(sid) not in str(err.args[0]):
        err.args = (f"{where}: {err.args[0]}",) + tuple(err.args[1:])
        err.sample_id = sid
        return err
    if hasattr(err, "add_note") and not getattr(err, "_deaot_noted", False):
        err.add_note(f"while propagating {where}" + (f" at frame {frame}" if frame else "") + f": {path}")
        err._deaot_noted = True
    return err


def _error_text(err: BaseException, frame: int | None = None) -> str:
    text = f"{type(err).__name__}: {err}"
    if frame and not isinstance(err, (KeyframeError, VideoError)):
        text += f" (at frame {frame})"
    return text


def _load_sample(sample_collection, dataset, sid: str, path: str, meta_count, keyframes_field: str, mask_targets,
                 write_segmentation: bool):
    """Open the video and parse the sample's keyframes (those the view shows), validating
    everything.

    Returns (reader, registry, keyframes {frame number: Keyframe}, the frame numbers that exist
    in the root dataset: a view may hide frames, which a rollback must keep).
    """
    one = sample_collection.select(sid)
    frame_numbers, values = one.values(["frames.frame_number", "frames." + keyframes_field])
    frame_numbers, values = (frame_numbers[0] or []), (values[0] or [])
    existing = dataset.select(sid).values("frames.frame_number")
    existing = set(existing[0] or []) if existing else set()
    reader = open_video(path, meta_count)
    height, width, count = reader.height, reader.width, reader.num_frames
    registry = ObjectRegistry()
    keyframes = {}
    for number, value in sorted(zip(frame_numbers, values), key=lambda x: x[0]):
        if value is None:
            continue
        kf = parse_keyframe(value, number, height, width, registry, mask_targets)
        if kf is None:
            continue
        if number > count:
            capped = (f" (metadata.total_frame_count is {int(meta_count)}, decord decodes {reader.decoded_frames})"
                      if meta_count and int(meta_count) != reader.decoded_frames else "")
            raise KeyframeError(f"keyframe on frame {number} but the video has only {count} frames{capped}: "
                                f"labels of another video, or a wrong frame rate/trim?", number)
        keyframes[number] = kf
    registry.assign_indexes()
    if write_segmentation:
        for info in registry.by_id.values():
            if not 1 <= info.index < 2 ** 31:
                raise KeyframeError(f"object {info.label!r} has index {info.index}, which a segmentation label map "
                                    f"cannot hold (0 is background); use indexes >= 1 or no segmentation field",
                                    info.first_frame)
    return reader, registry, keyframes, existing


def _check_group_slices(sample_collection, dataset: fo.Dataset) -> None:
    """Refuse, before any work, a view of a grouped dataset with samples outside the dataset's
    active slice: frames are read and written through the dataset, which only sees that slice."""
    if dataset.media_type != fo.core.media.GROUP:
        return
    active = dataset.group_slice
    slices = sorted(set(sample_collection.values(dataset.group_field + ".name")) - {active})
    if slices:
        raise ValueError(
            f"the view holds samples of group slice(s) {', '.join(repr(x) for x in slices)} of grouped dataset "
            f"'{dataset.name}', whose active slice is {active!r}: propagation reads and writes frames through the "
            f"active slice; run one slice at a time with that slice active, e.g. dataset.group_slice = "
            f"{slices[0]!r}; propagate(dataset.select_group_slices({slices[0]!r}), ...)")


def _check_knobs(long_term_gap, max_long_term_frames, max_short_edge, max_long_edge, write_every) -> None:
    for name, value, low in (("long_term_gap", long_term_gap, 1), ("max_long_term_frames", max_long_term_frames, 1),
                             ("max_short_edge", max_short_edge, 16), ("max_long_edge", max_long_edge, 16),
                             ("write_every", write_every, 1)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or not math.isfinite(value) \
                or value < low:
            raise ValueError(f"{name} must be a number >= {low} (or None), got {value!r}")


def check_test_scales(test_scales) -> tuple[float, ...]:
    """``test_scales`` (None, a number, a sequence of numbers or a comma-separated string) as a
    tuple of positive floats; None or empty -> (1.0,)."""
    if test_scales is None or (isinstance(test_scales, str) and not test_scales.strip()):
        return (1.0,)
    items = test_scales.split(",") if isinstance(test_scales, str) else (
        [test_scales] if isinstance(test_scales, (int, float)) else list(test_scales))
    scales = []
    for item in items:
        try:
            value = float(item.strip() if isinstance(item, str) else item)
        except (TypeError, ValueError):
            value = float("nan")
        if isinstance(item, bool) or not math.isfinite(value) or not 0.1 <= value <= 4.0:
            raise ValueError(f"test_scales must be numbers in [0.1, 4] (e.g. 0.8,1.0,1.2), got {test_scales!r}")
        scales.append(value)
    return tuple(scales) or (1.0,)


def propagate(sample_collection, keyframes_field: str, output_field: str, model: str = DEFAULT_MODEL,
              checkpoint: str | None = None, device: str = "auto", overwrite: bool = False,
              progress: ProgressCallback | None = None, long_term_gap: int | None = None,
              max_long_term_frames: int | None = None, max_short_edge: int | None = None,
              max_long_edge: int | None = 1040, precision: str = "fp32", write_segmentation: str | None = None,
              skip_failures: bool = False, allow_random_weights: bool = False,
              write_every: int = 64, compile_model: bool = False, test_scales: Sequence[float] | None = None,
              test_flip: bool = False, job: Any = None) -> dict[str, Any]:
    """Propagate the keyframe masks of ``keyframes_field`` to every frame of every video in
    ``sample_collection`` and store ``fo.Detections`` (instance masks) in ``output_field``.

    Args:
        sample_collection: a video ``Dataset`` or ``DatasetView``
        keyframes_field: frame field with Detections (instance masks), Segmentation or Polylines
        output_field: frame field to create (``fo.Detections`` with masks, ``index``, ``confidence``)
        model: official model name (``deaot_core.MODEL_NAMES``)
        checkpoint: path or URL of the weights; default: cache dir, then the demo checkpoint
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
        overwrite: replace existing output field(s) (else refuse)
        progress: ``progress(fraction, label)`` called per frame; return False (or raise
            ``PropagationCancelled``) to cancel: nothing is written then
        long_term_gap, max_long_term_frames, max_short_edge, max_long_edge, precision: engine knobs
        compile_model: run the network through ``torch.compile`` (opt-in; compiling takes a
            minute or so on CPU, then each frame is 10-25 % faster)
        test_scales, test_flip: test-time augmentation as the official evaluator's ``--ms`` /
            ``--flip`` (``deaot_core.Tracker``): one pass per scale, and per mirrored scale with
            ``test_flip``; the probabilities are averaged. Default: one pass at scale 1
        write_segmentation: optional frame field for a ``fo.Segmentation`` label map whose
            values are the objects' ``index``
        skip_failures: a video that fails (bad keyframes, undecodable, an error while running)
            keeps its previous output values and is listed in ``failed``; the others are written.
            Without it (the default) the first failure raises and nothing is written
        allow_random_weights: run with random weights when no checkpoint exists (demo only)
        write_every: frames buffered per bulk write
        job: internal, a :class:`deaot_vos.scaleout.JobHandle` when this run is one task of a
            queued job: each video is claimed first, written to the job's staging fields and
            copied onto the output field(s) as soon as it is done (other tasks write other videos
            of the same fields at the same time); the schema is not changed

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
    dataset = root_dataset(sample_collection)
    if sample_collection.media_type != fo.core.media.VIDEO:
        raise ValueError(f"'{dataset.name}' is not a video collection (media type {sample_collection.media_type!r}); "
                         f"propagation needs videos")
    staged = job is not None
    names = [_field_name(output_field, "output_field"), _field_name(write_segmentation, "write_segmentation")]
    with contextlib.ExitStack() as stack:
        claims: dict[str, FieldClaim] = {}
        if not staged:  # one run per output field at a time; a dead owner's journal is settled
            from .scaleout import active_stage_fields, refuse_if_active

            claims = stack.enter_context(claim_fields(dataset, names))
            refuse_if_active(dataset, names)  # a queued job's staging field is not a leftover
            refuse_unowned_temporaries(dataset, names + [_field_name(keyframes_field, "keyframes_field")],
                                       active_stage_fields(dataset))
        return _propagate_claimed(sample_collection, dataset, claims, job, start_time, dict(
            keyframes_field=keyframes_field, output_field=output_field, model=model, checkpoint=checkpoint,
            device=device, overwrite=overwrite, progress=progress, long_term_gap=long_term_gap,
            max_long_term_frames=max_long_term_frames, max_short_edge=max_short_edge, max_long_edge=max_long_edge,
            precision=precision, write_segmentation=write_segmentation, skip_failures=skip_failures,
            allow_random_weights=allow_random_weights, write_every=write_every, compile_model=compile_model,
            test_scales=test_scales, test_flip=test_flip))


def _propagate_claimed(sample_collection, dataset, claims: dict[str, FieldClaim], job, start_time: float,
                       o: dict[str, Any]) -> dict[str, Any]:
    """:func:`propagate` once its output fields are claimed (``claims``; empty for a queued
    job's task, whose job owns the fields)."""
    import deaot_core

    staged = job is not None
    progress, skip_failures, write_every = o["progress"], o["skip_failures"], o["write_every"]
    keyframes_field, output_field, write_segmentation = check_fields(
        sample_collection, o["keyframes_field"], o["output_field"], o["write_segmentation"], o["overwrite"] or staged)
    precision = o["precision"]
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    _check_knobs(o["long_term_gap"], o["max_long_term_frames"], o["max_short_edge"], o["max_long_edge"], write_every)
    max_long_edge = o["max_long_edge"]
    test_scales = check_test_scales(o["test_scales"])
    _check_group_slices(sample_collection, dataset)
    device = resolve_device(o["device"])
    choice = resolve_checkpoint(o["model"], o["checkpoint"], allow_random=o["allow_random_weights"])

    trackers: dict[tuple, Any] = {}

    def get_tracker(dev: str, edge):
        key = (dev, edge)
        if key not in trackers:
            trackers.clear()
            trackers[key] = deaot_core.Tracker(load_model(choice, dev), device=dev, long_term_gap=o["long_term_gap"],
                                               max_long_term_frames=o["max_long_term_frames"],
                                               max_short_edge=o["max_short_edge"], max_long_edge=edge,
                                               precision=precision, compile=o["compile_model"],
                                               test_scales=test_scales, test_flip=bool(o["test_flip"]))
        return trackers[key]

    get_tracker(device, max_long_edge)  # weights and settings are checked before any video
    mask_targets = dataset.mask_targets.get("frames." + keyframes_field) or dataset.default_mask_targets or None

    def ask(fraction: float, label: str) -> None:
        for claim in claims.values():
            claim.beat()
        if progress is not None and progress(min(max(fraction, 0.0), 1.0), label) is False:
            raise PropagationCancelled("cancelled by the progress callback")

    # -- 1. check every sample before writing anything ---------------------------------------------
    rows = sample_collection.values(["id", "filepath", "metadata.total_frame_count"])
    samples = list(zip(*rows)) if rows and rows[0] else []
    summary: dict[str, Any] = dict(model=choice.model, checkpoint=choice.checkpoint, weights=choice.source,
                                   device=device, keyframes_field=keyframes_field, output_field=output_field,
                                   segmentation_field=write_segmentation, samples=[], failed=[], written=False)
    if not samples:
        raise NoKeyframesError(f"nothing to propagate: the view of dataset '{dataset.name}' has no samples")
    total = len(samples)
    checked: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    for i, (sid, path, meta_count) in enumerate(samples):
        ask(0.0, f"[{i + 1}/{total}] {os.path.basename(path)}: checking the video and keyframes")
        row: dict[str, Any] = dict(id=sid, filepath=path)
        try:
            reader, registry, keyframes, existing = _load_sample(
                sample_collection, dataset, sid, path, meta_count, keyframes_field, mask_targets,
                bool(write_segmentation))
            row.update(frames=reader.num_frames, width=reader.width, height=reader.height,
                       keyframes=sorted(keyframes), objects=registry.num_objects)
            del reader
            row["_existing"] = existing
            if not keyframes:
                log.warning("%s: no keyframe with objects in '%s'; skipped (its output is unchanged)", path,
                            keyframes_field)
                row.update(status="skipped: no keyframes", frames_written=0)
        except Exception as err:  # KeyframeError, VideoError, or anything unexpected
            _add_context(err, sid, path)
            if hasattr(err, "with_context"):
                err.with_context(field=keyframes_field)
            failures.append(err)
            row.update(status=f"error: {_error_text(err)}")
            log.error("%s", err)
        checked.append(row)
    if failures and not skip_failures:
        first = failures[0]
        if len(failures) > 1:
            more = "; ".join(str(e) for e in failures[1:4]) + ("; ..." if len(failures) > 4 else "")
            first.args = (f"{first.args[0]} [and {len(failures) - 1} more sample(s) failed the checks: {more}]",) \
                + tuple(first.args[1:])
        first.failures = failures
        raise first
    runnable = [r for r in checked if "status" not in r]
    if not runnable and not failures:
        raise NoKeyframesError(
            f"no keyframes: none of the {total} samples has a non-empty '{keyframes_field}' label on any frame "
            f"(label a few frames with instance masks first)")

    # -- 2. propagate into temporary fields, swap at the end ---------------------------------------
    finals = [(output_field, fo.Detections)] + ([(write_segmentation, fo.Segmentation)] if write_segmentation else [])
    final_names = [f for f, _ in finals]
    tmps: list[str] = []
    created: dict[str, set] = {}  # sample id -> frame numbers that existed before this run wrote to it
    done_ok = 0
    committing = False
    try:
        if runnable:
            for final, kind in finals:
                tmps.append(job.stage_fields[final] if staged else _prepare_tmp(dataset, claims[final], kind))
        for i, row in enumerate(checked):
            if "status" in row:
                continue
            sid, path = row["id"], row["filepath"]
            if staged and not job.claim(sid):
                row.pop("_existing", None)
                row.update(status="skipped: claimed by another task", frames_written=0)
                continue
            meta_count = samples[i][2]
            existing = row.pop("_existing")

            def report(done: int, count: int, label: str, _i=i, _path=path) -> None:
                if progress is None and not claims:
                    return
                ask((_i + (done / count if count else 1.0)) / total,
                    f"[{_i + 1}/{total}] {os.path.basename(_path)}: {label}")

            created[sid] = existing
            where: dict[str, Any] = {}
            try:
                row.update(_run_sample(sample_collection, dataset, sid, path, meta_count, keyframes_field, tmps,
                                       final_names, existing, get_tracker, device, max_long_edge, mask_targets,
                                       report, write_every, bool(write_segmentation), where))
                done_ok += 1
                if staged:
                    _commit_sample(dataset, sid, tmps, final_names)
                    created.pop(sid, None)
                    summary["written"] = True
                    job.settle(sid, "done")
            except (PropagationCancelled, KeyboardInterrupt):
                raise
            except Exception as err:
                _add_context(err, sid, path, where.get("frame"))
                if not skip_failures:
                    raise
                log.error("sample %s (%s) failed, its output is unchanged: %s", sid, path,
                          _error_text(err, where.get("frame")))
                if staged:  # the output field was never touched: drop what was staged
                    _reset_sample(dataset, sid, tmps, final_names, existing, restore=False)
                    _delete_created_frames(dataset, {sid: existing})
                    job.settle(sid, "failed", _error_text(err, where.get("frame")))
                else:
                    _reset_sample(dataset, sid, tmps, final_names, existing, restore=True)
                created.pop(sid, None)
                row.update(status=f"error: {_error_text(err, where.get('frame'))}", frames_written=0)
                failures.append(err)
        if done_ok and not staged:
            ask(1.0, "writing the output field(s)")  # a cancel up to here still writes nothing
            deferred: list[int] = []
            committing = True
            with signals_deferred(deferred):
                for final in final_names:
                    claim = claims[final]
                    claim.set_phase("commit", step=None)
                    finish_swap(dataset, lambda step, _c=claim: _c.set_phase("commit", step=step), final, claim.tmp,
                                dict(finals)[final])
                    claim.set_phase("claimed", tmp=None)
                    claim.tmp = None
                    summary["written"] = True
            committing = False
            if deferred:
                names_ = ", ".join(signal.Signals(s).name for s in deferred)
                summary["signals_during_swap"] = names_
                log.warning("%s arrived while the output was being swapped in: the swap was finished, '%s' holds "
                            "the new output", names_, "', '".join(final_names))
    except BaseException as err:
        if committing:
            err.add_note(f"the final swap of frame field(s) {', '.join(final_names)} of dataset '{dataset.name}' was "
                         f"interrupted: nothing is lost (the complete new output is in the temporary field); the "
                         f"next propagation into the same field finishes the swap")
        raise
    finally:
        for row in checked:
            row.pop("_existing", None)
        if staged:  # videos started but not committed: remove their staged values and new frames
            for sid, existing in created.items():
                try:
                    _reset_sample(dataset, sid, tmps, final_names, existing, restore=False)
                    _delete_created_frames(dataset, {sid: existing})
                except Exception as err:  # best effort: the job's clean-up removes the rest
                    log.warning("could not remove the staged values of sample %s: %s", sid, err)
        elif not committing:  # not swapped: nothing of this run may remain
            for claim in claims.values():
                if claim.tmp is not None:
                    _roll_back(dataset, claim, created)
                    created = {}
        trackers.clear()
    summary["samples"] = checked
    summary["failed"] = [dict(id=r["id"], filepath=r["filepath"], error=r["status"][len("error: "):])
                         for r in checked if str(r.get("status", "")).startswith("error")]
    summary["seconds"] = round(time.time() - start_time, 3)
    if summary["failed"]:
        log.warning("%s of %s samples failed (their output is unchanged): %s", len(summary["failed"]), total,
                    "; ".join(f"{os.path.basename(f['filepath'])}: {f['error']}" for f in summary["failed"]))
    if progress is not None:
        progress(1.0, "done")
    return summary



def _oom_plan(device: str, max_long_edge, height: int, width: int) -> list[tuple[str, Any]]:
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


def _free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _run_sample(sample_collection, dataset, sid, path, meta_count, keyframes_field, tmps, finals, existing,
                get_tracker, device, max_long_edge, mask_targets, report, write_every, write_segmentation,
                where) -> dict[str, Any]:
    """Propagate one video, retrying out-of-memory failures (see :func:`_oom_plan`)."""
    plan = None
    warnings: list[str] = []
    attempt = 0
    while True:
        dev, edge = plan[attempt] if plan else (device, max_long_edge)
        tracker = get_tracker(dev, edge)
        oom = None
        try:
            row = _propagate_sample(sample_collection, dataset, sid, path, meta_count, keyframes_field, tmps,
                                    finals, existing, tracker, mask_targets, report, write_every,
                                    write_segmentation, where)
        except _oom_errors() as err:
            oom = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            if plan is None:
                plan = _oom_plan(device, max_long_edge, where.get("height", 0), where.get("width", 0))
            if attempt + 1 >= len(plan):
                raise
        finally:
            tracker.reset()
        if oom is None:
            row.update(device=dev, max_long_edge=edge, warnings=warnings)
            return row
        _free_memory(dev)
        attempt += 1
        nxt_dev, nxt_edge = plan[attempt]
        message = (f"out of memory at frame {where.get('frame')} on {dev} with max_long_edge {edge} ({oom}); "
                   f"retrying the video " + (f"on {nxt_dev} " if nxt_dev != dev else "")
                   + f"with max_long_edge {nxt_edge}")
        log.warning("%s: %s", path, message)
        warnings.append(message)


class BackgroundWriter:
    """Runs bulk writes one at a time on a worker thread, so the tracker computes the next
    frames while the database stores the previous ones. At most one write is in flight (memory
    stays bounded); a write's error is raised by the next ``submit``/``wait``."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="deaot-write")
        self._pending: concurrent.futures.Future | None = None

    def submit(self, fn: Callable[..., None], *args) -> None:
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self, raise_errors: bool = True) -> None:
        """Wait for the last write (its error is dropped with ``raise_errors=False``: the caller
        is already failing) and stop the thread."""
        try:
            self.wait()
        except Exception:
            if raise_errors:
                raise
            log.debug("a write failed while the run was already failing", exc_info=True)
        finally:
            self._pool.shutdown(wait=True)


def _propagate_sample(sample_collection, dataset, sid, path, meta_count, keyframes_field, tmps, finals, existing,
                      tracker, mask_targets, report, write_every, write_segmentation, where) -> dict[str, Any]:
    import torch

    t0 = time.time()
    reader, registry, keyframes, _ = _load_sample(sample_collection, dataset, sid, path, meta_count, keyframes_field,
                                                  mask_targets, write_segmentation)
    height, width, count = reader.height, reader.width, reader.num_frames
    where.update(height=height, width=width, frame=None)
    row: dict[str, Any] = dict(frames=count, width=width, height=height, keyframes=sorted(keyframes),
                               objects=registry.num_objects)
    # start from a clean slate for this sample (the temporary field may be a copy of the old output)
    _reset_sample(dataset, sid, tmps, finals, existing, restore=False)

    out_field, seg_field = tmps[0], (tmps[1] if len(tmps) > 1 else None)
    buffer: dict[int, tuple] = {}
    written = 0
    writer = BackgroundWriter()

    def store(values: dict[int, tuple]) -> None:
        dataset.set_values("frames." + out_field, {sid: {n: v[0] for n, v in values.items()}}, key_field="id")
        if seg_field is not None:
            dataset.set_values("frames." + seg_field, {sid: {n: v[1] for n, v in values.items()}}, key_field="id")

    def flush() -> None:
        nonlocal written
        if not buffer:
            return
        writer.submit(store, dict(buffer))
        written += len(buffer)
        buffer.clear()

    def emit(number: int, frame: np.ndarray, kf, labels: dict) -> None:
        where["frame"] = number
        probs = tracker.step(frame, kf.label_map if kf is not None else None)
        label_map = np.asarray(tracker.label)
        if kf is not None:
            # the keyframe is authoritative for its objects: none of their pixels outside the given masks
            label_map = label_map.copy()
            label_map[np.isin(label_map, kf.objects) & (kf.label_map == 0)] = 0
            label_map[kf.label_map > 0] = kf.label_map[kf.label_map > 0]
            labels.update(kf.labels)
        dets = mask_to_detections(label_map, mean_confidences(probs, label_map), registry, labels,
                                  exact=kf.exact if kf is not None else None,
                                  given=set(kf.objects) if kf is not None else None)
        seg = mask_to_segmentation(label_map, registry) if seg_field is not None else None
        buffer[number] = (dets, seg)
        if len(buffer) >= write_every:
            flush()

    first = min(keyframes)
    steps_total = count - first + 1 + (first - 1)
    done = 0
    finished = False
    try:
        with torch.inference_mode():
            tracker.reset()
            labels: dict[int, Any] = {}
            for number, frame in prefetch(reader.forward(first)):
                emit(number, frame, keyframes.get(number), labels)
                done += 1
                report(done, steps_total, f"frame {number}/{count}")
            flush()
            if first > 1:  # frames before the first keyframe: a reverse pass from it
                tracker.reset()
                labels = dict(keyframes[first].labels)
                for number, frame in prefetch(reader.backward(first, 1)):
                    if number == first:
                        where["frame"] = number
                        tracker.step(frame, keyframes[first].label_map)
                        continue
                    emit(number, frame, None, labels)
                    done += 1
                    report(done, steps_total, f"frame {number}/{count} (backward)")
                flush()
        writer.wait()
        finished = True
    finally:
        # also on failure: the rollback must only start once no write is in flight
        writer.close(raise_errors=finished)
    tracker.reset()
    seconds = time.time() - t0
    row.update(status="ok", frames_written=written, seconds=round(seconds, 3),
               fps=round(written / seconds, 2) if seconds > 0 else None)
    log.info("%s: %s frames, keyframes %s, %s objects, %.1fs", path, count, row["keyframes"], row["objects"], seconds)
    return row
