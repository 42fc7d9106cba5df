"""The annotation loop on a real FiftyOne dataset and real videos: bidirectional propagation,
incremental re-runs that recompute only the frames whose keyframes changed (and equal a full
run), and "where to label next" suggestions."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import detection

pytestmark = pytest.mark.usefixtures("fiftyone_db")

T = 14


def _dataset(name: str, path: str, keyframes: dict[int, np.ndarray]):
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    sample = fo.Sample(filepath=path)
    for number, label_map in keyframes.items():
        names = {1: "red", 2: "green", 3: "blue"}
        sample.frames[number]["kf"] = fo.Detections(detections=[
            detection(names[i], label_map == i) for i in sorted(set(np.unique(label_map)) - {0})])
    ds.add_sample(sample)
    return ds


def _frames(ds, field: str) -> dict[int, list[tuple]]:
    """frame number -> [(label, index, bbox, mask bytes, confidence, agreement)] of ``field``."""
    numbers, values = ds.values(["frames.frame_number", f"frames.{field}"])
    out = {}
    for number, dets in zip(numbers[0], values[0]):
        out[number] = [(d.label, d.index, tuple(d.bounding_box), d.mask.tobytes(), d.confidence,
                        d.get_field("agreement") if d.has_field("agreement") else None)
                       for d in dets.detections]
    return out


def test_editing_the_last_keyframe_recomputes_only_dependent_frames_and_equals_a_full_run(
        make_video, tiny_checkpoint, tmp_path, monkeypatch):
    """Bidirectional here (the forward-only rule is checked on the core API, test_video_loop.py)."""
    import deaot_vos

    bidirectional = True
    monkeypatch.setenv("DEAOT_CACHE", str(tmp_path / "cache"))
    path, maps = make_video("loop", T, objects=2)
    keyframes = {2: maps[1], 7: maps[6], 12: maps[11]}
    ds = _dataset(f"loop_{bidirectional}", path, keyframes)
    options = dict(model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu", bidirectional=bidirectional,
                   incremental=True)
    first, = deaot_vos.propagate(ds, "kf", "out", **options)["samples"]
    assert (first["frames_recomputed"], first["frames_reused"]) == (T, 0)

    # the user corrects the last keyframe: object 2 is given smaller
    edited = maps[11].copy()
    edited[edited == 2] = 0
    edited[30:40, 40:50] = 2
    sample = ds.first()
    sample.frames[12]["kf"] = _dataset_free_detections(edited)
    sample.save()
    second, = deaot_vos.propagate(ds, "kf", "out", **options)["samples"]
    dependent = T - (7 if bidirectional else 11)  # frames 8..14 (the fused gap 8..11 too) or 12..14
    assert (second["frames_recomputed"], second["frames_reused"]) == (dependent, T - dependent)
    assert second["frames_replayed"] == 0 and second["frames_written"] == T

    deaot_vos.propagate(ds, "kf", "full", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu",
                        bidirectional=bidirectional)
    incremental, full = _frames(ds, "out"), _frames(ds, "full")
    assert sorted(incremental) == list(range(1, T + 1))
    assert incremental == full
    if bidirectional:
        assert all(a is not None for number in range(3, 7) for *_, a in incremental[number])
    # nothing changed: nothing is recomputed, the output stays
    third, = deaot_vos.propagate(ds, "kf", "out", **options)["samples"]
    assert (third["frames_recomputed"], third["frames_reused"]) == (0, T)
    assert _frames(ds, "out") == full


def _dataset_free_detections(label_map: np.ndarray):
    import fiftyone as fo

    names = {1: "red", 2: "green"}
    return fo.Detections(detections=[detection(names[i], label_map == i) for i in sorted(set(np.unique(label_map)) - {0})])


def test_incremental_needs_no_overwrite_and_a_foreign_output_is_recomputed(make_video, tiny_checkpoint, tmp_path,
                                                                            monkeypatch):
    import fiftyone as fo
    import deaot_vos

    monkeypatch.setenv("DEAOT_CACHE", str(tmp_path / "cache"))
    path, maps = make_video("foreign", 8, objects=2)
    ds = _dataset("loop_foreign", path, {1: maps[0]})
    sample = ds.first()
    for number in range(1, 9):  # an output written by something else: no signatures
        sample.frames[number]["out"] = fo.Detections(detections=[])
    sample.save()
    with pytest.raises(deaot_vos.OutputExistsError):
        deaot_vos.propagate(ds, "kf", "out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu")
    row, = deaot_vos.propagate(ds, "kf", "out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu",
                               incremental=True)["samples"]
    assert (row["frames_recomputed"], row["frames_reused"]) == (8, 0)
    assert all(len(d.detections) > 0 for d in ds.values("frames.out")[0])


def test_a_cvat_style_track_field_propagates_from_its_marked_keyframes(make_video, tiny_checkpoint):
    """A track labelled on every frame with keyframe=True on the annotated frames: only those are
    keyframes (auto), so the other frames are propagated, not copied; "off" takes every frame."""
    import fiftyone as fo
    import deaot_vos
    from deaot_vos.label_frames import keep_marked_keyframes, read_label_frames

    path, maps = make_video("track", 8, objects=2)
    ds = _dataset("loop_track", path, {})
    sample = ds.first()
    for number in range(1, 9):
        shifted = np.roll(maps[number - 1], 3 * (number not in (1, 6)), axis=1)  # interpolations are off
        sample.frames[number]["track"] = fo.Detections(detections=[
            detection(name, shifted == i, index=i, keyframe=number in (1, 6)) for i, name in ((1, "red"), (2, "green"))])
    sample.save()
    frames = read_label_frames(ds, sample.id, "track")
    assert [n for n, _ in keep_marked_keyframes(frames)] == [1, 6]
    assert [n for n, _ in keep_marked_keyframes(frames, "off")] == list(range(1, 9))
    row, = deaot_vos.propagate(ds, "track", "out", model="DeAOTT", checkpoint=tiny_checkpoint,
                               device="cpu")["samples"]
    assert row["keyframes"] == [1, 6] and row["frames_written"] == 8
    row, = deaot_vos.propagate(ds, "track", "all", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu",
                               keyframe_marks="off")["samples"]
    assert row["keyframes"] == list(range(1, 9))
    with pytest.raises(ValueError, match="keyframe_marks"):
        deaot_vos.PropagationOptions("track", "x", keyframe_marks="sometimes")
