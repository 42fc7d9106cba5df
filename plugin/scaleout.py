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

import datetime
import logging
import os
import socket
from typing import Any, Iterable, Optional

import fiftyone as fo

from .journal import TMP_SUFFIX, claim_fields, drop_temporary_field, refuse_unowned_temporaries

log = logging.getLogger(__name__)

OPERATOR_URI = "@deaot/vos/propagate_masks"
JOBS_COLLECTION = "deaot_vos_jobs"
JOB_PARAM = "deaot_job"
ACTIVE_STATES = ("queued", "scheduled", "running", "processing")
RETRYABLE = ("failed", "cancelled")


def _jobs():
    import fiftyone.core.odm.database as fodb

    return fodb.get_db_conn()[JOBS_COLLECTION]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _ops_active(op_ids: Iterable) -> bool:
    """Whether any of the delegated operations is still queued, scheduled or running."""
    from fiftyone.operators.delegated import DelegatedOperationService

    service = DelegatedOperationService()
    for op_id in op_ids:
        doc = service.get(op_id)
        if doc is not None and str(doc.run_state) in ACTIVE_STATES:
            return True
    return False


def refuse_if_active(dataset: fo.Dataset, fields: Iterable[Optional[str]]) -> None:
    """Raise ``RuntimeError`` if a queued propagation job writing one of ``fields`` of
    ``dataset`` still has operations queued or running; a job whose operations are all over
    (workers killed) is closed instead, its leftovers removed."""
    fields = [f for f in fields if f]
    for job in _jobs().find({"dataset_id": dataset._doc.id, "finalized": False,
                             "fields": {"$in": fields}}):
        if _ops_active(job.get("ops", [])):
            raise RuntimeError(f"a queued propagation (job {job['_id']}) into frame field(s) "
                               f"{', '.join(job['fields'])} of dataset '{dataset.name}' is still queued or running; "
                               f"wait for it, or mark its operations failed (fiftyone delegated fail ...)")
        log.warning("closing propagation job %s: none of its operations is queued or running", job["_id"])
        _finalize(dataset, job, force=True)


def active_stage_fields(dataset: fo.Dataset) -> set[str]:
    """The staging fields of ``dataset``'s propagation jobs that are not finalized (theirs)."""
    return {name for job in _jobs().find({"dataset_id": dataset._doc.id, "finalized": False})
            for name in job.get("stage", {}).values()}


def split_size(sample_collection, videos_per_task: Optional[int], delegated: bool) -> int:
    """Videos per queued task for an operator run, 0 for one run over all: splitting happens
    only when delegated over more than one video; ``videos_per_task`` None means 1, 0 means
    no split."""
    if not delegated or videos_per_task == 0 or videos_per_task == "":
        return 0
    size = 1 if videos_per_task is None else int(videos_per_task)
    if size < 0:
        raise ValueError(f"videos_per_task must be >= 0, got {videos_per_task!r}")
    return size if sample_collection.count() > 1 else 0


def queue_propagation(sample_collection, keyframes_field: str, output_field: str, videos_per_task: int = 1,
                      overwrite: bool = False, write_segmentation: Optional[str] = None,
                      delegation_target: Optional[str] = None, parent_op: Any = None,
                      **propagate_kwargs) -> dict[str, Any]:
    """Queue the propagation of ``sample_collection``'s videos as delegated operations of
    ``videos_per_task`` videos each, for ``fiftyone delegated launch`` workers.

    The whole view is checked once here: an existing output field without ``overwrite`` raises
    ``OutputExistsError`` and nothing is queued. ``propagate_kwargs`` are
    :func:`deaot_vos.propagate` arguments (``model``, ``checkpoint``, ``device``, ``skip_failures``,
    engine knobs). Returns ``dict(job=<id>, operations=[ids], samples=<count>)``.
    """
    from .fields import root_dataset
    from .propagation import _field_name

    if int(videos_per_task) < 1:
        raise ValueError(f"videos_per_task must be >= 1, got {videos_per_task!r}")
    dataset = root_dataset(sample_collection)
    names = [_field_name(output_field, "output_field"), _field_name(write_segmentation, "write_segmentation")]
    # the fields are claimed while the job is set up; from then on the job document guards them
    with claim_fields(dataset, names):
        refuse_if_active(dataset, names)
        refuse_unowned_temporaries(dataset, names + [_field_name(keyframes_field, "keyframes_field")],
                                   active_stage_fields(dataset))
        return _queue_claimed(sample_collection, dataset, keyframes_field, output_field, videos_per_task, overwrite,
                              write_segmentation, delegation_target, parent_op, propagate_kwargs)


