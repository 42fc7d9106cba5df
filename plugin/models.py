"""Which weights to run: checkpoint resolution, device resolution, a small model cache.

Resolution order, each step logged: an explicit ``checkpoint`` (path or URL) > the official
checkpoint of the requested model in the cache dir ($DEAOT_CACHE, else ~/.cache/deaot) > that
file downloaded from its official URL (:data:`OFFICIAL_WEIGHTS`) into the cache dir, unless
offline (``DEAOT_OFFLINE=1`` or ``offline=True``; a network error or a web page instead of the
file only logs a warning) > the shipped demo checkpoint ``checkpoints/deaot_t_synthetic.pth`` (a
DeAOTT) > nothing (refused, unless random weights are explicitly allowed, as the demo does).
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


@dataclass(frozen=True)
class OfficialWeights:
    """Where the released checkpoint of a model can be downloaded."""

    url: str
    sha256: str | None = None  # None: not published for the official files


_GDRIVE = "https://drive.google.com/uc?export=download&id={}"
# Google Drive ids of the released PRE_YTB_DAV checkpoints, as linked from MODEL_ZOO.md of the
# official repository (yoxu515/aot-benchmark).
_GDRIVE_IDS = {
    "AOTT": "1owPmwV4owd_ll6GuilzklqTyAd0ZvbCu",
    "AOTS": "1beU5E6Mdnr_pPrgjWvdWurKAIwJSz1xf",
    "AOTB": "1hH-GOn4GAxHkV8ARcQzsUy8Ax6ndot-A",
    "AOTL": "1L1N2hkSPqrwGgnW9GyFHuG59_EYYfTG4",
    "R50_AOTL": "1qJDYn3Ibpquu4ffYoQmVjg1YCbr2JQep",
    "SwinB_AOTL": "192jCGQZdnuTsvX-CVra-KVZl2q1ZR0vW",
    "DeAOTT": "1ThWIZQS03cYWx1EKNN8MIMnJS5eRowzr",
    "DeAOTS": "1YwIAV5tBtn5spSFxKLBQBEQGwPHyQlHi",
    "DeAOTB": "1BHxsonnvJXylqHlZ1zJHHc-ymKyq-CFf",
    "DeAOTL": "18elNz_wi9JyVBcIUYKhRdL08MA-FqHD5",
    "R50_DeAOTL": "1QoChMkTVxdYZ_eBlZhK2acq9KMQZccPJ",
    "SwinB_DeAOTL": "1g4E-F0RPOx9Nd6J7tU9AE1TjsouL4oZq",
}
#: model name -> official download; the one place to change (or extend) the URLs.
OFFICIAL_WEIGHTS: dict[str, OfficialWeights] = {name: OfficialWeights(_GDRIVE.format(file_id))
                                                for name, file_id in _GDRIVE_IDS.items()}
#: seconds to connect (and per read) before the download step gives up; $DEAOT_DOWNLOAD_TIMEOUT wins when set
DOWNLOAD_TIMEOUT = 10.0
OFFLINE_ENV = "DEAOT_OFFLINE"


class ModelUnavailableError(RuntimeError):
    """No usable weights for the requested model."""


@dataclass(frozen=True)
class ModelChoice:
    model: str  # official name actually used
    checkpoint: str | None  # path or URL; None = random weights
    source: str  # "explicit" | "cache" | "url" | "demo" | "random"

    def describe(self) -> str:
        if self.checkpoint is None:
            return f"{self.model} with RANDOM weights (no checkpoint found)"
        return f"{self.model} from {self.source} checkpoint {self.checkpoint}"


def emulated_precisions(device: str | None = "auto") -> list[str]:
    """The reduced precisions that ``device`` would only emulate (a CPU without native bf16 /
    fp16 kernels: about 10x slower than fp32 there); [] on CUDA."""
    import deaot_core

    if resolve_device(device) != "cpu":
        return []
    return [p for p in PRECISIONS if not deaot_core.native_cpu_precision(p)]


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


def is_offline() -> bool:
    """Whether ``$DEAOT_OFFLINE`` forbids the download step (1, true, yes, on)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def download_official(model: str, offline: bool | None = None) -> Path | None:
    """The official checkpoint of ``model`` downloaded into the cache dir (as
    :func:`official_checkpoint_name`), or None (logged) when there is no URL for it, when offline,
    or when the download fails in any way (unreachable, timeout, a web page instead of the file)."""
    from deaot_core.checkpoint import download, download_timeout

    entry = OFFICIAL_WEIGHTS.get(model)
    if entry is None:
        log.info("weights: no official download URL for %s, skipping the download step", model)
        return None
    if is_offline() if offline is None else offline:
        log.info("weights: offline (%s set or offline=True), not downloading %s from %s", OFFLINE_ENV, model,
                 entry.url)
        return None
    name = official_checkpoint_name(model)
    try:
        timeout = download_timeout(DOWNLOAD_TIMEOUT)
        log.info("weights: downloading the official %s checkpoint from %s into %s (timeout %ss)", model, entry.url,
                 cache_dir(), timeout)
        # saved flat under the official name (one URL per model), where the cache step looks
        return download(entry.url, entry.sha256, directory=cache_dir(), filename=name, timeout=timeout)
    except Exception as err:  # offline, a timeout, an HTTP error, a web page instead of the file
        log.warning("weights: could not download the official %s checkpoint from %s (%s: %s); set %s=1 to skip "
                    "this step, or put %s in %s by hand", model, entry.url, type(err).__name__, err, OFFLINE_ENV,
                    name, cache_dir())
        return None


