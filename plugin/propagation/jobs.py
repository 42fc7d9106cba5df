"""Scale-out: one propagation split into delegated operations that several workers run in parallel.

:func:`queue_propagation` checks the whole view once (fields, ``overwrite`` refusal, model and
checkpoint), declares the output field(s) and a shared staging field per output
(``<field>_deaot_tmp``), records a *job* document and queues one delegated
``@deaot/vos/propagate_masks`` operation per video (or per ``videos_per_task`` videos). Any number
of ``fiftyone delegated launch`` workers sharing the MongoDB database then run them.

How each video is done exactly once
    FiftyOne starts a queued operation by an atomic ``find_one_and_update`` that requires the
    state to still be QUEUED, so two workers never run the same operation. On top of that, a
    task claims each of its videos in the job document (also one atomic ``find_one_and_update``)
    before touching it: a video that is listed twice, or whose operation is rerun after it was
    done, is not propagated again. The claim records the worker (host, pid, operation id).

How writes stay safe with concurrent tasks
    Only the queueing process changes the dataset schema (two processes adding fields at once
    could overwrite each other's dataset document). A task writes its video's frames into the
    staging field (documents of that video only), then copies them onto the output field with
    one server-side update restricted to that video's frames; if the video fails or is cancelled
    its staged values and the frame documents it created are removed and its output is left as
    it was. The task that settles the last video drops the staging fields (and an output field
    the job created if no video was written).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Optional

import fiftyone as fo
from bson import ObjectId

from ..fields import root_dataset
from ..weights import resolve_checkpoint
from .cancel import PropagationCancelled
from .clips import is_clip_view
from .errors import NoKeyframesError
from .job_records import JobHandle, active_stage_fields, jobs_collection, now, refuse_if_active
from .journal import TMP_SUFFIX, claim_fields, refuse_unowned_temporaries
from .options import PropagationOptions
from .plan import check_fields, output_kinds
from .run import propagate, resolve_options
from .staging import JobCommit

log = logging.getLogger(__name__)

OPERATOR_URI = "@deaot/vos/propagate_masks"
JOB_PARAM = "deaot_job"


def split_size(sample_collection, videos_per_task: Optional[int], delegated: bool) -> int:
    """Videos per queued task for an operator run, 0 for one run over all: splitting happens
    only when delegated over more than one video, never for a clip view (its clips run in one
    operation); ``videos_per_task`` None means 1, 0 means no split."""
    if not delegated or videos_per_task == 0 or videos_per_task == "" or is_clip_view(sample_collection):
        return 0
    size = 1 if videos_per_task is None else int(videos_per_task)
    if size < 0:
        raise ValueError(f"videos_per_task must be >= 0, got {videos_per_task!r}")
    return size if sample_collection.count() > 1 else 0


def queue_propagation(sample_collection, keyframes_field=None, output_field=None, videos_per_task: int = 1, *,
                      options: Optional[PropagationOptions] = None, delegation_target: Optional[str] = None,
                      parent_op: Any = None, **option_values) -> dict[str, Any]:
    """Queue the propagation of ``sample_collection``'s videos as delegated operations of
    ``videos_per_task`` videos each, for ``fiftyone delegated launch`` workers.

    The settings are :func:`deaot_vos.propagate`'s (``options`` and/or its keyword arguments).
    The whole view is checked once here: an existing output field without ``overwrite`` raises
    ``OutputExistsError`` and nothing is queued. Each task's params are ``options.to_params()``.
    Returns ``dict(job=<id>, operations=[ids], samples=<count>)``.
    """
    options = resolve_options(keyframes_field, output_field, options, **option_values)
    if int(videos_per_task) < 1:
        raise ValueError(f"videos_per_task must be >= 1, got {videos_per_task!r}")
    dataset = root_dataset(sample_collection)
    names = [options.output_field, options.write_segmentation, options.write_polylines]
    # the fields are claimed while the job is set up; from then on the job document guards them
    with claim_fields(dataset, names):
        refuse_if_active(dataset, names)
        refuse_unowned_temporaries(dataset, names + [options.keyframes_field], active_stage_fields(dataset))
        return _queue_claimed(sample_collection, dataset, options, int(videos_per_task), delegation_target,
                              parent_op)


def _check_queueable(sample_collection, dataset: fo.Dataset, options: PropagationOptions) -> tuple:
    """The checks of the whole view before queueing; returns (normalised options, sample ids)."""
    keyframes_field, output_field, segmentation = check_fields(
        sample_collection, options.keyframes_field, options.output_field, options.write_segmentation,
        options.overwrite, options.write_polylines)
    resolve_checkpoint(options.model, options.checkpoint, allow_random=options.allow_random_weights)
    sample_ids = sample_collection.values("id")
    if not sample_ids:
        raise ValueError(f"nothing to queue: the view of dataset '{dataset.name}' has no samples")
    if not sample_collection.count("frames." + keyframes_field):
        raise NoKeyframesError(f"no keyframes: none of the {len(sample_ids)} samples has a '{keyframes_field}' "
                               f"label on any frame (label a few frames with instance masks first)")
    return options, sample_ids


def _declare_fields(dataset: fo.Dataset, options: PropagationOptions, created: list, stage: dict) -> None:
    """Declare the output fields that do not exist (into ``created``) and a staging field per
    output (``stage``: output -> staging field); only the queueing process changes the schema."""
    schema = dataset.get_frame_field_schema()
    for final, kind in output_kinds(options.output_field, options.write_segmentation, options.write_polylines):
        if final not in schema:
            dataset.add_frame_field(final, fo.EmbeddedDocumentField, embedded_doc_type=kind)
            created.append(final)
        dataset.add_frame_field(final + TMP_SUFFIX, fo.EmbeddedDocumentField, embedded_doc_type=kind)
        stage[final] = final + TMP_SUFFIX


def _queue_operations(dataset: fo.Dataset, job_id, params: dict, sample_ids: list, videos_per_task: int,
                      delegation_target: Optional[str], op_ids: list) -> None:
    """Queue one delegated operation per ``videos_per_task`` videos (ids into ``op_ids`` and the job)."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext

    service = DelegatedOperationService()
    chunks = [sample_ids[i:i + videos_per_task] for i in range(0, len(sample_ids), videos_per_task)]
    for k, chunk in enumerate(chunks):
        ctx = ExecutionContext(request_params=dict(
            dataset_name=dataset.name, dataset_id=str(dataset._doc.id), view=dataset.select(chunk)._serialize(),
            params=dict(params, sample_ids=chunk), delegated=True))
        op = service.queue_operation(operator=OPERATOR_URI, label=f"DeAOT propagate {k + 1}/{len(chunks)}",
                                     delegation_target=delegation_target, context=ctx,
                                     metadata={"inputs_schema": None, "outputs_schema": None})
        op_ids.append(op.id)
        jobs_collection().update_one({"_id": job_id}, {"$push": {"ops": op.id}})