def _queue_claimed(sample_collection, dataset, keyframes_field, output_field, videos_per_task, overwrite,
                   write_segmentation, delegation_target, parent_op, propagate_kwargs) -> dict[str, Any]:
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext

    from .models import DEFAULT_MODEL, resolve_checkpoint
    from .propagation import NoKeyframesError, check_fields, check_test_scales

    keyframes_field, output_field, write_segmentation = check_fields(
        sample_collection, keyframes_field, output_field, write_segmentation, overwrite)
    resolve_checkpoint(propagate_kwargs.get("model") or DEFAULT_MODEL, propagate_kwargs.get("checkpoint"),
                       allow_random=bool(propagate_kwargs.get("allow_random_weights", False)))
    if "test_scales" in propagate_kwargs:  # checked now; queued as the operator form's string
        scales = check_test_scales(propagate_kwargs["test_scales"])
        propagate_kwargs = dict(propagate_kwargs, test_scales=",".join(str(s) for s in scales))
    sample_ids = sample_collection.values("id")
    if not sample_ids:
        raise ValueError(f"nothing to queue: the view of dataset '{dataset.name}' has no samples")
    if not sample_collection.count("frames." + keyframes_field):
        raise NoKeyframesError(f"no keyframes: none of the {len(sample_ids)} samples has a '{keyframes_field}' "
                               f"label on any frame (label a few frames with instance masks first)")

    finals = [(output_field, fo.Detections)] + ([(write_segmentation, fo.Segmentation)] if write_segmentation else [])
    schema = dataset.get_frame_field_schema()
    created, stage = [], {}
    job_id = None
    op_ids: list = []
    try:
        for final, kind in finals:
            if final not in schema:
                dataset.add_frame_field(final, fo.EmbeddedDocumentField, embedded_doc_type=kind)
                created.append(final)
            dataset.add_frame_field(final + TMP_SUFFIX, fo.EmbeddedDocumentField, embedded_doc_type=kind)
            stage[final] = final + TMP_SUFFIX
        job_id = _jobs().insert_one(dict(
            dataset_id=dataset._doc.id, dataset=dataset.name, fields=[f for f, _ in finals], stage=stage,
            created_fields=created, pending=list(sample_ids), videos={}, ops=[], finalized=False,
            parent_op=str(parent_op) if parent_op is not None else None, created_at=_now())).inserted_id
        params = dict(propagate_kwargs, keyframes_field=keyframes_field, output_field=output_field,
                      write_segmentation=write_segmentation, overwrite=True, delegate=True)
        params[JOB_PARAM] = str(job_id)
        service = DelegatedOperationService()
        step = int(videos_per_task)
        chunks = [sample_ids[i:i + step] for i in range(0, len(sample_ids), step)]
        for k, chunk in enumerate(chunks):
            ctx = ExecutionContext(request_params=dict(
                dataset_name=dataset.name, dataset_id=str(dataset._doc.id), view=dataset.select(chunk)._serialize(),
                params=dict(params, sample_ids=chunk), delegated=True))
            op = service.queue_operation(operator=OPERATOR_URI, label=f"DeAOT propagate {k + 1}/{len(chunks)}",
                                         delegation_target=delegation_target, context=ctx,
                                         metadata={"inputs_schema": None, "outputs_schema": None})
            op_ids.append(op.id)
            _jobs().update_one({"_id": job_id}, {"$push": {"ops": op.id}})
    except BaseException:
        from fiftyone.operators.delegated import DelegatedOperationService as _S

        for op_id in op_ids:
            try:
                _S().delete_operation(op_id)
            except Exception:  # best effort
                pass
        dataset.reload()
        for field in list(stage.values()) + created:
            if field in dataset.get_frame_field_schema():
                dataset.delete_frame_field(field)
        if job_id is not None:
            _jobs().delete_one({"_id": job_id})
        raise
    log.info("queued %s operation(s) for %s video(s) of '%s' (job %s)", len(op_ids), len(sample_ids),
             dataset.name, job_id)
    return dict(job=str(job_id), operations=[str(i) for i in op_ids], samples=len(sample_ids))


def job_status(job_id) -> Optional[dict[str, Any]]:
    """The job document (``videos``: sample id -> status, worker host/pid, operation id)."""
    from bson import ObjectId

    return _jobs().find_one({"_id": ObjectId(str(job_id))})


