"""Incremental re-runs reuse a frame only when the previous output holds every field the run
writes: a new segmentation field, or one deleted since the last run, is filled on every frame
(real DeAOTT with random weights, a real video and database)."""
from __future__ import annotations

import pytest
from helpers import detection

pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")

T = 8


def _dataset(name, make_video):
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    path, maps = make_video(name, T, objects=2, height=48, width=64)
    sample = fo.Sample(filepath=path)
    for n in (2, 6):
        sample.frames[n]["kf"] = fo.Detections(detections=[detection("red", maps[n - 1] == 1),
                                                           detection("green", maps[n - 1] == 2)])
    ds.add_sample(sample)
    return ds


def _label_maps(ds, field):
    return [None if seg is None else seg.mask.tobytes() for seg in ds.values(f"frames.{field}")[0]]


def test_a_new_or_deleted_segmentation_field_is_filled_by_an_incremental_run(make_video, tiny_checkpoint, tmp_path,
                                                                             monkeypatch):
    import deaot_vos

    monkeypatch.setenv("DEAOT_CACHE", str(tmp_path / "cache"))
    ds = _dataset("incremental_seg", make_video)
    run = dict(model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu", incremental=True)
    first, = deaot_vos.propagate(ds, "kf", "out", write_segmentation="seg", **run)["samples"]
    assert (first["frames_recomputed"], first["frames_reused"]) == (T, 0) and ds.count("frames.seg") == T
    full = _label_maps(ds, "seg")

    # another segmentation field: it has no previous value, so nothing can be reused for it
    second, = deaot_vos.propagate(ds, "kf", "out", write_segmentation="seg2", **run)["samples"]
    assert second["status"] == "ok" and ds.count("frames.seg2") == T, second
    assert second["frames_recomputed"] == T
    assert _label_maps(ds, "seg2") == full

    # the segmentation field deleted in between
    ds.delete_frame_field("seg")
    third, = deaot_vos.propagate(ds, "kf", "out", write_segmentation="seg", **run)["samples"]
    assert third["status"] == "ok" and ds.count("frames.seg") == T, third
    assert _label_maps(ds, "seg") == full

    # and with every output in place, everything is reused
    fourth, = deaot_vos.propagate(ds, "kf", "out", write_segmentation="seg", **run)["samples"]
    assert (fourth["frames_recomputed"], fourth["frames_reused"]) == (0, T)
    assert _label_maps(ds, "seg") == full and None not in full
