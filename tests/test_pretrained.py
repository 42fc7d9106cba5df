"""Pretrained weights in the core (``deaot_core.pretrained``): one call from a name to a ready
model, the shipped demo weights found through the package, weights identified by their content,
and checkpoints holding NaN / Inf refused.

Real checkpoints (saved DeAOTT state dicts), real ``file://`` URLs downloaded into the cache, and
real incremental ``deaot_vos.propagate`` runs on a real FiftyOne database.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import deaot_core
from deaot_core import pretrained
from deaot_core.errors import CheckpointError

from helpers import detection

T = 8


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache dir, offline, nothing remembered from earlier tests."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEAOT_CACHE", str(cache))
    monkeypatch.setenv("DEAOT_OFFLINE", "1")
    monkeypatch.setattr(pretrained, "_MODELS", {})
    monkeypatch.setattr(pretrained, "_DIGESTS", {})
    return cache


def _save_deaott(path: Path, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = deaot_core.build_model("DeAOTT")
    deaot_core.save_checkpoint(model, path)
    return model.state_dict()


# -- load_pretrained ------------------------------------------------------------------------------

def test_load_pretrained_offline_with_an_empty_cache_gives_the_shipped_demo_weights(fresh_cache):
    demo = Path(deaot_core.__file__).parent / "weights" / "deaot_t_synthetic.pth"
    assert pretrained.DEMO_CHECKPOINT == demo and demo.is_file()  # package data, not the repository layout
    model = deaot_core.load_pretrained("R50_DeAOTL", device="cpu")
    assert model.pretrained == pretrained.ModelChoice("DeAOTT", str(demo), "demo")
    assert model.cfg.name == "DeAOTT" and not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert model.preferred_group_size == 5  # read from the shipped file


def test_load_pretrained_explicit_checkpoint_and_nothing_found(fresh_cache, tmp_path, monkeypatch):
    path = tmp_path / "mine.pth"
    state = _save_deaott(path, seed=3)
    model = deaot_core.load_pretrained("deaott", checkpoint=path, device="cpu")
    assert model.pretrained == pretrained.ModelChoice("DeAOTT", str(path), "explicit")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    monkeypatch.setattr(pretrained, "DEMO_CHECKPOINT", tmp_path / "no-demo.pth")
    with pytest.raises(deaot_core.ModelUnavailableError, match="R50_DeAOTL_PRE_YTB_DAV.pth"):
        deaot_core.load_pretrained("R50_DeAOTL", device="cpu")
    assert deaot_core.load_pretrained("DeAOTT", device="cpu", allow_random=True).pretrained.source == "random"


def test_the_plugin_names_are_the_core_ones():
    from deaot_vos import weights

    for name in ("resolve_checkpoint", "load_model", "weights_identity", "ModelUnavailableError", "ModelChoice",
                 "DEFAULT_MODEL", "DEMO_CHECKPOINT", "OFFICIAL_WEIGHTS", "load_pretrained"):
        assert getattr(weights, name) is getattr(pretrained, name), name


# -- item 7: non-finite weights ------------------------------------------------------------------

def _poisoned_checkpoint(path: Path) -> tuple[str, str]:
    """A DeAOTT checkpoint with one NaN in one tensor and Infs in a later one; returns their names."""
    torch.manual_seed(0)
    state = deaot_core.build_model("DeAOTT").state_dict()
    floats = [k for k, v in state.items() if v.is_floating_point() and v.numel() > 4]
    first, later = floats[len(floats) // 2], floats[-1]
    state[first].view(-1)[3] = float("nan")
    state[later].view(-1)[:2] = float("inf")
    torch.save({"state_dict": state, "model_name": "DeAOTT"}, path)
    return first, later


def test_a_checkpoint_with_nan_or_inf_is_refused_naming_the_first_bad_tensor(fresh_cache, tmp_path):
    path = tmp_path / "diverged.pth"
    first, _ = _poisoned_checkpoint(path)
    with pytest.raises(CheckpointError, match=rf"non-finite weights: tensor {first} has 1 NaN and 0 Inf .*"
                                              rf"\(2 of \d+ tensors are affected\)"):
        deaot_core.load_checkpoint(deaot_core.build_model("DeAOTT"), path)
    with pytest.raises(CheckpointError, match=f"tensor {first}"):
        deaot_core.load_pretrained("DeAOTT", checkpoint=path, device="cpu")


def test_propagate_with_a_nan_checkpoint_fails_and_writes_nothing(fiftyone_db, make_video, fresh_cache, tmp_path):
    import deaot_vos

    path, maps = make_video("nan", T, objects=2)
    ds = _dataset("pretrained_nan", path, maps[0])
    bad = tmp_path / "diverged.pth"
    first, _ = _poisoned_checkpoint(bad)
    with pytest.raises(CheckpointError, match=f"tensor {first}"):
        deaot_vos.propagate(ds, "kf", "out", model="DeAOTT", checkpoint=str(bad), device="cpu")
    assert "out" not in ds.get_frame_field_schema()


# -- item 5: weights identified by content ------------------------------------------------------

def _dataset(name: str, path: str, keyframe: np.ndarray):
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    sample = fo.Sample(filepath=path)
    sample.frames[1]["kf"] = fo.Detections(detections=[
        detection(f"object{i}", keyframe == i) for i in sorted(set(np.unique(keyframe)) - {0})])
    ds.add_sample(sample)
    return ds


def _masks(ds, field: str) -> list[list[bytes]]:
    return [[d.mask.tobytes() for d in dets.detections] for dets in ds.values(f"frames.{field}")[0]]


def test_incremental_run_recomputes_when_the_weights_behind_a_url_change(fiftyone_db, make_video, tmp_path,
                                                                        monkeypatch, torch_threads):
    """The same checkpoint URL serves other weights for the second run (a new release; here a
    second worker with its own cache dir downloads it): every frame is recomputed and equals a
    full run with the new weights (was: "0 recomputed", the old weights' masks kept)."""
    import deaot_vos

    monkeypatch.setattr(pretrained, "_MODELS", {})
    source = tmp_path / "server" / "model.pth"
    _save_deaott(source, seed=1)
    url = source.as_uri()
    path, maps = make_video("url_weights", T, objects=2)
    ds = _dataset("pretrained_url_weights", path, maps[0])
    options = dict(model="DeAOTT", checkpoint=url, device="cpu", incremental=True)

    monkeypatch.setenv("DEAOT_CACHE", str(tmp_path / "worker1"))
    first, = deaot_vos.propagate(ds, "kf", "out", **options)["samples"]
    assert (first["frames_recomputed"], first["frames_reused"]) == (T, 0)
    again, = deaot_vos.propagate(ds, "kf", "out", **options)["samples"]  # same weights: all reused
    assert (again["frames_recomputed"], again["frames_reused"]) == (0, T)
    old = _masks(ds, "out")

    _save_deaott(source, seed=2)  # new weights behind the same URL
    monkeypatch.setenv("DEAOT_CACHE", str(tmp_path / "worker2"))
    second, = deaot_vos.propagate(ds, "kf", "out", **options)["samples"]
    assert (second["frames_recomputed"], second["frames_reused"]) == (T, 0)
    deaot_vos.propagate(ds, "kf", "full", model="DeAOTT", checkpoint=str(source), device="cpu")
    assert _masks(ds, "out") == _masks(ds, "full") != old


def test_weights_identity_is_the_content_of_the_file_loaded(fresh_cache, tmp_path):
    a, b = tmp_path / "a" / "model.pth", tmp_path / "b" / "model.pth"
    _save_deaott(a, seed=1)
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    digest = hashlib.sha256(a.read_bytes()).hexdigest()
    ids = {pretrained.weights_identity(pretrained.ModelChoice("DeAOTT", str(p), "explicit"))
           for p in (a, b, a.as_uri(), b.as_uri())}
    assert ids == {f"DeAOTT:sha256:{digest}"}  # same bytes: same weights, whatever the path or URL
    random = pretrained.ModelChoice("DeAOTT", None, "random")
    assert pretrained.weights_identity(random) != pretrained.weights_identity(random)


def test_digests_are_remembered_per_path_size_and_mtime(fresh_cache, tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    _save_deaott(path, seed=1)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert pretrained.checkpoint_digest(path) == digest
    [record] = (fresh_cache / "digests").iterdir()
    assert record.read_text() == digest
    # a new process (nothing in memory) reads the record instead of the file
    monkeypatch.setattr(pretrained, "_DIGESTS", {})
    monkeypatch.setattr(pretrained, "sha256_of", lambda p: pytest.fail("hashed again"))
    assert pretrained.checkpoint_digest(path) == digest
    monkeypatch.setattr(pretrained, "sha256_of", deaot_core.hub.sha256_of)
    # the file changes (same size, other bytes, new mtime): hashed again
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert pretrained.checkpoint_digest(path) == hashlib.sha256(bytes(data)).hexdigest() != digest
    # an unwritable cache only costs the re-hash
    monkeypatch.setenv("DEAOT_CACHE", str(path))  # a file where the folder should be
    monkeypatch.setattr(pretrained, "_DIGESTS", {})
    assert pretrained.checkpoint_digest(path) == hashlib.sha256(bytes(data)).hexdigest()
