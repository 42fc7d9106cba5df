"""Saved tracker states are an optimisation that never changes a result: a damaged state file is
detected (its sha256) and recomputed, and a state folder that cannot be written (a file in its
place, a full disk) costs a warning, once, not the run. Real DeAOTT with random weights."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from deaot_core import states as state_module
from deaot_core.states import DirectoryStates
from deaot_core.propagation import PropagationStats
from test_video_loop import assert_same_results, boxes, frames, model, run  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0x5A for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def test_damaged_saved_states_are_recomputed_not_used(model, frames, tmp_path, caplog):
    keyframes = {2: boxes(2), 6: boxes(6), 10: boxes(10)}
    store = DirectoryStates(tmp_path / "states")
    first = run(model, frames, keyframes, states=store)
    saved = sorted((tmp_path / "states").glob("*.pt"))
    assert saved
    for path in saved:
        _damage(path)
    edited = {**keyframes, 10: boxes(10, blue=3)}  # the last keyframe gains an object
    stats = PropagationStats()
    with caplog.at_level(logging.WARNING, logger="deaot_core.states"):
        partial = run(model, frames, edited, states=store, previous={t: r.signature for t, r in first.items()},
                      stats=stats)
    assert stats.resumed_from is None, "a damaged state was used"
    assert "sha256 does not match" in caplog.text
    full = run(model, frames, edited)
    assert_same_results(partial, {t: full[t] for t in partial})


def test_a_file_where_the_state_folder_should_be_warns_once_and_runs(model, frames, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(state_module, "_warned_unwritable", set(), raising=False)
    blocker = tmp_path / "states"
    blocker.write_text("not a folder")
    store = DirectoryStates(blocker)
    keyframes = {2: boxes(2), 6: boxes(6)}
    with caplog.at_level(logging.WARNING, logger="deaot_core.states"):
        first = run(model, frames, keyframes, states=store)
        again = run(model, frames, keyframes, states=store)
    assert_same_results(first, run(model, frames, keyframes))
    assert_same_results(again, first)
    warnings = [r for r in caplog.records if "cannot save tracker states" in r.getMessage()]
    assert len(warnings) == 1 and blocker.read_text() == "not a folder"


# a full disk, for real: the file size limit makes every write beyond 2 kB fail (EFBIG)
_FULL_DISK = r'''
import resource, signal, sys
import numpy as np, torch
import deaot_core
from deaot_core import Tracker, propagate_video
from deaot_core.states import DirectoryStates
sys.path.insert(0, sys.argv[2])
from test_video_loop import H, T, W, boxes
torch.manual_seed(0)
torch.set_num_threads(1)
model = deaot_core.build_model("DeAOTT")
rng = np.random.RandomState(1)
frames = rng.randint(0, 60, size=(T, H, W, 3)).astype(np.uint8)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
store = DirectoryStates(sys.argv[1])
for _ in range(2):
    results = list(propagate_video(Tracker(model), frames, {2: boxes(2), 6: boxes(6)}, states=store))
    assert len(results) == T
print("ran twice")
'''


def test_a_full_disk_under_the_state_folder_warns_and_runs(tmp_path):
    out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "states"), str(REPO / "tests")],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0 and "ran twice" in out.stdout, out.stderr[-3000:]
    assert out.stderr.count("cannot save tracker states") == 1, out.stderr[-3000:]
