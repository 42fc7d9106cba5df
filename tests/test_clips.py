"""Clip views (``to_clips``) through ``deaot_vos.propagate`` and ``@deaot/vos/propagate_masks``:
each clip propagates within its own frames from the keyframes inside it, only its frames are
written, two clips of one video do not overwrite each other, and the run's safety properties
(overwrite refusal, nothing written on cancel, incremental re-runs) hold. The output on the clip
frames equals what ``apply_model`` with the zoo model writes on the same clip view, whose label
maps get mask targets with background. Real database, real decord-decoded videos, the demo
checkpoint."""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest

from helpers import detection

pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")

NAMES = {1: "red", 2: "green"}
CLIPS = [(4, 8), (10, 15)]  # two clips of one 16-frame video; frames 1-3, 9 and 16 lie outside both


@pytest.fixture
def dataset(make_video):
    """A 16-frame video: keyframes (``kf``) on frames 2 (both objects), 6 (object 1), 12
    (object 2) and 14 (object 1); ``events`` (TemporalDetections) marks the two clips; ``note`` is another field."""
    import fiftyone as fo

    path, maps = make_video("clips", num_frames=16, objects=2)
    ds = fo.Dataset()
    sample = fo.Sample(filepath=path, events=fo.TemporalDetections(detections=[
        fo.TemporalDetection(label="shot", support=list(support)) for support in CLIPS]))
    ds.add_sample(sample)
    for number, objects in {2: [1, 2], 6: [1], 12: [2], 14: [1]}.items():
        sample.frames[number]["kf"] = fo.Detections(
            detections=[detection(NAMES[k], maps[number - 1] == k) for k in objects])
    for number in (3, 9, 13):
        sample.frames[number]["note"] = fo.Classification(label=f"note {number}")
    sample.save()
    return ds


def _masks(detections) -> list[tuple]:
    if detections is None:
        return []
    return sorted((d.label, d.index, tuple(d.bounding_box), hashlib.sha1(np.ascontiguousarray(d.mask)).hexdigest(),
                   round(d.confidence, 6)) for d in detections.detections)


def _field(ds, field: str) -> dict[int, object]:
    """Frame number -> the raw value of ``field`` (label ids included) on every frame document."""
    numbers, values = ds.values(["frames.frame_number", "frames." + field])
    return dict(zip(numbers[0], values[0]))


def _outside(frames: dict[int, object]) -> dict[int, object]:
    """The values (None dropped) on frames outside both clips."""
    return {n: v for n, v in frames.items() if v is not None and not any(a <= n <= b for a, b in CLIPS)}


def _all_masks(frames: dict[int, object]) -> dict[int, list]:
    return {n: _masks(v) for n, v in frames.items() if v is not None}


