"""Which weights to run: checkpoint resolution, device resolution, a small model cache.

Resolution order: an explicit ``checkpoint`` (path or URL) > the official checkpoint of the
requested model in the cache dir ($DEAOT_CACHE, else ~/.cache/deaot) > the shipped demo
checkpoint ``checkpoints/deaot_t_synthetic.pth`` (a DeAOTT) > nothing (refused, unless random
weights are explicitly allowed, as the demo does).
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = REPO_ROOT / "checkpoints" / "deaot_t_synthetic.pth"
DEMO_MODEL = "DeAOTT"
DEFAULT_MODEL = "R50_DeAOTL"
PRECISIONS = ("fp32", "fp16", "bf16")


class ModelUnavailableError(RuntimeError):
    """No usable weights for the requested model."""


@dataclass(frozen=True)
class ModelChoice:
    model: str  # official name actually used
    checkpoint: str | None  # path or URL; None = random weights
    source: str  # "explicit" | "cache" | "demo" | "random"

    def describe(self) -> str:
        if self.checkpoint is None:
            return f"{self.model} with RANDOM weights (no checkpoint found)"
        return f"{self.model} from {self.source} checkpoint {self.checkpoint}"


def model_names() -> tuple[str, ...]:
    import deaot_core

    return tuple(deaot_core.MODEL_NAMES)


def canonical_model_name(name: str) -> str:
    names = model_names()
    lookup = {n.lower(): n for n in names}
    key = lookup.get(str(name).strip().lower())
    if key is None:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(names)}")
    return key


def cache_dir() -> Path:
    return Path(os.environ.get("DEAOT_CACHE") or Path.home() / ".cache" / "deaot").expanduser()


def official_checkpoint_name(model: str) -> str:
    try:
        from deaot_core.config import get_config

        name = get_config(model).checkpoint_name
        if name:
            return name
    except Exception:  # the config module is optional for this lookup
        pass
    return f"{model}_PRE_YTB_DAV.pth"


def resolve_checkpoint(model: str = DEFAULT_MODEL, checkpoint: str | None = None,
                       allow_random: bool = False) -> ModelChoice:
    """Pick the weights to run (see the module docstring); logs the choice."""
    model = canonical_model_name(model)
    if checkpoint:
        checkpoint = str(checkpoint)
        if "://" not in checkpoint:
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise ModelUnavailableError(f"checkpoint file not found: {path}")
            checkpoint = str(path)
        choice = ModelChoice(model, checkpoint, "explicit")
    else:
        cached = cache_dir() / official_checkpoint_name(model)
        if cached.is_file():
            choice = ModelChoice(model, str(cached), "cache")
        elif DEMO_CHECKPOINT.is_file():
            log.warning("no %s checkpoint at %s; falling back to the shipped demo checkpoint %s (%s "
                        "trained on synthetic data: for demos, not for accuracy)", model, cached,
                        DEMO_CHECKPOINT, DEMO_MODEL)
            choice = ModelChoice(DEMO_MODEL, str(DEMO_CHECKPOINT), "demo")
        elif allow_random:
            fallback = DEMO_MODEL
            log.warning("\n" + "!" * 78 + "\n!! NO CHECKPOINT FOUND: running %s with RANDOMLY INITIALISED weights.\n"
                        "!! The masks will be meaningless. Put %s in %s or pass a checkpoint.\n" + "!" * 78,
                        fallback, official_checkpoint_name(model), cache_dir())
            choice = ModelChoice(fallback, None, "random")
        else:
            raise ModelUnavailableError(
                f"no weights for model {model}: pass checkpoint=<path or URL>, or put the official "
                f"checkpoint {official_checkpoint_name(model)} in {cache_dir()} (set DEAOT_CACHE to use "
                f"another directory), or add the demo checkpoint {DEMO_CHECKPOINT}")
    log.info("model: %s", choice.describe())
    return choice


def resolve_device(device: str | None = "auto") -> str:
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        if ":" in device:
            try:
                ordinal = int(device.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"invalid device {device!r}; expected auto, cpu, cuda or cuda:N") from None
            if not 0 <= ordinal < torch.cuda.device_count():
                raise ValueError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
        return device
    raise ValueError(f"invalid device {device!r}; expected auto, cpu, cuda or cuda:N")


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def load_model(choice: ModelChoice, device: str = "cpu"):
    """The ``torch.nn.Module`` for ``choice`` on ``device`` (the last one is kept cached)."""
    import deaot_core

    key = (choice.model, choice.checkpoint, device)
    if choice.checkpoint and "://" not in choice.checkpoint:
        stat = os.stat(choice.checkpoint)
        key += (stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        _CACHE.clear()
        model = deaot_core.build_model(choice.model)
        if choice.checkpoint is not None:
            try:
                deaot_core.load_checkpoint(model, choice.checkpoint)
            except (FileNotFoundError, OSError) as err:  # a vanished file, a failed download
                raise ModelUnavailableError(f"cannot load checkpoint {choice.checkpoint} for {choice.model}: "
                                            f"{type(err).__name__}: {err}") from err
        model = model.to(device).eval()
        _CACHE[key] = model
        return model
