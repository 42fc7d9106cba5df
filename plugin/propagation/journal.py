"""Output-field claims and the swap journal: one run at a time writes a frame field, and a run
killed at any instruction is finished or undone exactly by the next one.

Every output frame field a propagation writes has one *run document* in the database
collection ``deaot_vos_runs`` while the run lasts: ``_id`` is ``"<dataset id>:<field>"``, so
taking it is one atomic insert and a second run gets a duplicate-key error. The document names
the owner (host, pid, process start time, heartbeat) and is the run's journal:

``phase = "claimed"``
    nothing of this run is in the dataset yet.
``phase = "staging"``
    the run made the temporary field ``tmp`` (``<field>_deaot_tmp``) and writes into it; frame
    documents it creates carry no ``created_at``. Undo: delete those frame documents and ``tmp``.
``phase = "commit"``
    ``tmp`` is complete (a copy of the old output with the propagated videos replaced). Finish:
    delete the old output field while ``tmp`` is still declared, then rename ``tmp`` onto it.
    Every step of FiftyOne's delete and rename (documents first, then the dataset's schema) can
    be repeated, so the next run finishes the swap from any instant.

A claim whose owner is gone (same host and its pid no longer runs that process, or no
heartbeat for ``DEAOT_CLAIM_STALE_SECONDS``, default 600, from another host) is taken over by
one atomic update: the new owner first completes or undoes the old journal, then runs.
A temporary field is only ever deleted when a journal (or a queued job) says it is ours.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any, Iterable, Iterator, Optional

import fiftyone as fo

from ..fields import FRAME_DEFAULT_FIELDS, RESERVED_SUFFIXES

log = logging.getLogger(__name__)

RUNS_COLLECTION = "deaot_vos_runs"
TMP_SUFFIX, LEGACY_OLD_SUFFIX = RESERVED_SUFFIXES  # the run's staging field; the backup name before the journal
HEARTBEAT_SECONDS = 30.0


class FieldBusyError(RuntimeError):
    """Another live run owns the output field (``.field``, ``.owner`` name them)."""

    def __init__(self, message: str, field: str, owner: dict):
        super().__init__(message)
        self.field = field
        self.owner = owner


def stale_after_seconds() -> float:
    return float(os.environ.get("DEAOT_CLAIM_STALE_SECONDS", "600"))


def _runs():
    import fiftyone.core.odm.database as fodb

    return fodb.get_db_conn()[RUNS_COLLECTION]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _utc(value: datetime.datetime) -> datetime.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.timezone.utc)


def _process_start(pid: int) -> Optional[str]:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def this_owner() -> dict[str, Any]:
    now = _now()
    return dict(host=socket.gethostname(), pid=os.getpid(), proc_start=_process_start(os.getpid()),
                started_at=now, heartbeat_at=now)


def owner_alive(owner: dict) -> bool:
    """Whether the process that took a claim still runs (on another host: a recent heartbeat)."""
    if owner.get("gone") or int(owner.get("pid") or 0) <= 0:
        return False
    if owner.get("host") == socket.gethostname():
        pid = int(owner.get("pid", -1))
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        except (OSError, ValueError):
            return False
        if _is_zombie(pid):  # killed, not yet reaped by its parent
            return False
        start = owner.get("proc_start")
        return start is None or _process_start(pid) in (None, start)
    beat = owner.get("heartbeat_at")
    return beat is not None and (_now() - _utc(beat)).total_seconds() < stale_after_seconds()


def describe_owner(owner: dict) -> str:
    started = owner.get("started_at")
    when = f", started {_utc(started):%Y-%m-%d %H:%M:%S} UTC" if started else ""
    return f"pid {owner.get('pid')} on host {owner.get('host')}{when}"


# -- claims ------------------------------------------------------------------------------------


class FieldClaim:
    """This process's claim of one output frame field of a dataset, and the journal of its run."""

    def __init__(self, dataset: fo.Dataset, field: str, run: str):
        self.dataset = dataset
        self.field = field
        self.run = run
        self.key = f"{dataset._doc.id}:{field}"
        self.tmp: Optional[str] = None
        self._last_beat = time.monotonic()

    def _update(self, values: dict) -> None:
        result = _runs().update_one({"_id": self.key, "run": self.run}, {"$set": values})
        if result.matched_count != 1:
            raise RuntimeError(f"the claim of frame field '{self.field}' of dataset '{self.dataset.name}' was taken "
                               f"over by another run (this run was presumed dead); stopping without writing")

    def set_phase(self, phase: str, **values) -> None:
        self._update(dict(values, phase=phase, **{"owner.heartbeat_at": _now()}))

    def beat(self) -> None:
        """Refresh the heartbeat (at most every ``HEARTBEAT_SECONDS``)."""
        if time.monotonic() - self._last_beat >= HEARTBEAT_SECONDS:
            self._last_beat = time.monotonic()
            self._update({"owner.heartbeat_at": _now()})

    def release(self) -> None:
        _runs().delete_one({"_id": self.key, "run": self.run})


