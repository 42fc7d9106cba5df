"""The run's tracker: built once per (device, max_long_edge) and reused video after video."""
from __future__ import annotations

from typing import Any, Callable, Optional

import deaot_core

from ..weights import load_model
from .options import PropagationOptions

#: ``factory(choice, device, tracker_options) -> tracker``: how a pool builds its tracker
TrackerFactory = Callable[[Any, str, deaot_core.TrackerOptions], Any]


def build_tracker(choice: Any, device: str, options: deaot_core.TrackerOptions) -> Any:
    """A :class:`deaot_core.Tracker` over ``choice``'s weights loaded on ``device``."""
    return deaot_core.Tracker(load_model(choice, device), device=device, options=options)


class TrackerPool:
    """Holds at most one tracker: ``get(device, max_long_edge)`` returns it when it was built
    for those settings, else drops it and builds a new one with ``factory`` (an out-of-memory
    retry asks for a smaller or CPU one). ``device`` and ``options.max_long_edge`` are the
    settings asked for (:attr:`requested`).

    ``factory`` defaults to :attr:`default_factory` (:func:`build_tracker`); a process that
    cannot pass one (a worker started from a command line) may set ``default_factory``."""

    default_factory: TrackerFactory = staticmethod(build_tracker)

    def __init__(self, choice: Any, options: PropagationOptions, device: str,
                 factory: Optional[TrackerFactory] = None):
        self.choice, self.options, self.device = choice, options, device
        self.factory = factory if factory is not None else type(self).default_factory
        self._trackers: dict[tuple, Any] = {}

    @property
    def requested(self) -> tuple[str, Any]:
        """(device, max_long_edge) as asked for: the first attempt of every video."""
        return self.device, self.options.max_long_edge

    def get(self, device: str, max_long_edge) -> Any:
        key = (device, max_long_edge)
        if key not in self._trackers:
            self._trackers.clear()
            self._trackers[key] = self.factory(self.choice, device,
                                               self.options.tracker_options(max_long_edge=max_long_edge))
        return self._trackers[key]

    def clear(self) -> None:
        self._trackers.clear()
