"""Checkpoint I/O in the official aot-benchmark layouts, strict and with clear errors."""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .errors import CheckpointError
from .hub import download, sha256_of

log = logging.getLogger(__name__)


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "name", type(model).__name__)


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside an official checkpoint object: plain, or under 'state_dict' / 'model',
    with any 'module.' (DataParallel) prefix removed."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} does not hold a state dict (got {type(obj).__name__})")
    state = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise CheckpointError(f"{source} is not a state dict of tensors (entry {key!r} is "
                                  f"{type(value).__name__})")
        state[key[len("module."):] if key.startswith("module.") else key] = value
    return state


def _read_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises several types for corrupt / unsafe files
        text = str(err)
        if isinstance(err, pickle.UnpicklingError) or "weights_only" in text.lower():
            raise CheckpointError(
                f"cannot read checkpoint {path}: refused, it holds Python objects other than tensors and plain "
                f"containers, and checkpoints are only loaded with weights_only=True (no code from the file is "
                f"run); re-save it as a plain state dict. ({type(err).__name__}: {text.splitlines()[0][:300]})"
            ) from err
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a PyTorch file?): "
                              f"{type(err).__name__}: {err}") from err


def _discard_download(path: Path, url: str, reason: BaseException) -> None:
    """Remove a downloaded file that cannot be loaded, so the next try downloads it again."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:  # pragma: no cover - e.g. a read-only cache
        log.warning("could not remove the unusable download %s of %s: %s", path, url, err)
        return
    log.warning("removed the downloaded checkpoint %s of %s: it cannot be loaded (%s)", path, url, reason)
    if path.parent.parent.name == "urls":
        try:
            path.parent.rmdir()  # the now-empty per-URL directory
        except OSError:
            pass


def resolve_path(path_or_url: str | os.PathLike, sha256: str | None = None,
                 timeout: float | None = None) -> Path:
    """A local checkpoint file: ``path_or_url`` itself, or the URL downloaded into the cache
    (:func:`download`, keyed by the URL and ``sha256``)."""
    text = str(path_or_url)
    if "://" in text:
        return download(text, sha256, timeout=timeout)
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if sha256 is not None and sha256_of(path) != sha256:
        raise CheckpointError(f"checksum mismatch for {path}")
    return path


def load_checkpoint(model: nn.Module, path_or_url: str | os.PathLike, sha256: str | None = None,
                    timeout: float | None = None) -> nn.Module:
    """Load an official (or our) checkpoint strictly into ``model``; returns the model, with
    ``model.identity_slots`` set from the file (the identity slots per group its training used;
    None: all of them, as for the official weights) and ``model.preferred_group_size`` (the
    identities per group the file's own measurements favour, key ``group_size``; None: no advice).

    Accepts a plain state dict or one under 'state_dict' / 'model', with an optional 'module.'
    prefix. Raises ``CheckpointError`` naming the expected model and what did not match. A URL
    is downloaded once into the cache (see :func:`download`, also for ``timeout``); a downloaded
    file that cannot be read as a state dict (truncated, not a PyTorch file) is removed from the
    cache so that the next try downloads it again. A local path is never removed.
    """
    text = str(path_or_url)
    path = resolve_path(path_or_url, sha256, timeout)
    try:
        obj = _read_file(path)
        stored_name = obj.get("model_name") if isinstance(obj, Mapping) else None
        state = extract_state_dict(obj, str(path))
    except CheckpointError as err:
        if "://" in text:
            _discard_download(path, text, err)
        raise
    expected = model.state_dict()
    name = _model_name(model)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match model {name}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}); "
            + (f"the file says it holds a {stored_name}" if isinstance(stored_name, str) and stored_name != name
               else "is it a checkpoint of another variant?"))
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        key, got, want = wrong[0]
        raise CheckpointError(f"{path} does not match model {name}: {len(wrong)} tensors of the wrong shape, "
                              f"e.g. {key} is {got}, expected {want}")
    _check_finite(state, path)
    converted = {k: (v.to(expected[k].dtype) if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(converted, strict=True)
    # the identity slots the weights were trained to use (our trainer records it; official: all)
    model.identity_slots = _positive_int(obj, "identity_slots")
    model.preferred_group_size = _positive_int(obj, "group_size")
    return model


def _check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """CheckpointError naming the first tensor (in the file's order) that holds NaN or Inf: such
    weights load silently and then propagate nothing."""
    bad = [k for k, v in state.items() if (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all()]
    if bad:
        first = state[bad[0]]
        nan, inf = int(torch.isnan(first).sum()), int(torch.isinf(first).sum())
        raise CheckpointError(
            f"{path} holds non-finite weights: tensor {bad[0]} has {nan} NaN and {inf} Inf of {first.numel()} "
            f"values ({len(bad)} of {len(state)} tensors are affected); the file is damaged or comes from a "
            f"training run that diverged")


def _positive_int(obj, key: str) -> int | None:
    """A checkpoint's optional positive integer entry ``key`` (None when absent or malformed)."""
    value = obj.get(key) if isinstance(obj, Mapping) else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def save_checkpoint(model: nn.Module, path: str | os.PathLike, extra: Mapping[str, Any] | None = None,
                    half: bool = False) -> Path:
    """Write ``{'state_dict': ..., **extra}`` (the official layout) atomically; fp16 floats if ``half``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu()
             for k, v in model.state_dict().items()}
    payload = {"state_dict": state, "model_name": _model_name(model), **(extra or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path
