"""``deaot_vos``: the FiftyOne side of the ``@deaot/vos`` plugin (kept in ``plugin/``; the operators
in ``operators/`` are thin wrappers around it).

``deaot_vos.propagate(...)`` propagates keyframe masks through videos; ``python -m deaot_vos`` is its
CLI (``propagate``, ``demo``, ``suggest``...); ``deaot_vos.suggest_keyframes(...)`` scores
where a propagated output is likely wrong. Attributes are imported lazily so that light submodules (e.g.
``deaot_vos.video_io``) do not pull in FiftyOne or torch.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "propagate": "propagation",
    "queue_propagation": "propagation",
    "check_fields": "propagation",
    "PropagationCancelled": "propagation",
    "OutputExistsError": "propagation",
    "PropagationOptions": "propagation",
    "ModelUnavailableError": "weights",
    "resolve_checkpoint": "weights",
    "resolve_device": "weights",
    "DEFAULT_MODEL": "weights",
    "VideoError": "video_io",
    "evaluate_vos": "evaluation",
    "upgrade_legacy_runs": "evaluation",
    "suggest_keyframes": "suggestions",
    "SuggestionCancelled": "suggestions",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deaot_vos' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