def resolve_checkpoint(model: str = DEFAULT_MODEL, checkpoint: str | None = None,
                       allow_random: bool = False, offline: bool | None = None) -> ModelChoice:
    """Pick the weights to run (see the module docstring); logs every step and the choice.

    ``offline``: skip the download step (None: as ``$DEAOT_OFFLINE`` says)."""
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
        else:
            log.info("weights: no checkpoint given and no %s in the cache dir %s", cached.name, cached.parent)
            choice = _without_cache(model, cached, allow_random, offline)
    log.info("model: %s", choice.describe())
    return choice


def _without_cache(model: str, cached: Path, allow_random: bool, offline: bool | None) -> ModelChoice:
    """The steps after the cache: the official URL > the demo checkpoint > random (if allowed)."""
    downloaded = download_official(model, offline)
    if downloaded is not None:
        return ModelChoice(model, str(downloaded), "url")
    if DEMO_CHECKPOINT.is_file():
        log.warning("no %s checkpoint at %s; falling back to the shipped demo checkpoint %s (%s "
                    "trained on synthetic data: for demos, not for accuracy)", model, cached,
                    DEMO_CHECKPOINT, DEMO_MODEL)
        return ModelChoice(DEMO_MODEL, str(DEMO_CHECKPOINT), "demo")
    if allow_random:
        log.warning("\n" + "!" * 78 + "\n!! NO CHECKPOINT FOUND: running %s with RANDOMLY INITIALISED weights.\n"
                    "!! The masks will be meaningless. Put %s in %s or pass a checkpoint.\n" + "!" * 78,
                    DEMO_MODEL, official_checkpoint_name(model), cache_dir())
        return ModelChoice(DEMO_MODEL, None, "random")
    raise ModelUnavailableError(
        f"no weights for model {model}: pass checkpoint=<path or URL>, or put the official "
        f"checkpoint {official_checkpoint_name(model)} in {cache_dir()} (set DEAOT_CACHE to use "
        f"another directory; it is downloaded there when online and {OFFLINE_ENV} is not set), or add "
        f"the demo checkpoint {DEMO_CHECKPOINT}")


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


def _discard_official_download(path: Path, reason: BaseException) -> None:
    """Remove an official checkpoint this run downloaded that does not load, so the cache step
    does not pick it up next time and the download is tried again (a file the user put in the
    cache dir, source ``cache``, or passed as a path is never removed)."""
    try:
        path.unlink()
    except OSError as err:
        log.warning("weights: could not remove the unusable download %s: %s", path, err)
        return
    log.warning("weights: removed the downloaded checkpoint %s, it does not load (%s); the next run downloads "
                "it again", path, reason)


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
            except deaot_core.CheckpointError as err:
                if choice.source == "url":  # just downloaded under the official name: do not keep a bad file
                    _discard_official_download(Path(choice.checkpoint), err)
                raise
        model = model.to(device).eval()
        _CACHE[key] = model
        return model
