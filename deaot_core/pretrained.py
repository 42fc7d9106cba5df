"""Pretrained weights in one call: ``load_pretrained("R50_DeAOTL")`` -> the model, ready to run.

Resolution order (:func:`resolve_checkpoint`), each step logged: an explicit ``checkpoint`` (path
or URL) > the official checkpoint of the requested model in the cache dir (:func:`cache_dir`:
$DEAOT_CACHE, else ~/.cache/deaot) > that file downloaded from its official URL (the table
:data:`OFFICIAL_WEIGHTS`, i.e. ``deaot_core.WEIGHTS``) into the cache dir, unless offline
(``DEAOT_OFFLINE=1`` or ``offline=True``; a network error or a web page instead of the file only
logs a warning) > the demo checkpoint shipped inside this package (``deaot_core/weights/``, a
DeAOTT; found through the package, so a clone, the plugin folder and an installed wheel all have
it) > nothing (refused, unless random weights are explicitly allowed).

Weights are identified by their content (:func:`weights_identity`: the sha256 of the file that
is loaded, a URL's downloaded copy included), never by a path or URL text.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from torch import nn

from .checkpoint import load_checkpoint, resolve_path
from .config import MODEL_NAMES, WEIGHTS, PretrainedWeights, get_config
from .devices import resolve_device
from .errors import CheckpointError, ModelUnavailableError
from .hub import cache_dir, download, download_timeout, sha256_of
from .modeling.model import build_model

log = logging.getLogger(__name__)

DEMO_MODEL = "DeAOTT"
DEFAULT_MODEL = "R50_DeAOTL"
#: the demo checkpoint as package data (``deaot_core/weights/``); tests may replace this name
DEMO_CHECKPOINT = Path(str(resources.files(__package__) / "weights" / "deaot_t_synthetic.pth"))
#: model name -> official download (the core's table; tests and callers may replace this name)
OFFICIAL_WEIGHTS: dict[str, PretrainedWeights] = WEIGHTS
#: seconds to connect (and per read) before the download step gives up; $DEAOT_DOWNLOAD_TIMEOUT wins when set
DOWNLOAD_TIMEOUT = 10.0
OFFLINE_ENV = "DEAOT_OFFLINE"

__all__ = [
    "DEFAULT_MODEL", "DEMO_CHECKPOINT", "DEMO_MODEL", "ModelChoice", "ModelUnavailableError", "OFFICIAL_WEIGHTS",
    "canonical_model_name", "checkpoint_digest", "download_official", "is_offline", "load_model", "load_pretrained",
    "model_names", "official_checkpoint_name", "resolve_checkpoint", "weights_identity",
]


@dataclass(frozen=True)
class ModelChoice:
    """The weights picked for a run."""

    model: str  # official name actually used
    checkpoint: str | None  # path or URL; None = random weights
    source: str  # "explicit" | "cache" | "url" | "demo" | "random"

    def describe(self) -> str:
        if self.checkpoint is None:
            return f"{self.model} with RANDOM weights (no checkpoint found)"
        return f"{self.model} from {self.source} checkpoint {self.checkpoint}"


def model_names() -> tuple[str, ...]:
    return tuple(MODEL_NAMES)


def canonical_model_name(name: str) -> str:
    """The official spelling of ``name`` (case-insensitive); ValueError naming the known models."""
    lookup = {n.lower(): n for n in MODEL_NAMES}
    key = lookup.get(str(name).strip().lower())
    if key is None:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
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


# -- content identity ----------------------------------------------------------------------------

_LOCK = threading.RLock()
_DIGESTS: dict[tuple, str] = {}


def _stat_key(path: Path) -> tuple:
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino


def checkpoint_digest(path: str | os.PathLike) -> str:
    """The hex sha256 of the file at ``path``. Remembered per (path, size, mtime, inode), in this
    process and in ``<cache dir>/digests/`` (so a new process does not read a large checkpoint
    twice); a changed file is hashed again. An unwritable cache only costs the re-hash."""
    key = _stat_key(Path(path))
    with _LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    record = cache_dir() / "digests" / hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    try:
        stored = record.read_text().strip()
    except OSError:
        stored = ""
    digest = stored if len(stored) == 64 else sha256_of(Path(path))
    if not stored:
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
            tmp.write_text(digest)
            os.replace(tmp, record)
        except OSError as err:
            log.debug("weights: could not remember the digest of %s in %s: %s", path, record, err)
    with _LOCK:
        _DIGESTS[key] = digest
    return digest


def checkpoint_file(choice: ModelChoice) -> Path:
    """The local file ``choice`` loads: its path, or the cached download of its URL (downloaded
    now when not yet cached). ModelUnavailableError when a path vanished or a download failed."""
    try:
        return resolve_path(choice.checkpoint, timeout=download_timeout() if "://" in choice.checkpoint else None)
    except OSError as err:  # a vanished file, an unreachable URL
        raise ModelUnavailableError(f"cannot load checkpoint {choice.checkpoint} for {choice.model}: "
                                    f"{type(err).__name__}: {err}") from err


def weights_identity(choice: ModelChoice) -> str:
    """What identifies the weights of ``choice`` (in frame signatures): ``<model>:sha256:<hex>``
    of the file loaded, for a URL its downloaded copy (the same URL may serve other weights
    later, or on another machine); for random weights a fresh token (they differ from run to
    run: nothing is ever reused)."""
    if choice.checkpoint is None:
        return f"random:{uuid.uuid4().hex}"
    return f"{choice.model}:sha256:{checkpoint_digest(checkpoint_file(choice))}"


# -- loading -------------------------------------------------------------------------------------

_MODELS: dict = {}


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


def load_model(choice: ModelChoice, device: str = "cpu") -> nn.Module:
    """The ``torch.nn.Module`` for ``choice`` on ``device``, in eval mode; the last one is kept
    and reused while the weights' content (:func:`weights_identity`) is the same."""
    identity = None if choice.checkpoint is None else weights_identity(choice)
    key = (choice.model, identity, device)
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        _MODELS.clear()
        model = build_model(choice.model)
        if choice.checkpoint is not None:
            try:
                load_checkpoint(model, choice.checkpoint)
            except (FileNotFoundError, OSError) as err:  # a vanished file, a failed download
                raise ModelUnavailableError(f"cannot load checkpoint {choice.checkpoint} for {choice.model}: "
                                            f"{type(err).__name__}: {err}") from err
            except CheckpointError as err:
                if choice.source == "url":  # just downloaded under the official name: do not keep a bad file
                    _discard_official_download(Path(choice.checkpoint), err)
                raise
        model = model.to(device).eval()
        model.pretrained = choice
        _MODELS[key] = model
        return model


def load_pretrained(name: str = DEFAULT_MODEL, checkpoint: str | os.PathLike | None = None,
                    device: str | None = "auto", *, allow_random: bool = False,
                    offline: bool | None = None) -> nn.Module:
    """The model ``name`` with its weights, on ``device`` ("auto": CUDA when available), in eval
    mode, ready for ``deaot_core.Tracker(model, device=...)``.

    ``checkpoint`` (path or URL) wins; else the official file in the cache dir, its download
    (unless ``offline`` / ``$DEAOT_OFFLINE``), then the shipped demo checkpoint (a DeAOTT,
    whatever ``name``, with a warning). ``model.pretrained`` is the :class:`ModelChoice` used
    (``.model``, ``.checkpoint``, ``.source``). Raises :class:`ModelUnavailableError` when no
    weights are found (``allow_random=True``: random weights instead, with a loud warning) and
    ``CheckpointError`` for a file that does not fit the model or holds non-finite values."""
    choice = resolve_checkpoint(name, None if checkpoint is None else os.fspath(checkpoint),
                                allow_random=allow_random, offline=offline)
    return load_model(choice, resolve_device(device))