class JobHandle:
    """A task's view of a job: atomic per-video claims, settlement, and the final clean-up."""

    def __init__(self, job: dict, op_id: Any = None):
        self.job = job
        self.id = job["_id"]
        self.stage_fields: dict[str, str] = dict(job["stage"])
        self.worker = dict(host=socket.gethostname(), pid=os.getpid(), op=str(op_id) if op_id is not None else None)
        self.mine: set[str] = set()
        self.settled: set[str] = set()

    def claim(self, sid: str) -> bool:
        """Atomically take video ``sid`` (unclaimed, or failed/cancelled earlier); False if
        another task has it or did it."""
        key = f"videos.{sid}"
        doc = _jobs().find_one_and_update(
            {"_id": self.id, "finalized": False,
             "$or": [{key: {"$exists": False}}, {f"{key}.status": {"$in": list(RETRYABLE)}}]},
            {"$set": {key: dict(self.worker, status="running", started_at=_now())}})
        if doc is None:
            return False
        self.mine.add(sid)
        return True

    def settle(self, sid: str, status: str, error: Optional[str] = None) -> None:
        """Record the outcome of a claimed video and take it off the pending list."""
        key = f"videos.{sid}"
        _jobs().update_one({"_id": self.id, f"{key}.pid": self.worker["pid"], f"{key}.host": self.worker["host"]},
                           {"$set": {f"{key}.status": status, f"{key}.error": error, f"{key}.finished_at": _now()},
                            "$pull": {"pending": sid}})
        self.settled.add(sid)

    def finish(self, sample_ids: Iterable[str], status: str, error: Optional[str] = None,
               rows: Optional[dict[str, str]] = None) -> None:
        """Settle this task's videos that are not settled yet (``rows``: sample id -> status),
        then clean up if the job has no pending video left."""
        for sid in sample_ids:
            if sid in self.settled:
                continue
            if sid in self.mine or self.claim(sid):
                row = (rows or {}).get(sid)
                self.settle(sid, row or status, None if row else error)
        job = _jobs().find_one_and_update({"_id": self.id, "pending": {"$size": 0}, "finalized": False},
                                          {"$set": {"finalized": True, "finished_at": _now()}})
        if job is not None:
            dataset = fo.load_dataset(job["dataset"])
            _finalize(dataset, job)


def _finalize(dataset: fo.Dataset, job: dict, force: bool = False) -> None:
    """Drop the job's staging fields (with the frame documents holding nothing else), and the
    output fields it created when they hold no value."""
    if force:
        _jobs().update_one({"_id": job["_id"]}, {"$set": {"finalized": True, "finished_at": _now()}})
    for stage in job.get("stage", {}).values():
        drop_temporary_field(dataset, stage, job.get("created_at"))
    dataset.reload()
    schema = dataset.get_frame_field_schema()
    for field in job.get("created_fields", []):
        if field in schema and dataset.count("frames." + field) == 0:
            dataset.delete_frame_field(field)


def run_task(sample_collection, job_id, sample_ids: list[str], op_id: Any = None, progress=None,
             **propagate_kwargs) -> dict[str, Any]:
    """Run one queued task: propagate ``sample_ids`` of the job's dataset with per-video claims
    and per-video commits (see the module docstring). Returns :func:`deaot_vos.propagate`'s summary."""
    from bson import ObjectId

    from .propagation import PropagationCancelled, propagate

    job = _jobs().find_one({"_id": ObjectId(str(job_id))})
    if job is None:
        raise RuntimeError(f"propagation job {job_id} does not exist (deleted?)")
    if job["finalized"]:
        raise RuntimeError(f"propagation job {job_id} is over (its staging fields are gone); queue a new run")
    handle = JobHandle(job, op_id)
    dataset = fo.load_dataset(job["dataset"])
    dataset.reload()  # a long-lived worker's cached schema may predate the staging fields
    view = dataset.select(sample_ids, ordered=True)
    propagate_kwargs = {k: v for k, v in propagate_kwargs.items() if k != "overwrite"}
    try:
        summary = propagate(view, overwrite=True, progress=progress, job=handle, **propagate_kwargs)
    except BaseException as err:
        cancelled = isinstance(err, (PropagationCancelled, KeyboardInterrupt))
        handle.finish(sample_ids, "cancelled" if cancelled else "failed", f"{type(err).__name__}: {err}")
        raise
    handle.finish(sample_ids, "failed", rows={r["id"]: r.get("status", "failed") for r in summary["samples"]})
    summary["job"] = str(job_id)
    summary["worker"] = handle.worker
    return summary
