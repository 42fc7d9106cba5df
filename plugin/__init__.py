"""FiftyOne-side code of the ``@deaot/vos`` plugin (the operators in ``operators/`` are thin
wrappers around it).

``plugin.propagate(...)`` propagates keyframe masks through videos; ``python -m plugin`` is its
CLI (``propagate``, ``demo``). Attributes are imported lazily so that light submodules (e.g.
``plugin.metrics``) do not pull in FiftyOne or torch.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "propagate": "propagation",
    "queue_propagation": "scaleout",
    "check_fields": "propagation",
    "PropagationCancelled": "propagation",
    "OutputExistsError": "propagation",
    "ModelUnavailableError": "models",
    "resolve_checkpoint": "models",
    "resolve_device": "models",
    "DEFAULT_MODEL": "models",
    "VideoError": "video",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
