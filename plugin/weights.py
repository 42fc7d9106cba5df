"""Which weights to run, as the plugin's forms and runs see them.

The resolution itself (explicit path/URL > cache dir > official download > shipped demo weights),
the content identity of weights and the model cache live in the core, :mod:`deaot_core.pretrained`
(``deaot_core.load_pretrained``); their names are re-exported here for the plugin's code. To
change a table or a path in a test, patch it in ``deaot_core.pretrained``. What stays here is
what a form says before a run (:func:`weights_notice`, :func:`emulated_precisions`).
"""
from __future__ import annotations

from pathlib import Path

import deaot_core
from deaot_core.devices import PRECISIONS as _PRECISION_TABLE
from deaot_core.devices import resolve_device
from deaot_core.hub import cache_dir
from deaot_core.pretrained import (DEFAULT_MODEL, DEMO_CHECKPOINT, DEMO_MODEL, DOWNLOAD_TIMEOUT, OFFICIAL_WEIGHTS,
                                   OFFLINE_ENV, ModelChoice, ModelUnavailableError, canonical_model_name,
                                   checkpoint_digest, download_official, is_offline, load_model, load_pretrained,
                                   model_names, official_checkpoint_name, resolve_checkpoint, weights_identity)
from deaot_core import pretrained as _pretrained

REPO_ROOT = Path(__file__).resolve().parents[1]
#: the precision names of the core's table, in its order
PRECISIONS = tuple(_PRECISION_TABLE)

__all__ = [
    "DEFAULT_MODEL", "DEMO_CHECKPOINT", "DEMO_MODEL", "DOWNLOAD_TIMEOUT", "ModelChoice", "ModelUnavailableError",
    "OFFICIAL_WEIGHTS", "OFFLINE_ENV", "PRECISIONS", "cache_dir", "canonical_model_name", "checkpoint_digest",
    "download_official", "emulated_precisions", "is_offline", "load_model", "load_pretrained", "model_names",
    "official_checkpoint_name", "resolve_checkpoint", "resolve_device", "weights_identity", "weights_notice",
]


def emulated_precisions(device: str | None = "auto") -> list[str]:
    """The reduced precisions that ``device`` would only emulate (a CPU without native bf16 /
    fp16 kernels: about 10x slower than fp32 there); [] on CUDA."""
    if resolve_device(device) != "cpu":
        return []
    return [p for p in PRECISIONS if not deaot_core.native_cpu_precision(p)]


def weights_notice(model: str, checkpoint: str | None = None) -> str | None:
    """What a form says before a run about the weights :func:`resolve_checkpoint` would pick for
    ``model`` here (looked up quietly, never downloading): None when the model's own weights are
    here (or an explicit checkpoint is given); else which weights would be used instead. Raises
    :class:`ModelUnavailableError` / ``ValueError`` as the run would."""
    choice = resolve_checkpoint(model, checkpoint or None, offline=True, quiet=True)
    if choice.source != "demo":
        return None
    model = canonical_model_name(model)
    where = f"{official_checkpoint_name(model)} is not in {cache_dir()}"
    demo = (f"the shipped demo checkpoint ({DEMO_MODEL} trained on synthetic clips, not the official weights)"
            if model == DEMO_MODEL else f"the shipped demo checkpoint ({DEMO_MODEL} trained on synthetic clips) "
                                        f"instead of {model}")
    if model in _pretrained.OFFICIAL_WEIGHTS and not is_offline():
        return (f"No {model} weights on this machine ({where}): the run downloads them from the official URL, "
                f"and if that fails it uses {demo}")
    return (f"No {model} weights on this machine ({where}): the run uses {demo}; put the official file there or "
            f"give a checkpoint")
