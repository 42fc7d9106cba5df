"""Propagate keyframe masks through the videos of a FiftyOne collection with DeAOT / AOT.

All writes go to temporary frame fields that are renamed onto the output field(s) only after
every sample succeeded: a crash, an error or a cancel leaves the output field as it was (or
absent). Values are written in bulk with ``set_values`` (dict form keyed by sample id and
frame number, which also creates missing frame documents).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Optional

import numpy as np

import fiftyone as fo

from .labels import (KEYFRAME_TYPES, ObjectRegistry, mask_to_detections, mask_to_segmentation, mean_confidences,
                     parse_keyframe)
from .models import DEFAULT_MODEL, PRECISIONS, load_model, resolve_checkpoint, resolve_device
from .video import open_video

log = logging.getLogger(__name__)

TMP_SUFFIX = "_deaot_tmp"
OLD_SUFFIX = "_deaot_old"
RESERVED_FRAME_FIELDS = {"id", "_id", "frame_number", "created_at", "last_modified_at", "_sample_id",
                         "_dataset_id"}

ProgressCallback = Callable[[float, str], Optional[bool]]


class PropagationCancelled(Exception):
    """Raised when the progress callback asked to stop; nothing was written."""


class OutputExistsError(ValueError):
    """The output field exists and ``overwrite`` is False (``.field`` names it)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _field_name(name: str | None, what: str) -> str | None:
    if name is None or str(name).strip() == "":
        return None
    name = str(name).strip()
    if name.startswith("frames."):
        name = name[len("frames."):]
    if not name or "." in name or name.startswith("_") or name in RESERVED_FRAME_FIELDS:
        raise ValueError(f"invalid {what} {name!r}: expected a top-level frame field name")
    return name


def _root_dataset(sample_collection) -> fo.Dataset:
    if isinstance(sample_collection, fo.Dataset):
        return sample_collection
    if getattr(sample_collection, "_is_generated", False):
        raise ValueError("propagation runs on video datasets or their views, not on clips/frames/patches "
                         "views; run it on the underlying video dataset")
    return sample_collection._root_dataset


def _embedded_type(schema: dict, name: str):
    field = schema.get(name)
    return getattr(field, "document_type", None) if field is not None else None


def check_fields(sample_collection, keyframes_field: str, output_field: str,
                 write_segmentation: str | None = None, overwrite: bool = False) -> tuple[str, str, str | None]:
    """Validate field names/types; returns the normalised (keyframes, output, segmentation) names.

    Raises ``OutputExistsError`` naming the field when an output exists and not ``overwrite``.
    """
    dataset = _root_dataset(sample_collection)
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
    if keyframes_field not in schema:
        raise ValueError(f"dataset '{dataset.name}' has no frame field '{keyframes_field}'")
    if kf_type not in KEYFRAME_TYPES:
        raise ValueError(f"frame field '{keyframes_field}' must hold Detections, Segmentation or Polylines "
                         f"(got {getattr(kf_type, '__name__', kf_type)})")
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


def _recover_stale(dataset: fo.Dataset, final: str) -> None:
    """Undo what an interrupted earlier run left behind for ``final``."""
    schema = dataset.get_frame_field_schema()
    tmp, old = final + TMP_SUFFIX, final + OLD_SUFFIX
    if old in schema:
        if final in schema:
            log.warning("removing leftover backup field '%s' of an interrupted run", old)
            dataset.delete_frame_field(old)
        else:
            log.warning("restoring '%s' from the backup '%s' of an interrupted run", final, old)
            dataset.rename_frame_field(old, final)
    if tmp in dataset.get_frame_field_schema():
        log.warning("removing leftover temporary field '%s' of an interrupted run", tmp)
        dataset.delete_frame_field(tmp)


def _prepare_tmp(dataset: fo.Dataset, final: str, kind, sample_ids: list[str]) -> str:
    tmp = final + TMP_SUFFIX
    schema = dataset.get_frame_field_schema()
    if final in schema and len(sample_ids) < len(dataset):
        # keep the values of samples outside the processed view; clear those of the view
        dataset.clone_frame_field(final, tmp)
        dataset.select(sample_ids).clear_frame_field(tmp)
    else:
        dataset.add_frame_field(tmp, fo.EmbeddedDocumentField, embedded_doc_type=kind)
    return tmp


