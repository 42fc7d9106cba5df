"""Acknowledged is not yet stored: with FiftyOne's default write concern a mongod answers a write
before its journal holds it, so a mongod killed within its journal interval (100 ms by default)
comes back without writes it had acknowledged, and a run that rode out the outage would report
success over missing frames.

The remedy costs one journaled write per bulk write: a write with ``j=True`` is acknowledged only
once the journal holds it and everything that server process accepted before it. Comparing the
server's process id (``hello``'s ``topologyVersion.processId``, new at every mongod start) before
the write and after that barrier tells whether the write can have been forgotten. One server is
assumed (FiftyOne's own mongod or a standalone one)."""
from __future__ import annotations

import logging
from typing import Callable, Optional

import fiftyone.core.odm.database as fodb
from pymongo import WriteConcern

log = logging.getLogger(__name__)

BARRIER_COLLECTION = "deaot_vos_barrier"
ATTEMPTS = 5


class DatabaseRestartedError(RuntimeError):
    """The database restarted while writes it had acknowledged were not yet in its journal."""


def server_process_id():
    """The id of the running mongod process (changes at every restart), None if it gives none."""
    reply = fodb.get_db_conn().command("hello")
    return (reply.get("topologyVersion") or {}).get("processId")


def journal_barrier() -> None:
    """Return once the server's journal holds every write it acknowledged before this call."""
    barrier = fodb.get_db_conn()[BARRIER_COLLECTION].with_options(write_concern=WriteConcern(j=True))
    barrier.update_one({"_id": "barrier"}, {"$inc": {"n": 1}}, upsert=True)


class RestartWatch:
    """Watches the server from its creation on: :meth:`restarted` makes everything written since
    durable and tells whether the server restarted meanwhile (so some of it may be lost);
    :meth:`check` raises :class:`DatabaseRestartedError` (naming ``what``) instead, for writes
    that cannot simply be repeated, so a lost write is an error rather than a silent success."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.process: Optional[object] = server_process_id()

    def restarted(self) -> bool:
        journal_barrier()
        return self.process is not None and server_process_id() != self.process

    def check(self) -> None:
        if self.restarted():
            raise DatabaseRestartedError(
                f"the database restarted during {self.what}: some of its writes may be lost; run the "
                f"same propagation again to redo them")


def write_durably(write: Callable[[], None], what: str) -> None:
    """Run the idempotent ``write`` until it is in the journal of a server that did not restart
    after accepting it; a restart in between repeats it. ``what`` names it in messages."""
    for _ in range(ATTEMPTS):
        watch = RestartWatch(what)
        write()
        if not watch.restarted():
            return
        log.warning("the database restarted while %s was being stored: writing it again", what)
    raise DatabaseRestartedError(f"the database restarted {ATTEMPTS} times while {what} was being stored")