def test_clip_view_end_to_end_equals_apply_model_and_keeps_other_frames(dataset):
    import deaot_vos
    from deaot_vos import weights
    from deaot_vos.zoo_model import build_video_model

    ds = dataset
    deaot_vos.propagate(ds, "kf", "out", device="cpu")  # a whole-video output the clip run must keep outside
    before, notes, frame_docs = _field(ds, "out"), _field(ds, "note"), ds.count("frames")
    clips = ds.to_clips("events")
    assert clips.values("support") == [list(s) for s in CLIPS]

    with pytest.raises(deaot_vos.OutputExistsError, match="frame field 'out' already exists"):
        deaot_vos.propagate(clips, "kf", "out", device="cpu")
    assert _field(ds, "out") == before

    summary = deaot_vos.propagate(clips, "kf", "out", device="cpu", overwrite=True, write_segmentation="out_seg")
    rows = summary["samples"]
    sample_id = ds.first().id
    assert [(r["id"], r["clip_id"], r["support"], r["status"]) for r in rows] == [
        (sample_id, cid, list(s), "ok") for cid, s in zip(clips.values("id"), CLIPS)]
    assert [r["keyframes"] for r in rows] == [[6], [12, 14]]  # each clip's own keyframes, the video's numbering
    assert [r["frames_written"] for r in rows] == [5, 6]

    after = _field(ds, "out")
    assert _outside(after) == _outside(before), "frames outside the clips keep their values (label ids too)"
    assert _field(ds, "note") == notes and ds.count("frames") == frame_docs
    # clip 1 propagates from frame 6 only: object 2 (given on frame 2, outside it) is not there
    assert {d.label for n in range(4, 9) for d in after[n].detections} == {"red"}
    # clip 2: frames 10-11 come from the backward pass from its first keyframe 12 (object 2 only)
    assert {d.label for n in (10, 11, 12) for d in after[n].detections} == {"green"}
    assert {d.label for d in after[14].detections} == {"red", "green"}
    assert {n for n in range(1, 17) if _field(ds, "out_seg").get(n) is not None} == set(range(4, 9)) | set(range(10, 16))

    model = build_video_model("DeAOTT", checkpoint=str(weights.DEMO_CHECKPOINT), device="cpu", segmentation=True)
    clips.apply_model(model, label_field={"detections": "zoo", "segmentation": "zoo_seg"}, prompt_field="frames.kf")
    zoo = _field(ds, "zoo")
    assert sorted(n for n, v in zoo.items() if v is not None) == [n for a, b in CLIPS for n in range(a, b + 1)]
    assert _all_masks(zoo) == {n: _masks(after[n]) for n in _all_masks(zoo)}
    ours, theirs = _field(ds, "out_seg"), _field(ds, "zoo_seg")
    assert all(np.array_equal(ours[n].mask, theirs[n].mask) for n in theirs if theirs[n] is not None)
    # label maps written through apply_model get mask targets with background, as propagate's do
    ds.reload()
    # (indexes are per clip: red is 1 in clip 1, green 1 and red 2 in clip 2; the first clip's label wins)
    assert ds.mask_targets["frames.zoo_seg"] == ds.mask_targets["frames.out_seg"] == {0: "background", 1: "red",
                                                                                      2: "red"}
    assert "frames.zoo" not in ds.mask_targets


def test_incremental_clip_runs_reuse_their_frames_and_recompute_from_an_edited_keyframe(dataset):
    import deaot_vos

    ds = dataset
    clips = ds.to_clips("events")
    deaot_vos.propagate(clips, "kf", "out", device="cpu", bidirectional=True)
    first = _field(ds, "out")
    assert _outside(first) == {}, "a new output field gets values on the clips' frames only"

    again = deaot_vos.propagate(clips, "kf", "out", device="cpu", bidirectional=True, incremental=True)
    assert [(r["frames_recomputed"], r["frames_reused"]) for r in again["samples"]] == [(0, 5), (0, 6)]
    assert _all_masks(_field(ds, "out")) == _all_masks(first)

    # move keyframe 14's object: clip 2 recomputes 13-15 (13 is fused from the gap 12-14), keeps 10-12;
    # clip 1 is untouched; a whole-video keyframe outside the clips (2) changes nothing either
    sample = ds.first()
    sample.frames[14]["kf"].detections[0].bounding_box = [0.3, 0.3, 0.2, 0.25]
    sample.frames[2]["kf"].detections[0].bounding_box = [0.5, 0.5, 0.2, 0.25]
    sample.save()
    edited = deaot_vos.propagate(clips, "kf", "out", device="cpu", bidirectional=True, incremental=True)
    assert [(r["frames_recomputed"], r["frames_reused"]) for r in edited["samples"]] == [(0, 5), (3, 3)]
    now = _all_masks(_field(ds, "out"))
    assert all(now[n] == _masks(first[n]) for n in (4, 5, 6, 7, 8, 10, 11, 12))
    assert now[14] != _masks(first[14])
    full = deaot_vos.propagate(clips, "kf", "full", device="cpu", bidirectional=True)
    assert [r["frames_written"] for r in full["samples"]] == [5, 6]
    assert _all_masks(_field(ds, "full")) == now, "the incremental clip run equals a full one"


