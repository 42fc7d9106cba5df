"""Reading label fields that a propagation in another process may replace meanwhile.

A propagation stages its values in a temporary field and replaces its output field only at the
end, in a short swap (:mod:`deaot_vos.propagation.journal`), which declares the output field anew.
A reader that reads video after video (an evaluation, an export) could read some videos before a
swap and some after it: a mixture of two outputs, reported as success. :func:`read_consistently`
compares the fields' declarations before and after the whole read, waits while a swap into one of
them is in progress, and reads again when one was replaced, so every result is one version of
each field for every video.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Sequence, TypeVar

log = logging.getLogger(__name__)

ATTEMPTS = 3
SWAP_WAIT_SECONDS = 60.0  # a swap is a few server-side writes; a journal stuck longer is a dead run's
Result = TypeVar("Result")


class FieldChangedError(RuntimeError):
    """The fields read kept being replaced by propagations, or a swap into one did not finish."""


def _declared_at(dataset, field: str):
    """When the frame field was declared, from the database (other processes' swaps included);
    None when it is not declared."""
    import fiftyone.core.odm.database as fodb

    doc = fodb.get_db_conn().datasets.find_one({"_id": dataset._doc.id}, {"frame_fields": 1}) or {}
    for declared in doc.get("frame_fields") or []:
        if declared.get("name") == field:
            return declared.get("created_at"), declared.get("embedded_doc_type")
    return None


def _version(dataset, fields: Sequence[str], deadline: float) -> tuple:
    """The fields' declarations, once no swap into one of them is in progress."""
    from .propagation.journal import claim_for, describe_owner, this_owner

    me = {key: this_owner()[key] for key in ("host", "pid")}
    while True:
        # this process's own commit (an evaluation scoring the label maps it is committing) is no swap
        # to wait for: it cannot finish while we wait
        swapping = [(field, claim) for field in fields
                    if (claim := claim_for(dataset, field)) is not None and claim.get("phase") == "commit"
                    and {key: (claim.get("owner") or {}).get(key) for key in me} != me]
        if not swapping:
            return tuple(_declared_at(dataset, field) for field in fields)
        if time.monotonic() > deadline:
            field, claim = swapping[0]
            raise FieldChangedError(
                f"frame field '{field}' of dataset '{dataset.name}' is being replaced by a propagation "
                f"({describe_owner(claim.get('owner') or {})}) whose swap has not finished in {SWAP_WAIT_SECONDS:.0f} "
                f"s; if that run is gone, the next propagation into '{field}' finishes its swap. Try again then")
        time.sleep(0.2)


def read_consistently(dataset, fields: Sequence[str], read: Callable[[], Result]) -> Result:
    """``read()``'s result, from a read during which no propagation replaced any of the frame
    ``fields`` of ``dataset`` (read again, up to :data:`ATTEMPTS` times, when one did). Raises
    :class:`FieldChangedError` when they keep changing or a swap does not finish."""
    fields = list(dict.fromkeys(fields))
    deadline = time.monotonic() + SWAP_WAIT_SECONDS
    for attempt in range(1, ATTEMPTS + 1):
        before = _version(dataset, fields, deadline)
        result = read()
        if _version(dataset, fields, deadline) == before:
            return result
        log.warning("a propagation replaced frame field(s) %s of dataset '%s' while they were read: reading again "
                    "(%d/%d)", fields, dataset.name, attempt, ATTEMPTS)
    raise FieldChangedError(f"frame field(s) {fields} of dataset '{dataset.name}' were replaced by propagations during "
                            f"each of {ATTEMPTS} reads; try again when the propagations into them finished")