def _take(dataset: fo.Dataset, field: str, run: str) -> FieldClaim:
    from pymongo.errors import DuplicateKeyError
    from pymongo import ReturnDocument

    claim = FieldClaim(dataset, field, run)
    doc = dict(_id=claim.key, run=run, dataset_id=dataset._doc.id, dataset=dataset.name, field=field,
               owner=this_owner(), phase="claimed", tmp=None)
    for _ in range(3):
        try:
            _runs().insert_one(doc)
            return claim
        except DuplicateKeyError:
            pass
        current = _runs().find_one({"_id": claim.key})
        if current is None:
            continue  # released meanwhile: try again
        if owner_alive(current.get("owner", {})):
            raise FieldBusyError(
                f"frame field '{field}' of dataset '{dataset.name}' is being written by another propagation "
                f"({describe_owner(current.get('owner', {}))}); wait for it to finish, stop it, or choose "
                f"another output field", field, current.get("owner", {}))
        # a dead owner: take its claim over atomically (one taker wins), then settle its journal
        taken = _runs().find_one_and_update(
            {"_id": claim.key, "run": current["run"]},
            {"$set": dict(run=run, owner=doc["owner"], recovering_from=current.get("run"))},
            return_document=ReturnDocument.BEFORE)
        if taken is None:
            continue  # someone else took it first: look again
        log.warning("frame field '%s' of dataset '%s' was claimed by a run that is gone (%s, phase %s): "
                    "settling its journal", field, dataset.name, describe_owner(taken.get("owner", {})),
                    taken.get("phase"))
        settle(dataset, taken)
        claim.set_phase("claimed", tmp=None, recovering_from=None, undo_commit=None, evaluation=None)
        return claim
    raise FieldBusyError(f"frame field '{field}' of dataset '{dataset.name}' is contended by other runs; try again",
                         field, {})


@contextlib.contextmanager
def claim_fields(dataset: fo.Dataset, fields: Iterable[Optional[str]]) -> Iterator[dict[str, FieldClaim]]:
    """Claim every field (in order) for the block; ``FieldBusyError`` if a live run owns one.
    Released at the end unless a journal still needs the next run (a swap that failed midway)."""
    run = uuid.uuid4().hex
    claims: dict[str, FieldClaim] = {}
    try:
        for field in fields:
            if field:
                claims[field] = _take(dataset, field, run)
        yield claims
    finally:
        for claim in claims.values():
            try:
                doc = _runs().find_one({"_id": claim.key, "run": run}) or {}
                if doc.get("phase") == "commit":
                    # the swap did not finish (e.g. the database went away): keep the journal so
                    # that the next run finishes it; mark the owner gone
                    _runs().update_one({"_id": claim.key, "run": run}, {"$set": {"owner.gone": True}})
                    continue
                claim.release()
            except Exception as err:  # the database is gone: the next run sees a dead owner
                log.warning("could not release the claim of frame field '%s': %s", claim.field, err)


