"""How a run's labels reach the output field(s): staged first, committed once good.

One protocol, :class:`Staging`, two variants:

- :class:`LocalSwap` (a plain :func:`deaot_vos.propagate`): the output fields are claimed
  (:mod:`.journal`), every video is written into a temporary field (a copy of the old output)
  and the temporary field is swapped onto the output at the very end; a failure, cancel or
  crash before that leaves the output as it was (the journal lets the next run finish or undo).
- :class:`JobCommit` (one task of a queued job, :mod:`.jobs`): each video is claimed in the job
  document, written into the job's staging fields and moved onto the output field(s) as soon as
  it is done, restricted to that video's frames; the schema is not changed.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import signal
from typing import Callable, Iterable, Optional, Protocol

import fiftyone as fo
from bson import ObjectId
from fiftyone import ViewField as F

from ..fields import FRAME_DEFAULT_FIELDS
from .durability import RestartWatch
from .job_records import active_stage_fields, refuse_if_active
from .journal import (TMP_SUFFIX, FieldClaim, claim_fields, copy_values, drop_temporary_field, finish_swap,
                      refuse_unowned_temporaries, signals_deferred)

log = logging.getLogger(__name__)

Outputs = list[tuple[str, type]]  # (output field, label type) of a run


Support = Optional[tuple[int, int]]  # a clip's frames (first, last), inclusive; None: the whole video


def _in_support(number: int, support: Support) -> bool:
    return support is None or support[0] <= number <= support[1]


def delete_created_frames(dataset: fo.Dataset, existing: dict[str, set], support: Support = None,
                          staged: Iterable[str] = ()) -> None:
    """Delete the frame documents of samples ``existing`` (sample id -> frame numbers that
    existed before the run) that this run created (within ``support`` when given) and that hold
    nothing but what this run wrote (its ``staged`` fields): a frame another client created or
    wrote meanwhile is kept (as the killed-run recovery, :func:`.journal.drop_temporary_field`)."""
    doomed = []
    for sid, before in existing.items():
        doomed += [doc["_id"] for doc in _created_frames(dataset, sid, before, staged)
                   if _in_support(doc["frame_number"], support)]
    if doomed:
        dataset.delete_frames([str(fid) for fid in doomed])


def _created_frames(dataset: fo.Dataset, sid: str, before: set, staged: Iterable[str]) -> list[dict]:
    """The frame documents of sample ``sid`` absent from ``before`` that a bulk write of this run
    inserted (no ``created_at``) and that hold no value besides the defaults and ``staged``."""
    hidden = {name: 0 for name in staged}  # what this run wrote is not read back
    query = {"_sample_id": ObjectId(sid), "frame_number": {"$nin": sorted(before)}, "created_at": None}
    docs = dataset._frame_collection.find(query, hidden or None)
    return [doc for doc in docs
            if all(value is None or key in FRAME_DEFAULT_FIELDS for key, value in doc.items())]


def _frames_of(dataset: fo.Dataset, sid: str, support: Support):
    """The sample ``sid`` of ``dataset`` with only its frames within ``support`` (all for None)."""
    one = dataset.select(sid)
    if support is None:
        return one
    return one.match_frames((F("frame_number") >= support[0]) & (F("frame_number") <= support[1]), omit_empty=False)


def reset_sample(dataset: fo.Dataset, sid: str, stages: list[str], finals: list[str], existing: set,
                 restore: bool, support: Support = None) -> None:
    """Clear the sample's staged values (a clip's: on its frames ``support`` only, so other clips
    of the video keep theirs); with ``restore``, also delete the frame documents this run created
    for it and copy its previous output values back (a failed sample or clip)."""
    one = _frames_of(dataset, sid, support)
    if restore:
        delete_created_frames(dataset, {sid: existing}, support, staged=stages)
    schema = dataset.get_frame_field_schema()
    for stage, final in zip(stages, finals):
        one.clear_frame_field(stage)
        if restore and final in schema:
            numbers, values = one.values(["frames.frame_number", "frames." + final])
            previous = {n: v for n, v in zip(numbers[0] or [], values[0] or []) if v is not None}
            if previous:
                dataset.set_values("frames." + stage, {sid: previous}, key_field="id")


def commit_sample(dataset: fo.Dataset, sid: str, stages: list[str], finals: list[str]) -> None:
    """Move one sample's staged values onto the output fields, server-side and only on that
    sample's frame documents (other tasks write other samples of the same fields meanwhile);
    its frames without a staged value get no output value."""
    frames = dataset._frame_collection
    oid = ObjectId(sid)
    for stage, final in zip(stages, finals):
        # first the frames without a staged value (none of this run: its output goes), then the move
        frames.update_many({"_sample_id": oid, stage: None, final: {"$ne": None}},
                           {"$set": {final: None, "last_modified_at": datetime.datetime.now(datetime.timezone.utc)},
                            "$unset": {stage: ""}})
        frames.update_many({"_sample_id": oid, stage: {"$ne": None}},
                           [{"$set": {final: "$" + stage, "last_modified_at": "$$NOW"}}, {"$unset": stage}])


class Staging(Protocol):
    """What the run loop asks of a staging variant, in this order: ``open`` (before any check),
    ``prepare`` (once the checks passed, if a video will run), per video ``begin_sample`` ->
    ``clear_sample`` (before each attempt) -> ``sample_done`` or ``sample_failed``, then
    ``finish`` (after the last video) and, always, ``close``. A clip of a clip view is one such
    unit: ``support`` (its frames) restricts what is cleared and restored to them."""

    stage_fields: list[str]
    forced_overwrite: bool  # the output field(s) may exist whatever ``overwrite`` says
    beats: bool  # progress must be polled even without a callback (heartbeats)

    def open(self, stack: contextlib.ExitStack, dataset: fo.Dataset, names: list, keyframes_field) -> None: ...

    def heartbeat(self) -> None: ...

    def prepare(self, dataset: fo.Dataset, outputs: Outputs) -> None: ...

    def begin_sample(self, sid: str, existing: set, support: Support = None) -> bool: ...

    def clear_sample(self, sid: str, support: Support = None) -> None: ...

    def sample_done(self, sid: str, summary: dict, support: Support = None) -> None: ...

    def sample_failed(self, sid: str, error: str, support: Support = None) -> None: ...

    def finish(self, summary: dict, ask: Callable[[float, str], None]) -> None: ...

    def close(self) -> None: ...


class _StagingBase:
    """State both variants share: the dataset, output/stage fields and the units started but
    not settled ((sample id, support) -> frame numbers the sample had before this run wrote)."""

    forced_overwrite = False
    beats = False

    def __init__(self) -> None:
        self.dataset: Optional[fo.Dataset] = None
        self.outputs: Outputs = []
        self.stage_fields: list[str] = []
        self.started: dict[tuple[str, Support], set] = {}

    @property
    def finals(self) -> list[str]:
        return [name for name, _ in self.outputs]

    def created_by_sample(self) -> dict[str, set]:
        """Sample id -> frame numbers it had before the run, for every unit started and not settled."""
        return {sid: existing for (sid, _), existing in self.started.items()}

    def heartbeat(self) -> None:
        pass

    def clear_sample(self, sid: str, support: Support = None) -> None:
        reset_sample(self.dataset, sid, self.stage_fields, self.finals, self.started[(sid, support)], restore=False,
                     support=support)


class LocalSwap(_StagingBase):
    """Claimed output fields, a temporary field per output, one journalled swap at the end."""

    beats = True

    def __init__(self) -> None:
        super().__init__()
        self.claims: dict[str, FieldClaim] = {}
        self.done = 0
        self.committing = False

    def open(self, stack, dataset, names, keyframes_field) -> None:
        """Claim the output fields (one run per field; a dead owner's journal is settled) and
        refuse leftovers no journal or queued job owns."""
        self.dataset = dataset
        self.claims = stack.enter_context(claim_fields(dataset, names))
        refuse_if_active(dataset, names)  # a queued job's staging field is not a leftover
        refuse_unowned_temporaries(dataset, list(names) + [keyframes_field], active_stage_fields(dataset))

    def heartbeat(self) -> None:
        for claim in self.claims.values():
            claim.beat()

    def prepare(self, dataset, outputs) -> None:
        self.dataset, self.outputs = dataset, outputs
        self.stage_fields = [self._prepare_tmp(self.claims[final], kind) for final, kind in outputs]

    def _prepare_tmp(self, claim: FieldClaim, kind) -> str:
        """The run's temporary field, journalled before it exists: a copy of the output field
        when it exists (samples that are not processed, skipped or fail keep their values),
        else a new empty field."""
        final, tmp = claim.field, claim.field + TMP_SUFFIX
        claim.set_phase("staging", tmp=tmp, staged_at=datetime.datetime.now(datetime.timezone.utc))
        claim.tmp = tmp
        # declared first, then filled server-side: no document ever holds an undeclared field
        self.dataset.add_frame_field(tmp, fo.EmbeddedDocumentField, embedded_doc_type=kind)
        if final in self.dataset.get_frame_field_schema():
            copy_values(self.dataset, final, tmp)
        return tmp

    def begin_sample(self, sid, existing, support=None) -> bool:
        self.started[(sid, support)] = existing
        return True

    def sample_done(self, sid, summary, support=None) -> None:
        self.done += 1

    def sample_failed(self, sid, error, support=None) -> None:
        reset_sample(self.dataset, sid, self.stage_fields, self.finals, self.started.pop((sid, support)),
                     restore=True, support=support)

    def finish(self, summary, ask) -> None:
        """Swap the temporary fields onto the outputs (if a video was done), with SIGINT and
        SIGTERM deferred until the swap is over."""
        if not self.done:
            return
        ask(1.0, "writing the output field(s)")  # a cancel up to here still writes nothing
        deferred: list[int] = []
        self.committing = True
        try:
            with signals_deferred(deferred):
                watch = RestartWatch(f"the final swap of frame field(s) {', '.join(self.finals)}")
                for final, kind in self.outputs:
                    self._swap(final, kind)
                    summary["written"] = True
                watch.check()
        except BaseException as err:
            err.add_note(f"the final swap of frame field(s) {', '.join(self.finals)} of dataset "
                         f"'{self.dataset.name}' was interrupted: nothing is lost (the complete new output is in "
                         f"the temporary field); the next propagation into the same field finishes the swap")
            raise
        self.committing = False
        if deferred:
            names = ", ".join(signal.Signals(s).name for s in deferred)
            summary["signals_during_swap"] = names
            log.warning("%s arrived while the output was being swapped in: the swap was finished, '%s' holds "
                        "the new output", names, "', '".join(self.finals))

    def _swap(self, final: str, kind) -> None:
        claim = self.claims[final]
        claim.set_phase("commit", step=None)
        finish_swap(self.dataset, lambda step: claim.set_phase("commit", step=step), final, claim.tmp, kind)
        claim.set_phase("claimed", tmp=None)
        claim.tmp = None

    def close(self) -> None:
        """Not swapped: nothing of this run may remain (its frame documents, its temporary
        fields). An interrupted swap is left to the journal."""
        if self.committing:
            return
        created = self.created_by_sample()
        for claim in self.claims.values():
            if claim.tmp is not None:
                self._roll_back(claim, created)
                created = {}

    def _roll_back(self, claim: FieldClaim, created: dict[str, set]) -> None:
        """Undo ``claim``'s staging: the frame documents the run created, then its temporary
        field. Best effort: on failure the journal lets the next run finish the undo."""
        try:
            self.dataset.reload()
            if created:
                delete_created_frames(self.dataset, created, staged=self.stage_fields)
            drop_temporary_field(self.dataset, claim.tmp)
            claim.set_phase("claimed", tmp=None)
            claim.tmp = None
        except Exception as err:
            log.warning("could not remove the temporary field '%s' (the next run into '%s' will): %s", claim.tmp,
                        claim.field, err)


class JobCommit(_StagingBase):
    """One task of a queued job (``job``: a :class:`.job_records.JobHandle`): per-video claims
    and per-video commits into the output fields the job declared."""

    forced_overwrite = True

    def __init__(self, job) -> None:
        super().__init__()
        self.job = job

    def open(self, stack, dataset, names, keyframes_field) -> None:
        self.dataset = dataset  # the job owns the fields: nothing to claim

    def prepare(self, dataset, outputs) -> None:
        self.dataset, self.outputs = dataset, outputs
        self.stage_fields = [self.job.stage_fields[final] for final, _ in outputs]

    def begin_sample(self, sid, existing, support=None) -> bool:
        if support is not None:  # a job's tasks are whole videos (queue_propagation takes no clip view)
            raise ValueError(f"a queued propagation task runs whole videos, not a clip (frames {support[0]}-"
                             f"{support[1]} of sample {sid}): run a clip view with deaot_vos.propagate")
        if not self.job.claim(sid):
            return False
        self.started[(sid, None)] = existing
        return True

    def sample_done(self, sid, summary, support=None) -> None:
        watch = RestartWatch(f"the commit of sample {sid}")
        commit_sample(self.dataset, sid, self.stage_fields, self.finals)
        self.started.pop((sid, None), None)
        summary["written"] = True
        self.job.settle(sid, "done")
        watch.check()

    def sample_failed(self, sid, error, support=None) -> None:
        """The output field was never touched: drop what was staged and the frames created."""
        existing = self.started.pop((sid, None))
        reset_sample(self.dataset, sid, self.stage_fields, self.finals, existing, restore=False)
        delete_created_frames(self.dataset, {sid: existing}, staged=self.stage_fields)
        self.job.settle(sid, "failed", error)

    def finish(self, summary, ask) -> None:
        pass

    def close(self) -> None:
        """Videos started but not committed: remove their staged values and new frames."""
        for sid, existing in self.created_by_sample().items():
            try:
                reset_sample(self.dataset, sid, self.stage_fields, self.finals, existing, restore=False)
                delete_created_frames(self.dataset, {sid: existing}, staged=self.stage_fields)
            except Exception as err:  # best effort: the job's clean-up removes the rest
                log.warning("could not remove the staged values of sample %s: %s", sid, err)