def test_cancel_keeps_everything_and_bad_clips_are_named(dataset, caplog):
    import deaot_vos
    from deaot_vos.propagation import NoKeyframesError
    from deaot_vos.propagation.clips import ClipOverlapError

    ds = dataset
    clips = ds.to_clips("events")
    schema, frame_docs, labels = set(ds.get_frame_field_schema()), ds.count("frames"), _field(ds, "kf")
    calls = []

    def cancel_in_the_second_clip(fraction, label):
        calls.append(label)
        return not ("frames 10-15" in label and "frame 13/15" in label)

    with pytest.raises(deaot_vos.PropagationCancelled):
        deaot_vos.propagate(clips, "kf", "out", device="cpu", progress=cancel_in_the_second_clip)
    assert any("frames 4-8): frame 8/8" in label for label in calls), "the first clip was staged before the cancel"
    ds.reload()
    assert set(ds.get_frame_field_schema()) == schema, "no output and no temporary field is left"
    assert ds.count("frames") == frame_docs and _field(ds, "kf") == labels, "the frames the run created are gone"

    deaot_vos.propagate(ds, "kf", "out", device="cpu")
    before = _field(ds, "out")
    overlapping = ds.to_clips([[(4, 8), (8, 12)]])
    with pytest.raises(ClipOverlapError, match=r"clip \w+ \(frames 4-8\) and clip \w+ \(frames 8-12\) of sample "
                                               r"\w+ \(clips.mp4\) share frames 8-8"):
        deaot_vos.propagate(overlapping, "kf", "out", device="cpu", overwrite=True)

    no_keyframe = ds.to_clips([[(3, 5), (7, 9)]])  # keyframe 6 lies between them
    with pytest.raises(NoKeyframesError, match="none of the 2 clips has a non-empty 'kf' label on any frame inside it"):
        deaot_vos.propagate(no_keyframe, "kf", "out", device="cpu", overwrite=True)
    caplog.set_level(logging.WARNING)
    mixed = ds.to_clips([[(3, 5), (6, 8)]])
    summary = deaot_vos.propagate(mixed, "kf", "out", device="cpu", overwrite=True)
    assert [r["status"] for r in summary["samples"]] == ["skipped: no keyframes", "ok"]
    skipped_clip = mixed.values("id")[0]
    assert f"clip {skipped_clip} (frames 3-5): no keyframe with objects in 'kf' inside the clip" in caplog.text
    after = _field(ds, "out")
    assert {n: after[n] for n in (1, 2, 3, 4, 5, 9, 16)} == {n: before[n] for n in (1, 2, 3, 4, 5, 9, 16)}
    assert ds.reload() is None and _field(ds, "out") == after


def test_operator_runs_on_a_clip_view(dataset):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ds = dataset
    clips = ds.to_clips("events")
    params = dict(keyframes_field="kf", output_field="op", device="cpu")
    operator = foo.get_operator("@deaot/vos/propagate_masks")
    form = operator.resolve_input(ExecutionContext(request_params=dict(
        dataset_name=ds.name, view=clips._serialize(), params=params))).type.properties
    assert not form["output_field"].invalid and "2 samples" in form["target_notice"].view.label
    result = foo.execute_operator("@deaot/vos/propagate_masks", dict(dataset=ds, view=clips, params=params))
    assert result.result["status"] == "ok", result.result
    assert result.result["frames"] == 11
    written = {n for n, v in _field(ds, "op").items() if v is not None}
    assert written == set(range(4, 9)) | set(range(10, 16))


