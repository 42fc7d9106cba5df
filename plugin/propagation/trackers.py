"""The run's tracker: built once per (device, max_long_edge) and reused video after video."""
from __future__ import annotations

from typing import Any

import deaot_core

from ..weights import load_model
from .options import PropagationOptions


class TrackerPool:
    """Holds at most one :class:`deaot_core.Tracker`: ``get(device, max_long_edge)`` returns
    it when it was built for those settings, else drops it and builds a new one (an
    out-of-memory retry asks for a smaller or CPU one). ``device`` and ``options.max_long_edge``
    are the settings asked for (:attr:`requested`)."""

    def __init__(self, choice: Any, options: PropagationOptions, device: str):
        self.choice, self.options, self.device = choice, options, device
        self._trackers: dict[tuple, Any] = {}

    @property
    def requested(self) -> tuple[str, Any]:
        """(device, max_long_edge) as asked for: the first attempt of every video."""
        return self.device, self.options.max_long_edge

    def get(self, device: str, max_long_edge) -> Any:
        key = (device, max_long_edge)
        if key not in self._trackers:
            self._trackers.clear()
            self._trackers[key] = deaot_core.Tracker(load_model(self.choice, device), device=device,
                                                     options=self.options.tracker_options(max_long_edge=max_long_edge))
        return self._trackers[key]

    def clear(self) -> None:
        self._trackers.clear()
