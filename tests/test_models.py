"""Default weight resolution (issue 3): explicit path > the official file in the cache dir > the
official URL (when online) > the shipped demo checkpoint, each step logged.

The suite runs with ``DEAOT_OFFLINE=1`` (tests/conftest.py); the tests that need the download
step unset it and put ``file://`` URLs, a closed local port or a loopback HTTP server in the
URL table, so nothing here touches the network.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import deaot_core

HTML_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head>"
             b"<body><p>Too many users have viewed or downloaded this file recently.</p></body></html>")


@pytest.fixture
def weights(tmp_path, monkeypatch, tiny_checkpoint):
    """A fresh cache dir, the demo checkpoint present, an empty URL table; returns the core module
    that resolves weights (``deaot_core.pretrained``)."""
    from deaot_core import pretrained as weights_module

    monkeypatch.setenv("DEAOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights_module, "DEMO_CHECKPOINT", Path(tiny_checkpoint))
    monkeypatch.setattr(weights_module, "OFFICIAL_WEIGHTS", {})
    return weights_module


def _messages(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_official_table_covers_every_model():
    from deaot_vos import weights

    assert weights.OFFICIAL_WEIGHTS is deaot_core.WEIGHTS  # one table, in the core
    assert set(deaot_core.WEIGHTS) == set(deaot_core.MODEL_NAMES)
    for name, entry in deaot_core.WEIGHTS.items():
        assert entry.url.startswith("https://drive.google.com/uc?export=download&id=") and entry.sha256 is None
        assert entry.file_name == f"{name}_PRE_YTB_DAV.pth" == weights.official_checkpoint_name(name)


def test_order_explicit_cache_url_demo(weights, tmp_path, monkeypatch, tiny_checkpoint, caplog):
    caplog.set_level(logging.INFO, logger="deaot_core.pretrained")
    source = tmp_path / "server" / "official.pth"
    source.parent.mkdir()
    shutil.copy(tiny_checkpoint, source)
    weights.OFFICIAL_WEIGHTS["DeAOTT"] = deaot_core.PretrainedWeights("DeAOTT_PRE_YTB_DAV.pth", source.as_uri())
    cached = tmp_path / "cache" / "DeAOTT_PRE_YTB_DAV.pth"

    # offline (the suite's DEAOT_OFFLINE=1, or offline=True): the URL is not tried, the demo is used
    assert weights.resolve_checkpoint("DeAOTT").source == "demo"
    assert weights.resolve_checkpoint("DeAOTT", offline=True).source == "demo"
    assert not cached.exists()
    assert "offline" in _messages(caplog) and "falling back to the shipped demo checkpoint" in _messages(caplog)

    # online, nothing cached: downloaded from the URL into the cache under the official name
    monkeypatch.delenv("DEAOT_OFFLINE")
    caplog.clear()
    choice = weights.resolve_checkpoint("DeAOTT")
    assert choice == weights.ModelChoice("DeAOTT", str(cached), "url")
    assert cached.read_bytes() == source.read_bytes()
    assert not [p for p in cached.parent.iterdir() if p.suffix == ".part"]
    log = _messages(caplog)
    assert "no DeAOTT_PRE_YTB_DAV.pth in the cache dir" in log and "downloading the official DeAOTT" in log
    weights.load_model(choice)  # a real checkpoint of the requested model

    # now cached: the URL is not needed any more (the source may vanish)
    source.unlink()
    assert weights.resolve_checkpoint("DeAOTT") == weights.ModelChoice("DeAOTT", str(cached), "cache")
    # an explicit path wins over everything
    assert weights.resolve_checkpoint("DeAOTT", tiny_checkpoint) == \
        weights.ModelChoice("DeAOTT", tiny_checkpoint, "explicit")
    # a model without a URL skips the step (logged) and falls back to the demo
    caplog.clear()
    assert weights.resolve_checkpoint("DeAOTS").source == "demo"
    assert "no official download URL for DeAOTS" in _messages(caplog)


def test_unreachable_url_falls_through_to_the_demo(weights, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("DEAOT_OFFLINE")
    weights.OFFICIAL_WEIGHTS["DeAOTT"] = deaot_core.PretrainedWeights("DeAOTT_PRE_YTB_DAV.pth",
                                                                      "http://127.0.0.1:9/x.pth")
    caplog.set_level(logging.INFO, logger="deaot_core.pretrained")
    start = time.monotonic()
    choice = weights.resolve_checkpoint("DeAOTT")
    assert time.monotonic() - start < weights.DOWNLOAD_TIMEOUT + 5
    assert choice.source == "demo"
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING][0]
    assert "could not download the official DeAOTT checkpoint from http://127.0.0.1:9/x.pth" in warning
    assert "DEAOT_OFFLINE=1" in warning
    assert not any((tmp_path / "cache").iterdir())  # nothing half-downloaded
    # without the demo checkpoint: refused, saying where to put the file
    monkeypatch.setattr(weights, "DEMO_CHECKPOINT", tmp_path / "no-demo.pth")
    with pytest.raises(weights.ModelUnavailableError, match="DeAOTT_PRE_YTB_DAV.pth"):
        weights.resolve_checkpoint("DeAOTT")


def test_a_web_page_instead_of_a_checkpoint_is_refused(weights, tmp_path, monkeypatch, caplog):
    from deaot_core.hub import CheckpointError, download

    page = tmp_path / "server" / "DeAOTT.pth"  # named like a checkpoint, holds a web page
    page.parent.mkdir()
    page.write_bytes(HTML_PAGE)
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match=r"returned a web page \('Google Drive - Quota exceeded'\), not a "
                                              r"checkpoint.*Download the file by hand"):
        download(page.as_uri(), directory=cache, filename="DeAOTT_PRE_YTB_DAV.pth", timeout=5)
    assert not any(cache.iterdir())  # the page is not cached as a checkpoint
    # as an explicit checkpoint URL: the same clear error when loading
    with pytest.raises(CheckpointError, match="returned a web page"):
        deaot_core.load_checkpoint(deaot_core.build_model("DeAOTT"), page.as_uri())
    # as the official URL of the default resolution: a warning, then the demo checkpoint
    monkeypatch.delenv("DEAOT_OFFLINE")
    weights.OFFICIAL_WEIGHTS["DeAOTT"] = deaot_core.PretrainedWeights("DeAOTT_PRE_YTB_DAV.pth", page.as_uri())
    caplog.set_level(logging.INFO, logger="deaot_core.pretrained")
    assert weights.resolve_checkpoint("DeAOTT").source == "demo"
    assert "CheckpointError" in _messages(caplog) and "returned a web page" in _messages(caplog)
    assert not (cache / "DeAOTT_PRE_YTB_DAV.pth").exists()


class _Drive(BaseHTTPRequestHandler):
    """Loopback stand-in for Google Drive: ``/uc?id=big`` answers the large-file warning page
    (a form), ``/uc?id=old`` the older page (a link with a confirm token), ``/uc?id=quota`` a
    page without a way on; ``/download`` and confirmed ``/uc`` requests return the file."""

    payload = b""

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if url.path == "/download" and query == dict(id="big", export="download", confirm="t", uuid="u-1"):
            return self._send(self.payload, "application/octet-stream")
        if url.path == "/uc" and query.get("confirm") == "Tok3n" and query.get("id") == "old":
            return self._send(self.payload, "application/octet-stream")
        if url.path == "/uc" and query.get("id") == "big":
            form = (f'<form id="download-form" action="{base}/download" method="get">'
                    '<input type="submit" value="Download anyway"/>'
                    '<input type="hidden" name="id" value="big"><input type="hidden" name="export" value="download">'
                    '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-1">'
                    '</form>')
            return self._send(f"<!DOCTYPE html><html><head><title>Warning</title></head><body>{form}</body>"
                              f"</html>".encode(), "text/html; charset=utf-8")
        if url.path == "/uc" and query.get("id") == "old":
            return self._send(b'<html><body><a href="/uc?export=download&amp;confirm=Tok3n&amp;id=old">'
                              b'Download anyway</a></body></html>', "text/html")
        return self._send(HTML_PAGE, "text/html")


@pytest.fixture
def drive(tiny_checkpoint):
    _Drive.payload = Path(tiny_checkpoint).read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Drive)
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("file_id", ["big", "old"])
def test_google_drive_warning_page_is_confirmed(drive, file_id, tmp_path, tiny_checkpoint):
    from deaot_core.hub import download

    path = download(f"{drive}/uc?export=download&id={file_id}", directory=tmp_path, filename="X.pth", timeout=5)
    assert path == tmp_path / "X.pth" and path.read_bytes() == Path(tiny_checkpoint).read_bytes()


def test_google_drive_page_without_a_way_on_is_refused(drive, tmp_path):
    from deaot_core.hub import CheckpointError, download

    with pytest.raises(CheckpointError, match="Quota exceeded"):
        download(f"{drive}/uc?export=download&id=quota", directory=tmp_path, filename="X.pth", timeout=5)
    assert not any(tmp_path.iterdir())