def claim_for(dataset: fo.Dataset, field: str) -> Optional[dict]:
    return _runs().find_one({"_id": f"{dataset._doc.id}:{field}"})


def refuse_unowned_temporaries(dataset: fo.Dataset, fields: Iterable[Optional[str]], owned: Iterable[str] = ()) -> None:
    """Raise ``ValueError`` if a frame field with a reserved name of ``fields`` (``<field>_deaot_tmp``,
    ``<field>_deaot_old``) exists that no journal owns (``owned``: those a queued job owns): it
    is the user's (or an older version's leftover), and is never deleted or renamed here."""
    owned = set(owned) | {d.get("tmp") for d in _runs().find({"dataset_id": dataset._doc.id}) if d.get("tmp")}
    dataset.reload()
    schema = dataset.get_frame_field_schema() or {}
    for field in fields:
        if not field:
            continue
        for suffix in RESERVED_SUFFIXES:
            name = field + suffix
            if name in schema and name not in owned:
                hint = (f"; if it is the backup of a run of an older version of this plugin that was killed, "
                        f"rename it back: dataset.rename_frame_field({name!r}, {field!r})"
                        if suffix == LEGACY_OLD_SUFFIX else "")
                raise ValueError(f"dataset '{dataset.name}' has a frame field '{name}' that no run of this plugin "
                                 f"owns: names ending in {' or '.join(RESERVED_SUFFIXES)} are reserved for the "
                                 f"plugin's temporary fields; rename it (it was left untouched){hint}")


# -- the phases' undo / finish -----------------------------------------------------------------


def drop_temporary_field(dataset: fo.Dataset, tmp: str, since: Optional[datetime.datetime] = None) -> None:
    """Delete the temporary field ``tmp`` with the frame documents the run that made it created:
    those set_values inserted (no ``created_at``), touched since ``since`` (or holding ``tmp``),
    and holding no other field. Repeatable."""
    from fiftyone import ViewField as F

    dataset.reload()
    schema = dataset.get_frame_field_schema() or {}
    if tmp not in schema:
        # a kill inside FiftyOne's clone (values copied, schema not saved yet) leaves undeclared
        # values, which stop samples from loading: the journal says the name is ours
        dataset._frame_collection.update_many({tmp: {"$exists": True}}, {"$unset": {tmp: ""}})
        return
    others = [n for n in schema if n not in FRAME_DEFAULT_FIELDS and n != tmp]
    # set_values inserts new frames bare and writes their values in a second bulk write: a run
    # killed in between leaves frames without the value, touched after the field was made
    touched = F(tmp).exists()
    since = since or schema[tmp].created_at
    if since is not None:
        touched = touched | (F("last_modified_at") >= since)
    only_tmp = touched & ~F("created_at").exists()
    for name in others:
        only_tmp = only_tmp & ~F(name).exists()
    created = dataset.match_frames(only_tmp).values("frames.id", unwind=True)
    if created:
        log.warning("deleting %s frame documents created by the run of '%s'", len(created), tmp)
        dataset.delete_frames(created)
    dataset.delete_frame_field(tmp)


SWAP_STEPS = ("delete_old", "declare", "copy", "drop_tmp")


def copy_values(dataset: fo.Dataset, source: str, target: str) -> None:
    """Server-side copy of frame field ``source`` onto the declared ``target`` (repeatable)."""
    dataset._frame_collection.update_many(
        {source: {"$exists": True}}, [{"$set": {target: "$" + source, "last_modified_at": "$$NOW"}}])