def test_trajectories_view_propagates_from_its_track_field(make_video):
    import fiftyone as fo
    import deaot_vos

    path, maps = make_video("track", num_frames=10, objects=1)
    ds = fo.Dataset()
    sample = fo.Sample(filepath=path)
    ds.add_sample(sample)
    for number in range(3, 8):  # a CVAT-style track: a label on every frame, keyframe=True on the annotated one
        sample.frames[number]["track"] = fo.Detections(detections=[
            detection("car", maps[number - 1] == 1, index=1, keyframe=number == 4)])
    sample.frames[4]["kf"] = fo.Detections(detections=[detection("car", maps[3] == 1)])
    sample.save()
    trajectories = ds.to_trajectories("frames.track")
    with pytest.raises(ValueError, match="hides frame field 'kf'"):
        deaot_vos.propagate(trajectories, "kf", "out", device="cpu")
    summary = deaot_vos.propagate(trajectories, "track", "out", device="cpu")
    assert [(r["support"], r["keyframes"], r["frames_written"]) for r in summary["samples"]] == [([3, 7], [4], 5)]
    assert {n for n, v in _field(ds, "out").items() if v is not None} == set(range(3, 8))


def test_a_failing_clip_keeps_its_frames_and_the_other_clip_is_written(dataset, monkeypatch):
    import deaot_vos
    from deaot_vos.propagation import video_pass

    ds = dataset
    clips = ds.to_clips("events")
    numbers_before = set(ds.values("frames.frame_number")[0])
    make_labels = video_pass.LabelMaker.__call__

    def fail_in_the_second_clip(self, result):
        if self.sample.clip is not None and self.sample.clip.first == 10 and result.index + 1 == 4:  # frame 13
            raise RuntimeError("injected failure")
        return make_labels(self, result)

    monkeypatch.setattr(video_pass.LabelMaker, "__call__", fail_in_the_second_clip)
    summary = deaot_vos.propagate(clips, "kf", "out", device="cpu", skip_failures=True, write_every=1)
    second = clips.values("id")[1]
    assert [r["status"] for r in summary["samples"]][0] == "ok"
    assert summary["failed"] == [dict(id=ds.first().id, clip_id=second, filepath=ds.first().filepath,
                                      error=f"clip {second} (frames 10-15): RuntimeError: injected failure "
                                            f"(at frame 13)")]
    written = {n for n, v in _field(ds, "out").items() if v is not None}
    assert written == set(range(4, 9)), "only the first clip's frames; the failed clip's staged frames are gone"
    assert set(ds.values("frames.frame_number")[0]) == numbers_before | {4, 5, 7, 8}, \
        "frames created for the failed clip are deleted, the first clip's are kept"


def test_cli_runs_on_clips_and_saved_views(dataset):
    """``deaot-vos propagate --clips FIELD`` writes what the function writes on the clip view;
    ``--view`` takes a saved view; an unknown saved view is named (exit 2, nothing written)."""
    import os
    import subprocess
    import sys

    import fiftyone as fo

    import deaot_vos

    ds = dataset
    ds.persistent = True
    try:
        ds.save_view("kf-videos", ds.match_frames(fo.ViewField("kf") != None))  # noqa: E711
        command = [sys.executable, "-m", "deaot_vos", "propagate", "--dataset", ds.name, "--keyframes-field", "kf",
                   "--device", "cpu", "--model", "DeAOTT"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        missing = subprocess.run(command + ["--output-field", "cli", "--view", "nope"], env=env, capture_output=True,
                                 text=True, timeout=300)
        assert missing.returncode == 2 and "no saved view 'nope'" in missing.stderr and "kf-videos" in missing.stderr
        done = subprocess.run(command + ["--output-field", "cli", "--view", "kf-videos", "--clips", "events"], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        deaot_vos.propagate(ds.to_clips("events"), "kf", "fn", device="cpu", model="DeAOTT")
        cli, fn = _field(ds, "cli"), _field(ds, "fn")
        assert sorted(n for n, v in cli.items() if v is not None) == [n for a, b in CLIPS for n in range(a, b + 1)]
        assert _all_masks(cli) == _all_masks(fn)
    finally:
        ds.persistent = False
