"""The job documents of queued propagations (collection ``deaot_vos_jobs``): per-video claims
and settlement (:class:`JobHandle`), the jobs that guard output fields, and the clean-up when a
job is over. See :mod:`deaot_vos.propagation.jobs` for how jobs are queued and run."""
from __future__ import annotations

import datetime
import logging
import os
import socket
from typing import Any, Iterable, Optional

import fiftyone as fo

from .journal import describe_owner, drop_temporary_field, owner_alive, this_owner

log = logging.getLogger(__name__)

JOBS_COLLECTION = "deaot_vos_jobs"
ACTIVE_STATES = ("queued", "scheduled", "running", "processing")
RETRYABLE = ("failed", "cancelled")


def jobs_collection():
    import fiftyone.core.odm.database as fodb

    return fodb.get_db_conn()[JOBS_COLLECTION]


def now() -> datetime.datetime:
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
    for job in jobs_collection().find({"dataset_id": dataset._doc.id, "finalized": False,
                             "fields": {"$in": fields}}):
        fail_dead_claims(job)
        if _ops_active(job.get("ops", [])):
            raise RuntimeError(f"a queued propagation (job {job['_id']}) into frame field(s) "
                               f"{', '.join(job['fields'])} of dataset '{dataset.name}' is still queued or running; "
                               f"wait for it, or mark its operations failed (fiftyone delegated fail ...)")
        log.warning("closing propagation job %s: none of its operations is queued or running", job["_id"])
        job = jobs_collection().find_one({"_id": job["_id"]}) or job
        finalize_job(dataset, job, force=True)


def active_stage_fields(dataset: fo.Dataset) -> set[str]:
    """The staging fields of ``dataset``'s propagation jobs that are not finalized (theirs)."""
    return {name for job in jobs_collection().find({"dataset_id": dataset._doc.id, "finalized": False})
            for name in job.get("stage", {}).values()}


def job_status(job_id) -> Optional[dict[str, Any]]:
    """The job document (``videos``: sample id -> status, worker host/pid, operation id)."""
    from bson import ObjectId

    return jobs_collection().find_one({"_id": ObjectId(str(job_id))})


class JobHandle:
    """A task's view of a job: atomic per-video claims, settlement, and the final clean-up."""

    def __init__(self, job: dict, op_id: Any = None):
        self.job = job
        self.id = job["_id"]
        self.stage_fields: dict[str, str] = dict(job["stage"])
        self.worker = dict(host=socket.gethostname(), pid=os.getpid(), op=str(op_id) if op_id is not None else None,
                           proc_start=this_owner()["proc_start"])
        self.mine: set[str] = set()
        self.settled: set[str] = set()

    def claim(self, sid: str) -> bool:
        """Atomically take video ``sid`` (unclaimed, or failed/cancelled earlier); False if
        another task has it or did it."""
        key = f"videos.{sid}"
        doc = jobs_collection().find_one_and_update(
            {"_id": self.id, "finalized": False,
             "$or": [{key: {"$exists": False}}, {f"{key}.status": {"$in": list(RETRYABLE)}}]},
            {"$set": {key: dict(self.worker, status="running", started_at=now())}})
        if doc is None:
            return False
        self.mine.add(sid)
        return True

    def settle(self, sid: str, status: str, error: Optional[str] = None) -> None:
        """Record the outcome of a claimed video and take it off the pending list."""
        key = f"videos.{sid}"
        jobs_collection().update_one({"_id": self.id, f"{key}.pid": self.worker["pid"], f"{key}.host": self.worker["host"]},
                           {"$set": {f"{key}.status": status, f"{key}.error": error, f"{key}.finished_at": now()},
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
        fail_dead_claims(self.job)
        job = jobs_collection().find_one_and_update({"_id": self.id, "pending": {"$size": 0}, "finalized": False},
                                          {"$set": {"finalized": True, "finished_at": now()}})
        if job is not None:
            dataset = fo.load_dataset(job["dataset"])
            finalize_job(dataset, job)


def fail_dead_claims(job: dict) -> None:
    """Settle as failed the videos of ``job`` still marked running by a worker process of this
    host that is gone (SIGKILLed, out of memory), and mark its delegated operation failed, so
    the job can close and the failure shows in ``fiftyone delegated list``. Its staged values
    never reached the output; the job's clean-up removes them."""
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionResult

    current = jobs_collection().find_one({"_id": job["_id"]}) or {}
    for sid, claim in (current.get("videos") or {}).items():
        if claim.get("status") != "running" or claim.get("host") != socket.gethostname() or owner_alive(claim):
            continue
        error = f"the worker ({describe_owner(claim)}) died while propagating sample {sid}; nothing was written"
        done = jobs_collection().find_one_and_update(
            {"_id": job["_id"], f"videos.{sid}.status": "running", f"videos.{sid}.pid": claim.get("pid")},
            {"$set": {f"videos.{sid}.status": "failed", f"videos.{sid}.error": error,
                      f"videos.{sid}.finished_at": now()}, "$pull": {"pending": sid}})
        if done is None or not claim.get("op"):
            continue
        log.warning("%s", error)
        try:
            service = DelegatedOperationService()
            op = service.get(ObjectId(claim["op"]))
            if str(op.run_state) in ACTIVE_STATES:
                service.set_failed(op.id, result=ExecutionResult(error=error))
        except Exception as err:  # best effort: the video is settled either way
            log.warning("could not mark operation %s failed: %s", claim["op"], err)


def finalize_job(dataset: fo.Dataset, job: dict, force: bool = False) -> None:
    """Drop the job's staging fields (with the frame documents holding nothing else), and the
    output fields it created when they hold no value."""
    if force:
        jobs_collection().update_one({"_id": job["_id"]}, {"$set": {"finalized": True, "finished_at": now()}})
    for stage in job.get("stage", {}).values():
        drop_temporary_field(dataset, stage, job.get("created_at"))
    dataset.reload()
    schema = dataset.get_frame_field_schema()
    for field in job.get("created_fields", []):
        if field in schema and dataset.count("frames." + field) == 0:
            dataset.delete_frame_field(field)