def finish_swap(dataset: fo.Dataset, claim_doc_update, field: str, tmp: str, kind=None, start: str = SWAP_STEPS[0]) -> None:
    """Put the complete temporary field ``tmp`` in place of ``field``, from step ``start`` on.

    The steps keep every frame document loadable at every instant (a document never holds an
    undeclared field) and each can be repeated after a crash: delete the old field (FiftyOne
    unsets the values, then drops it from the schema), declare it anew, copy ``tmp`` onto it,
    delete ``tmp``. ``claim_doc_update(step)`` records each step in the journal before it runs.
    """
    dataset.reload()
    for step in SWAP_STEPS[SWAP_STEPS.index(start):]:
        claim_doc_update(step)
        schema = dataset.get_frame_field_schema() or {}
        if step == "delete_old" and field in schema:
            dataset.delete_frame_field(field)  # tmp holds every value to keep
        elif step == "declare" and field not in schema:
            kind = kind or getattr(schema.get(tmp), "document_type", None) or fo.Detections
            dataset.add_frame_field(field, fo.EmbeddedDocumentField, embedded_doc_type=kind)
        elif step == "copy":
            copy_values(dataset, tmp, field)
        elif step == "drop_tmp" and tmp in schema:
            dataset.delete_frame_field(tmp)
        dataset.reload()


def settle(dataset: fo.Dataset, doc: dict) -> None:
    """Complete or undo what the journal ``doc`` of a run that is gone says it was doing."""
    phase, tmp, field = doc.get("phase"), doc.get("tmp"), doc["field"]
    if not tmp:
        return
    if phase == "commit" and doc.get("undo_commit"):
        undo_commit(dataset, doc)
    elif phase == "commit":
        log.warning("finishing the interrupted swap of '%s' into '%s' (from step %s)", tmp, field,
                    doc.get("step") or SWAP_STEPS[0])
        key = doc["_id"]
        finish_swap(dataset, lambda step: _runs().update_one({"_id": key}, {"$set": {"step": step}}), field, tmp,
                    start=doc.get("step") or SWAP_STEPS[0])
    elif phase == "staging":
        log.warning("removing the temporary field '%s' of an interrupted run", tmp)
        drop_temporary_field(dataset, tmp, doc.get("staged_at"))


def undo_commit(dataset: fo.Dataset, doc: dict) -> None:
    """Undo the interrupted commit of a run whose journal says ``undo_commit`` (an evaluation's
    label maps, :mod:`deaot_vos.segmentation_run`: without its evaluation run they mean nothing):
    delete that run (``evaluation``), the field being replaced, its mask targets and ``tmp``."""
    field, tmp, key = doc["field"], doc["tmp"], doc.get("evaluation")
    log.warning("undoing the interrupted commit of '%s' into '%s'%s", tmp, field,
                f" (evaluation '{key}')" if key else "")
    dataset.reload()
    if key and key in dataset.list_evaluations():
        dataset.delete_evaluation(key)
    schema = dataset.get_frame_field_schema() or {}
    dataset.delete_frame_fields([name for name in (field, tmp) if name in schema], error_level=1)
    targets = dict(dataset.mask_targets or {})
    if targets.pop("frames." + field, None) is not None:
        dataset.mask_targets = targets
        dataset.save()


# -- signals during the swap -------------------------------------------------------------------

_SWAP = threading.local()


def swap_in_progress() -> bool:
    return bool(getattr(_SWAP, "active", False))


@contextlib.contextmanager
def signals_deferred(received: list[int]) -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block is over (the swap must not stop halfway); each one
    that arrives is appended to ``received`` and logged. A handler installed by
    :func:`deaot_vos.propagation.cancel_on_signals` sees ``swap_in_progress()`` and defers itself."""
    _SWAP.active, _SWAP.received = True, received
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(sig)
            if getattr(current, "defers_during_swap", False):
                continue
            try:
                previous[sig] = signal.signal(sig, _deferring_handler)
            except (ValueError, OSError):  # pragma: no cover
                pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _SWAP.active = False


def note_deferred_signal(signum: int) -> None:
    getattr(_SWAP, "received", []).append(signum)
    log.warning("signal %s during the final swap of the output field: finishing the swap first (a few database "
                "writes); the new output will be complete", signum)


def _deferring_handler(signum, frame):
    note_deferred_signal(signum)