def _undo_queueing(dataset: fo.Dataset, job_id, op_ids: list, fields: list) -> None:
    """Remove what a failed queueing made: its operations, fields and job document."""
    from fiftyone.operators.delegated import DelegatedOperationService

    for op_id in op_ids:
        with contextlib.suppress(Exception):  # best effort
            DelegatedOperationService().delete_operation(op_id)
    dataset.reload()
    for field in fields:
        if field in dataset.get_frame_field_schema():
            dataset.delete_frame_field(field)
    if job_id is not None:
        jobs_collection().delete_one({"_id": job_id})


def _queue_claimed(sample_collection, dataset: fo.Dataset, options: PropagationOptions, videos_per_task: int,
                   delegation_target: Optional[str], parent_op: Any) -> dict[str, Any]:
    options, sample_ids = _check_queueable(sample_collection, dataset, options)
    created, stage = [], {}
    job_id = None
    op_ids: list = []
    try:
        _declare_fields(dataset, options, created, stage)
        job_id = jobs_collection().insert_one(dict(
            dataset_id=dataset._doc.id, dataset=dataset.name, fields=list(stage), stage=stage,
            created_fields=created, pending=list(sample_ids), videos={}, ops=[], finalized=False,
            parent_op=str(parent_op) if parent_op is not None else None, created_at=now())).inserted_id
        params = dict(options.to_params(), overwrite=True, delegate=True)
        params[JOB_PARAM] = str(job_id)
        _queue_operations(dataset, job_id, params, sample_ids, videos_per_task, delegation_target, op_ids)
    except BaseException:
        _undo_queueing(dataset, job_id, op_ids, list(stage.values()) + created)
        raise
    log.info("queued %s operation(s) for %s video(s) of '%s' (job %s)", len(op_ids), len(sample_ids),
             dataset.name, job_id)
    return dict(job=str(job_id), operations=[str(i) for i in op_ids], samples=len(sample_ids))


def run_task(sample_collection, job_id, sample_ids: list[str], op_id: Any = None, progress=None, *,
             options: Optional[PropagationOptions] = None, **option_values) -> dict[str, Any]:
    """Run one queued task: propagate ``sample_ids`` of the job's dataset with per-video claims
    and per-video commits (see the module docstring). Returns :func:`deaot_vos.propagate`'s summary."""
    job = jobs_collection().find_one({"_id": ObjectId(str(job_id))})
    if job is None:
        raise RuntimeError(f"propagation job {job_id} does not exist (deleted?)")
    if job["finalized"]:
        raise RuntimeError(f"propagation job {job_id} is over (its staging fields are gone); queue a new run")
    handle = JobHandle(job, op_id)
    dataset = fo.load_dataset(job["dataset"])
    dataset.reload()  # a long-lived worker's cached schema may predate the staging fields
    view = dataset.select(sample_ids, ordered=True)
    options = resolve_options(None, None, options, **option_values).replace(overwrite=True)
    try:
        summary = propagate(view, options=options, progress=progress, staging=JobCommit(handle))
    except BaseException as err:
        cancelled = isinstance(err, (PropagationCancelled, KeyboardInterrupt))
        handle.finish(sample_ids, "cancelled" if cancelled else "failed", f"{type(err).__name__}: {err}")
        raise
    handle.finish(sample_ids, "failed", rows={r["id"]: r.get("status", "failed") for r in summary["samples"]})
    summary["job"] = str(job_id)
    summary["worker"] = handle.worker
    return summary
