"""Cancelling a propagation: the progress callback's answer, SIGTERM/SIGINT, or a delegated
operation marked failed from outside. A cancelled run writes nothing."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from typing import Callable, Iterator, Optional

from .journal import note_deferred_signal, swap_in_progress

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], Optional[bool]]


class PropagationCancelled(Exception):
    """Raised when the progress callback asked to stop; nothing was written."""


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
