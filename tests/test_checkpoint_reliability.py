"""Checkpoint download reliability (issue 14, items 4 and 5).

4. The download cache is keyed by the URL (and the sha256 when given), not by the file name:
   ``file:///a/model.pth`` and ``file:///b/model.pth`` load their own weights; a downloaded file
   that does not load is removed so that the next try downloads it again (a local file given as
   a path, or put in the cache dir by hand, is never removed).
5. Downloads have a connect / read timeout (``DEFAULT_DOWNLOAD_TIMEOUT``, ``$DEAOT_DOWNLOAD_TIMEOUT``,
   or ``timeout=``): a server that accepts the connection and never answers raises a
   ``CheckpointError`` naming the URL instead of hanging the run.

Everything is real: torch state dicts saved to files, ``file://`` URLs and a TCP server on
127.0.0.1 that accepts connections and never replies (it closes itself after a few seconds, so
even the old, timeout-less code fails here instead of hanging the suite).
"""
from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

import deaot_core
from deaot_core.checkpoint import CheckpointError


def _save_deaott(path: Path, seed: int) -> dict[str, torch.Tensor]:
    """A randomly initialised DeAOTT (seeded) saved at ``path``; returns its state dict."""
    torch.manual_seed(seed)
    model = deaot_core.build_model("DeAOTT")
    deaot_core.save_checkpoint(model, path)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    got = model.state_dict()
    return got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)


def _load(url_or_path, **kwargs) -> torch.nn.Module:
    return deaot_core.load_checkpoint(deaot_core.build_model("DeAOTT"), url_or_path, **kwargs)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("DEAOT_CACHE", str(path))
    monkeypatch.delenv("DEAOT_DOWNLOAD_TIMEOUT", raising=False)
    return path


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """Two different DeAOTT checkpoints with the same file name: (path_a, state_a, path_b, state_b)."""
    root = tmp_path_factory.mktemp("servers")
    a, b = root / "a" / "model.pth", root / "b" / "model.pth"
    state_a, state_b = _save_deaott(a, seed=1), _save_deaott(b, seed=2)
    assert not torch.equal(state_a["patch_wise_id_bank.weight"], state_b["patch_wise_id_bank.weight"])
    return a, state_a, b, state_b


@pytest.fixture
def plugin_weights(cache, monkeypatch, tiny_checkpoint):
    """deaot_core.pretrained (which the plugin's deaot_vos.weights re-exports) with a fresh cache dir, the demo
    checkpoint, an empty URL table and an empty model cache."""
    from deaot_core import pretrained as weights

    monkeypatch.setattr(weights, "DEMO_CHECKPOINT", Path(tiny_checkpoint))
    monkeypatch.setattr(weights, "OFFICIAL_WEIGHTS", {})
    monkeypatch.setattr(weights, "_MODELS", {})
    return weights


# -- item 4: the cache is keyed by the URL -------------------------------------------------------

def test_same_file_name_from_two_urls_loads_each_ones_weights(cache, two_checkpoints, tmp_path):
    a, state_a, b, state_b = two_checkpoints
    assert _same_weights(_load(a.as_uri()), state_a)
    assert _same_weights(_load(b.as_uri()), state_b)  # was: a's weights again, from cache/model.pth
    cached = sorted(cache.rglob("model.pth"))
    assert len(cached) == 2 and cached[0].parent != cached[1].parent  # readable name, one folder per URL
    # both stay cached: the second load of each comes from the cache, not from the source
    moved = tmp_path / "moved"
    shutil.copytree(a.parent.parent, moved)
    shutil.rmtree(a.parent.parent)
    try:
        assert _same_weights(_load(a.as_uri()), state_a)
        assert _same_weights(_load(b.as_uri()), state_b)
    finally:
        shutil.copytree(moved, a.parent.parent)


def test_explicit_url_through_the_plugin_loads_the_file_the_summary_names(plugin_weights, two_checkpoints):
    a, state_a, b, state_b = two_checkpoints
    weights = plugin_weights
    choice_a = weights.resolve_checkpoint("DeAOTT", a.as_uri())
    assert _same_weights(weights.load_model(choice_a), state_a)
    choice_b = weights.resolve_checkpoint("DeAOTT", b.as_uri())
    assert choice_b.describe() == f"DeAOTT from explicit checkpoint {b.as_uri()}"
    assert _same_weights(weights.load_model(choice_b), state_b)


