"""One scripted stand-in for ``deaot_core.Tracker``, injected through ``TrackerPool``'s factory.

:class:`ScriptedTracker` "segments" frames by the colours ``conftest.write_video`` draws (red
pixels are object 1, green ones object 2; a given mask wins), so a run's labels are known
without a network. A :class:`Script` is the factory (``TrackerPool(..., factory=script)``,
``propagate(..., tracker_factory=script)``, ``DeAOTVideoModel(..., tracker_factory=script)``)
and the script: it logs every step (``steps``: (device, max_long_edge, frame shape)) and calls
``fail(tracker, frame)`` before each, which may return an exception to raise (or sleep, or
touch a file: a worker process's crash point).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np


def colour_labels(frame: np.ndarray) -> np.ndarray:
    """Object 1 where the frame is red, 2 where it is green, 0 elsewhere."""
    f = frame.astype(int)
    label = np.zeros(frame.shape[:2], np.int64)
    label[(f[..., 0] > 150) & (f[..., 1] < 120)] = 1
    label[(f[..., 1] > 150) & (f[..., 0] < 120)] = 2
    return label


class ScriptedTracker:
    """The tracker a :class:`Script` builds: ``step`` returns per-object probabilities of the
    colour segmentation (objects beyond those given so far are dropped), like
    ``deaot_core.Tracker.step``."""

    def __init__(self, script: "Script", device: str = "cpu", options: Any = None):
        self.script, self.device = script, str(device)
        self.options = options
        self.max_long_edge = getattr(options, "max_long_edge", None)
        self.reset()

    def reset(self) -> None:
        self._label, self.num_objects, self.local_steps = None, 0, 0

    @property
    def label(self):
        return self._label

    def step(self, frame, mask=None, objects=None):
        import torch

        self.local_steps += 1
        self.script.steps.append((self.device, self.max_long_edge, frame.shape[:2]))
        error = self.script.fail(self, frame) if self.script.fail else None
        if error is not None:
            raise error
        label = colour_labels(frame)
        if mask is not None:
            mask = np.asarray(mask)
            label = np.where(mask > 0, mask, label)
            self.num_objects = max(self.num_objects, int(mask.max()))
        label[label > self.num_objects] = 0
        self._label = label
        return torch.from_numpy(np.stack([label == k for k in range(self.num_objects + 1)]).astype(np.float32))


class Script:
    """A tracker factory (``factory(choice, device, tracker_options)``) building
    :class:`ScriptedTracker` s that share this script's ``steps`` log and ``fail`` hook."""

    def __init__(self, fail: Optional[Callable[[ScriptedTracker, np.ndarray], Optional[BaseException]]] = None):
        self.fail = fail
        self.steps: list = []
        self.built: list = []  # (device, max_long_edge) of every tracker built

    def __call__(self, choice: Any, device: str, options: Any) -> ScriptedTracker:
        tracker = ScriptedTracker(self, device, options)
        self.built.append((tracker.device, tracker.max_long_edge))
        return tracker