def _swap(dataset: fo.Dataset, tmp: str, final: str) -> None:
    if final in dataset.get_frame_field_schema():
        old = final + OLD_SUFFIX
        dataset.rename_frame_field(final, old)
        try:
            dataset.rename_frame_field(tmp, final)
        except BaseException:
            dataset.rename_frame_field(old, final)
            raise
        dataset.delete_frame_field(old)
    else:
        dataset.rename_frame_field(tmp, final)


def _drop(dataset: fo.Dataset, field: str) -> None:
    try:
        dataset.reload()
        if field in dataset.get_frame_field_schema():
            dataset.delete_frame_field(field)
    except Exception as err:  # best effort: the next run removes it too
        log.warning("could not remove temporary field '%s': %s", field, err)


def propagate(sample_collection, keyframes_field: str, output_field: str, model: str = DEFAULT_MODEL,
              checkpoint: str | None = None, device: str = "auto", overwrite: bool = False,
              progress: ProgressCallback | None = None, long_term_gap: int | None = None,
              max_long_term_frames: int | None = None, max_short_edge: int | None = None,
              max_long_edge: int | None = 1040, precision: str = "fp32", write_segmentation: str | None = None,
              skip_failures: bool = False, allow_random_weights: bool = False,
              write_every: int = 64) -> dict[str, Any]:
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
        write_segmentation: optional frame field for a ``fo.Segmentation`` label map whose
            values are the objects' ``index``
        skip_failures: record failing videos in the summary and go on instead of raising
        allow_random_weights: run with random weights when no checkpoint exists (demo only)
        write_every: frames buffered per bulk write

    Returns:
        a dict with the run settings and ``samples``: one summary dict per processed sample
    """
    import torch
    import deaot_core

    start_time = time.time()
    dataset = _root_dataset(sample_collection)
    for name, what in ((output_field, "output_field"), (write_segmentation, "write_segmentation")):
        name = _field_name(name, what)
        if name is not None:  # a killed earlier run may have left the field renamed or a temporary one
            _recover_stale(dataset, name)
    keyframes_field, output_field, write_segmentation = check_fields(
        sample_collection, keyframes_field, output_field, write_segmentation, overwrite)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = resolve_device(device)
    choice = resolve_checkpoint(model, checkpoint, allow_random=allow_random_weights)
    net = load_model(choice, device)
    tracker = deaot_core.Tracker(net, device=device, long_term_gap=long_term_gap,
                                 max_long_term_frames=max_long_term_frames, max_short_edge=max_short_edge,
                                 max_long_edge=max_long_edge, precision=precision)
    mask_targets = dataset.mask_targets.get("frames." + keyframes_field) or dataset.default_mask_targets or None

    rows = sample_collection.values(["id", "filepath", "metadata.total_frame_count"])
    sample_ids, filepaths, frame_counts = (list(r) for r in rows) if rows else ([], [], [])
    summary: dict[str, Any] = dict(model=choice.model, checkpoint=choice.checkpoint, weights=choice.source,
                                   device=device, keyframes_field=keyframes_field, output_field=output_field,
                                   segmentation_field=write_segmentation, samples=[])

    finals = [(output_field, fo.Detections)] + ([(write_segmentation, fo.Segmentation)] if write_segmentation else [])
    tmps: list[str] = []
    try:
        for final, kind in finals:
            tmps.append(_prepare_tmp(dataset, final, kind, sample_ids))
        total = len(sample_ids)
        for i, (sid, path, meta_count) in enumerate(zip(sample_ids, filepaths, frame_counts)):
            def report(done: int, count: int, label: str, _i=i) -> None:
                if progress is None:
                    return
                fraction = (_i + (done / count if count else 1.0)) / max(total, 1)
                if progress(min(fraction, 1.0), f"[{_i + 1}/{total}] {os.path.basename(path)}: {label}") is False:
                    raise PropagationCancelled("cancelled by the progress callback")

            try:
                row = _propagate_sample(sample_collection, dataset, sid, path, meta_count, keyframes_field,
                                        tmps, tracker, mask_targets, report, write_every)
            except (PropagationCancelled, KeyboardInterrupt):
                raise
            except Exception as err:
                if not skip_failures:
                    raise
                log.error("sample %s (%s) failed: %s", sid, path, err)
                row = dict(id=sid, filepath=path, status=f"error: {type(err).__name__}: {err}")
            summary["samples"].append(row)
        for tmp, (final, _) in zip(tmps, finals):
            _swap(dataset, tmp, final)
        tmps = []
    finally:
        for tmp in tmps:
            _drop(dataset, tmp)
        tracker.reset()
    summary["seconds"] = round(time.time() - start_time, 3)
    if progress is not None:
        progress(1.0, "done")
    return summary


def _propagate_sample(sample_collection, dataset, sid, path, meta_count, keyframes_field, tmps, tracker,
                      mask_targets, report, write_every) -> dict[str, Any]:
    import torch

    t0 = time.time()
    one = sample_collection.select(sid)
    frame_numbers, values = one.values(["frames.frame_number", "frames." + keyframes_field])
    frame_numbers, values = (frame_numbers[0] or []), (values[0] or [])
    reader = open_video(path, meta_count)
    height, width, count = reader.height, reader.width, reader.num_frames
    registry = ObjectRegistry()
    keyframes = {}
    for number, value in sorted(zip(frame_numbers, values), key=lambda x: x[0]):
        if value is None:
            continue
        if number > count:
            log.warning("%s: keyframe on frame %s beyond the video's %s frames; ignored", path, number, count)
            continue
        kf = parse_keyframe(value, number, height, width, registry, mask_targets)
        if kf is not None:
            keyframes[number] = kf
    registry.assign_indexes()
    row: dict[str, Any] = dict(id=sid, filepath=path, frames=count, width=width, height=height,
                               keyframes=sorted(keyframes), objects=registry.num_objects)
    if not keyframes:
        log.warning("%s: no keyframe with objects in '%s'; skipped", path, keyframes_field)
        row.update(status="skipped: no keyframes", frames_written=0, seconds=round(time.time() - t0, 3))
        return row

    out_field, seg_field = tmps[0], (tmps[1] if len(tmps) > 1 else None)
    buffer: dict[int, tuple] = {}
    written = 0

    def flush() -> None:
        nonlocal written
        if not buffer:
            return
        dataset.set_values("frames." + out_field, {sid: {n: v[0] for n, v in buffer.items()}}, key_field="id")
        if seg_field is not None:
            dataset.set_values("frames." + seg_field, {sid: {n: v[1] for n, v in buffer.items()}}, key_field="id")
        written += len(buffer)
        buffer.clear()

    def emit(number: int, frame: np.ndarray, kf, labels: dict) -> None:
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
    with torch.inference_mode():
        tracker.reset()
        labels: dict[int, Any] = {}
        for number, frame in reader.forward(first):
            emit(number, frame, keyframes.get(number), labels)
            done += 1
            report(done, steps_total, f"frame {number}/{count}")
        flush()
        if first > 1:  # frames before the first keyframe: a reverse pass from it
            tracker.reset()
            labels = dict(keyframes[first].labels)
            for number, frame in reader.backward(first, 1):
                if number == first:
                    tracker.step(frame, keyframes[first].label_map)
                    continue
                emit(number, frame, None, labels)
                done += 1
                report(done, steps_total, f"frame {number}/{count} (backward)")
            flush()
    tracker.reset()
    seconds = time.time() - t0
    row.update(status="ok", frames_written=written, seconds=round(seconds, 3),
               fps=round(written / seconds, 2) if seconds > 0 else None)
    log.info("%s: %s frames, keyframes %s, %s objects, %.1fs", path, count, row["keyframes"], row["objects"], seconds)
    return row