def test_sha256_is_part_of_the_cache_key(cache, tmp_path):
    import hashlib

    source = tmp_path / "server" / "model.pth"
    state_1 = _save_deaott(source, seed=1)
    sha_1 = hashlib.sha256(source.read_bytes()).hexdigest()
    assert _same_weights(_load(source.as_uri(), sha256=sha_1), state_1)
    state_2 = _save_deaott(source, seed=2)  # the file behind the URL is replaced (a new release)
    sha_2 = hashlib.sha256(source.read_bytes()).hexdigest()
    assert _same_weights(_load(source.as_uri(), sha256=sha_2), state_2)
    # the first release is still cached under its own checksum (was: overwritten, then a mismatch)
    assert _same_weights(_load(source.as_uri(), sha256=sha_1), state_1)
    assert deaot_core.hub.url_cache_path(source.as_uri(), sha_1, cache).is_file()


def test_downloaded_file_that_does_not_load_is_removed_and_downloaded_again(cache, tmp_path, caplog):
    source = tmp_path / "server" / "model.pth"
    state = _save_deaott(source, seed=3)
    good = source.read_bytes()
    source.write_bytes(good[: len(good) // 2])  # a truncated file on the server
    caplog.set_level(logging.WARNING, logger="deaot_core.checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        _load(source.as_uri())
    assert list(cache.rglob("*.pth")) == [] and list(cache.rglob("*.part")) == []
    assert "removed the downloaded checkpoint" in caplog.text
    source.write_bytes(good)  # fixed on the server: the next try downloads it again
    assert _same_weights(_load(source.as_uri()), state)  # was: the truncated cached copy, "cannot read" again


def test_local_files_that_do_not_load_are_never_removed(cache, tmp_path):
    local = tmp_path / "mine" / "model.pth"
    _save_deaott(local, seed=4)
    truncated = local.read_bytes()[:1000]
    local.write_bytes(truncated)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        _load(local)  # a plain path
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        _load(str(local))
    assert local.read_bytes() == truncated
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        _load(local.as_uri())  # as a URL: only the downloaded copy in the cache goes
    assert local.read_bytes() == truncated and list(cache.rglob("*.pth")) == []


def test_official_download_that_does_not_load_is_removed(plugin_weights, cache, tmp_path, monkeypatch,
                                                          tiny_checkpoint):
    weights = plugin_weights
    monkeypatch.delenv("DEAOT_OFFLINE")
    source = tmp_path / "server" / "official.pth"
    source.parent.mkdir()
    good = Path(tiny_checkpoint).read_bytes()
    source.write_bytes(good[: len(good) // 3])
    weights.OFFICIAL_WEIGHTS["DeAOTT"] = deaot_core.PretrainedWeights("DeAOTT_PRE_YTB_DAV.pth", source.as_uri())
    official = cache / "DeAOTT_PRE_YTB_DAV.pth"  # the official layout: flat, under the official name

    choice = weights.resolve_checkpoint("DeAOTT")
    assert choice == weights.ModelChoice("DeAOTT", str(official), "url")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        weights.load_model(choice)
    assert not official.exists()  # was: kept, and picked up by the cache step on every later run
    source.write_bytes(good)
    choice = weights.resolve_checkpoint("DeAOTT")
    assert choice.source == "url" and official.read_bytes() == good
    weights.load_model(choice)
    assert weights.resolve_checkpoint("DeAOTT").source == "cache"

    # a broken file the user put in the cache dir by hand (source "cache") is not removed
    official.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(weights, "_MODELS", {})
    choice = weights.resolve_checkpoint("DeAOTT")
    assert choice.source == "cache"
    with pytest.raises(CheckpointError):
        weights.load_model(choice)
    assert official.read_bytes() == b"not a checkpoint"


# -- item 5: downloads time out ------------------------------------------------------------------

class _SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never sends a byte; it closes
    everything by itself after ``lifetime`` seconds (or when stopped)."""

    def __init__(self, lifetime: float = 8.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        held = []
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                try:
                    conn, _ = self.sock.accept()
                except (socket.timeout, BlockingIOError):
                    continue
                except OSError:
                    break
                self.accepted += 1
                held.append(conn)  # read nothing, answer nothing
        finally:
            for conn in held:
                conn.close()
            self.sock.close()

    def url(self, path: str = "/model.pth") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def silent_server():
    server = _SilentServer()
    yield server
    server.close()


def test_explicit_url_that_never_answers_times_out(cache, silent_server, monkeypatch):
    monkeypatch.setenv("DEAOT_DOWNLOAD_TIMEOUT", "1")
    url = silent_server.url()
    start = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        _load(url)  # was: no timeout at all, blocked until the server went away
    elapsed = time.monotonic() - start
    assert elapsed < 5, elapsed
    message = str(info.value)
    assert url in message and "timed out" in message and "1 s" in message and "DEAOT_DOWNLOAD_TIMEOUT" in message
    assert silent_server.accepted >= 1  # the connection was accepted: it is the read that timed out
    assert not cache.exists() or (list(cache.rglob("*.part")) == [] and list(cache.rglob("*.pth")) == [])


def test_timeout_parameter_of_download_and_load_checkpoint(cache, silent_server, tmp_path):
    url = silent_server.url("/weights/DeAOTT.pth")
    for call in (lambda: deaot_core.download(url, directory=tmp_path / "d", timeout=0.5),
                 lambda: _load(url, timeout=0.5)):
        start = time.monotonic()
        with pytest.raises(CheckpointError, match=r"downloading http://127\.0\.0\.1:\d+/weights/DeAOTT\.pth "
                                                  r"timed out.*within 0\.5 s"):
            call()
        assert time.monotonic() - start < 4
    assert list((tmp_path / "d").iterdir()) == []  # no partial file left


def test_default_download_timeout_and_its_env_override(monkeypatch):
    from deaot_core import hub

    monkeypatch.delenv("DEAOT_DOWNLOAD_TIMEOUT", raising=False)
    assert hub.DEFAULT_DOWNLOAD_TIMEOUT == 30.0
    assert hub.download_timeout() == 30.0 and hub.download_timeout(10.0) == 10.0
    monkeypatch.setenv("DEAOT_DOWNLOAD_TIMEOUT", "2.5")
    assert hub.download_timeout() == 2.5 and hub.download_timeout(10.0) == 2.5
    for bad in ("0", "-1", "soon", "inf", "nan"):
        monkeypatch.setenv("DEAOT_DOWNLOAD_TIMEOUT", bad)
        with pytest.raises(CheckpointError, match="DEAOT_DOWNLOAD_TIMEOUT"):
            hub.download_timeout()


def test_plugin_explicit_url_that_never_answers_times_out(plugin_weights, silent_server, monkeypatch):
    weights = plugin_weights
    monkeypatch.setenv("DEAOT_DOWNLOAD_TIMEOUT", "1")
    choice = weights.resolve_checkpoint("DeAOTT", silent_server.url())
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="timed out"):
        weights.load_model(choice)
    assert time.monotonic() - start < 5


def test_official_download_honours_the_env_timeout(plugin_weights, silent_server, monkeypatch, caplog):
    weights = plugin_weights
    monkeypatch.delenv("DEAOT_OFFLINE")
    monkeypatch.setenv("DEAOT_DOWNLOAD_TIMEOUT", "1")
    weights.OFFICIAL_WEIGHTS["DeAOTT"] = deaot_core.PretrainedWeights("DeAOTT_PRE_YTB_DAV.pth",
                                                                      silent_server.url("/uc?id=x"))
    caplog.set_level(logging.INFO, logger="deaot_core.pretrained")
    start = time.monotonic()
    assert weights.resolve_checkpoint("DeAOTT").source == "demo"  # a warning, then the demo checkpoint
    assert time.monotonic() - start < 5  # was: the fixed 10 s DOWNLOAD_TIMEOUT
    assert "timed out" in caplog.text and "(timeout 1.0s)" in caplog.text
