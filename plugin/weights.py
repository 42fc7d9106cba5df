"""Which weights to run: checkpoint resolution and a small model cache.

Resolution order, each step logged: an explicit ``checkpoint`` (path or URL) > the official
checkpoint of the requested model in the core's cache dir (``deaot_core.cache_dir()``:
$DEAOT_CACHE, else ~/.cache/deaot) > that file downloaded from its official URL (the core's
``deaot_core.WEIGHTS`` table, seen here as :data:`OFFICIAL_WEIGHTS`) into the cache dir, unless
offline (``DEAOT_OFFLINE=1`` or ``offline=True``; a network error or a web page instead of the
file only logs a warning) > the shipped demo checkpoint ``checkpoints/deaot_t_synthetic.pth`` (a
DeAOTT) > nothing (refused, unless random weights are explicitly allowed, as the demo does).
"""
from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import deaot_core
from deaot_core.config import WEIGHTS, PretrainedWeights, get_config
from deaot_core.devices import PRECISIONS as _PRECISION_TABLE
from deaot_core.devices import resolve_device
from deaot_core.hub import cache_dir, download, download_timeout, sha256_of

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = REPO_ROOT / "checkpoints" / "deaot_t_synthetic.pth"
DEMO_MODEL = "DeAOTT"
DEFAULT_MODEL = "R50_DeAOTL"
#: the precision names of the core's table, in its order
PRECISIONS = tuple(_PRECISION_TABLE)
#: model name -> official download (the core's table; tests and callers may replace this name)
OFFICIAL_WEIGHTS: dict[str, PretrainedWeights] = WEIGHTS
#: seconds to connect (and per read) before the download step gives up; $DEAOT_DOWNLOAD_TIMEOUT wins when set
DOWNLOAD_TIMEOUT = 10.0
OFFLINE_ENV = "DEAOT_OFFLINE"

__all__ = [
    "DEFAULT_MODEL", "DEMO_CHECKPOINT", "DEMO_MODEL", "ModelChoice", "ModelUnavailableError", "OFFICIAL_WEIGHTS",
    "PRECISIONS", "cache_dir", "canonical_model_name", "download_official", "emulated_precisions", "is_offline",
    "load_model", "model_names", "official_checkpoint_name", "resolve_checkpoint", "resolve_device", "weights_notice",
]


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
    if resolve_device(device) != "cpu":
        return []
    return [p for p in PRECISIONS if not deaot_core.native_cpu_precision(p)]


def model_names() -> tuple[str, ...]:
    return tuple(deaot_core.MODEL_NAMES)


def canonical_model_name(name: str) -> str:
    names = model_names()
    lookup = {n.lower(): n for n in names}
    key = lookup.get(str(name).strip().lower())
    if key is None:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(names)}")
    return key


def official_checkpoint_name(model: str) -> str:
    """The file name of ``model``'s released checkpoint (its entry in the weights table, else the
    config's ``checkpoint_name``, else ``<model>_PRE_YTB_DAV.pth``)."""
    entry = OFFICIAL_WEIGHTS.get(model)
    if entry is not None and entry.file_name:
        return entry.file_name
    try:
        name = get_config(model).checkpoint_name
    except KeyError:
        name = ""
    return name or f"{model}_PRE_YTB_DAV.pth"


def is_offline() -> bool:
    """Whether ``$DEAOT_OFFLINE`` forbids the download step (1, true, yes, on)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def download_official(model: str, offline: bool | None = None) -> Path | None:
    """The official checkpoint of ``model`` downloaded into the cache dir (as
    :func:`official_checkpoint_name`), or None (logged) when there is no URL for it, when offline,
    or when the download fails in any way (unreachable, timeout, a web page instead of the file)."""
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
                       allow_random: bool = False, offline: bool | None = None, quiet: bool = False) -> ModelChoice:
    """Pick the weights to run (see the module docstring); logs every step and the choice (at
    debug level with ``quiet``, e.g. for a form that only looks ahead).

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
            (log.debug if quiet else log.info)("weights: no checkpoint given and no %s in the cache dir %s",
                                               cached.name, cached.parent)
            choice = _without_cache(model, cached, allow_random, offline, quiet)
    (log.debug if quiet else log.info)("model: %s", choice.describe())
    return choice


def _without_cache(model: str, cached: Path, allow_random: bool, offline: bool | None,
                   quiet: bool = False) -> ModelChoice:
    """The steps after the cache: the official URL > the demo checkpoint > random (if allowed)."""
    downloaded = None if quiet and offline else download_official(model, offline)  # a look ahead never downloads
    if downloaded is not None:
        return ModelChoice(model, str(downloaded), "url")
    if DEMO_CHECKPOINT.is_file():
        (log.debug if quiet else log.warning)(
            "no %s checkpoint at %s; falling back to the shipped demo checkpoint %s (%s trained on synthetic data: "
            "for demos, not for accuracy)", model, cached, DEMO_CHECKPOINT, DEMO_MODEL)
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
    if model in OFFICIAL_WEIGHTS and not is_offline():
        return (f"No {model} weights on this machine ({where}): the run downloads them from the official URL, "
                f"and if that fails it uses {demo}")
    return (f"No {model} weights on this machine ({where}): the run uses {demo}; put the official file there or "
            f"give a checkpoint")


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
_IDENTITIES: dict = {}


def weights_identity(choice: ModelChoice) -> str:
    """What identifies the weights of ``choice`` in frame signatures: the sha256 of a local
    checkpoint (cached per path, size and mtime), a URL as given, and for random weights a
    fresh token (random weights differ from run to run: nothing is ever reused)."""
    if choice.checkpoint is None:
        return f"random:{uuid.uuid4().hex}"
    if "://" in choice.checkpoint:
        return f"{choice.model}:{choice.checkpoint}"
    stat = os.stat(choice.checkpoint)
    key = (os.path.abspath(choice.checkpoint), stat.st_size, stat.st_mtime_ns)
    with _CACHE_LOCK:
        if key not in _IDENTITIES:
            _IDENTITIES[key] = f"{choice.model}:sha256:{sha256_of(Path(choice.checkpoint))}"
        return _IDENTITIES[key]


def load_model(choice: ModelChoice, device: str = "cpu"):
    """The ``torch.nn.Module`` for ``choice`` on ``device`` (the last one is kept cached)."""
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
