"""Reliability (issue 7): bad input, faults and cancellation never lose or corrupt labels.

- Bad input is refused before anything is written, with an error naming the sample, frame and
  field: a raw snapshot of every sample and frame document (every key, modification times
  included) is identical afterwards.
- Faults (an exception, CUDA out-of-memory, a SIGKILLed or SIGTERMed worker) and cancels
  (progress callback, the delegated operation marked failed) leave the output field as it was
  and remove the frame documents the run created; OOM retries at a lower resolution, then on
  the CPU; re-running afterwards restarts cleanly.
- ``skip_failures`` isolates bad videos (they keep their previous output) and lists them.
- A bounded fuzz test over keyframe layouts (real DeAOTT, random weights, tiny videos).

Tiny videos (48x64, 8 frames); where the model's numbers do not matter a stand-in tracker
"segments" frames by the colours conftest.write_video draws, so faults can be scripted.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from helpers import detection as _det
from fakes import Script

pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")

REPO = Path(__file__).resolve().parents[1]
H, W, T = 48, 64, 8
URI = "@deaot/vos/propagate_masks"


# -- helpers -----------------------------------------------------------------------------------


def _fresh(name):
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    return fo.Dataset(name)


def _old_output(tag):
    import fiftyone as fo

    return fo.Detections(detections=[fo.Detection(label=tag, bounding_box=[0.1, 0.1, 0.25, 0.25],
                                                  mask=np.eye(4, dtype=bool), index=1, confidence=0.5)])


def _base(name, make_video, videos=1, sizes=None, output=True):
    """Videos with keyframes on frames 2 and 6 (objects 1 and 2, object 1 with index 7), an
    unrelated frame field, and (``output``) a sparse earlier output on frames 2 and 5: frames
    1, 4, 7, 8 have no document, so a run creates them."""
    import fiftyone as fo

    ds = _fresh(name)
    for v in range(videos):
        h, w = (sizes or [(H, W)] * videos)[v]
        path, maps = make_video(f"{name}_{v}", T, objects=2, height=h, width=w)
        sample = fo.Sample(filepath=path, note=f"video {v}")
        for n in (2, 6):
            m = maps[n - 1]
            sample.frames[n]["kf"] = fo.Detections(detections=[_det("red", m == 1, index=7), _det("green", m == 2)])
        sample.frames[3]["other"] = fo.Classification(label="x")
        if output:
            sample.frames[2]["out"] = _old_output(f"old{v}a")
            sample.frames[5]["out"] = _old_output(f"old{v}b")
        ds.add_sample(sample)
    return ds


def _snapshot(ds, strict=True):
    """Every sample and frame document of ``ds`` (a dataset or a view) as stored (raw), and both
    schemas. ``strict=False`` ignores modification times and treats a field stored as null like
    an absent one (FiftyOne reads both as None; a rolled-back run may have touched the documents)."""
    from bson import ObjectId

    def clean(doc):
        if not strict:
            doc.pop("last_modified_at", None)
            doc = {k: v for k, v in doc.items() if v is not None}
        return doc

    ds.reload()
    root = ds._root_dataset
    ids = [ObjectId(i) for i in ds.values("id")]
    samples = [clean(d) for d in root._sample_collection.find({"_id": {"$in": ids}}, sort=[("_id", 1)])]
    frames = ([clean(d) for d in root._frame_collection.find({"_sample_id": {"$in": ids}}, sort=[("_id", 1)])]
              if ds.media_type == "video" else [])
    schema = {k: str(v) for k, v in ds.get_field_schema().items()}
    frame_schema = {k: str(v) for k, v in (ds.get_frame_field_schema() or {}).items()}
    return samples, frames, schema, frame_schema


def _outputs(ds, field="out"):
    """(sample id, frame number) -> repr of the non-empty ``field`` values."""
    sids, numbers, values = ds.values(["id", "frames.frame_number", f"frames.{field}"])
    return {(sid, n): repr(v) for sid, nums, vals in zip(sids, numbers, values)
            for n, v in zip(nums, vals) if v is not None}


def _assert_complete(ds, counts=None, field="out"):
    """Every frame of every sample holds a Detections; keyframe objects are copied exactly."""
    import fiftyone as fo

    ds.reload()
    for sample, count in zip(ds, counts or [T] * len(ds)):
        for n in range(1, count + 1):
            frame = sample.frames[n]
            assert isinstance(frame[field], fo.Detections), (sample.id, n)
            if frame["kf"] is not None:
                out = {d.index: d for d in frame[field].detections}
                for d in frame["kf"].detections:
                    match = out[d.index] if d.index is not None else next(o for o in out.values() if o.label == d.label)
                    assert match.bounding_box == d.bounding_box and np.array_equal(match.mask, d.mask)


def _no_tmp(ds):
    ds.reload()
    return not [f for f in ds.get_frame_field_schema() if f.endswith(("_deaot_tmp", "_deaot_old"))]


@pytest.fixture
def scripted(monkeypatch):
    """The scripted tracker (tests/fakes.py) as every run's tracker factory, for the test: runs
    that cannot be handed a factory (the CLI in-process) build their trackers with it too."""
    from deaot_vos.propagation.trackers import TrackerPool

    script = Script()
    monkeypatch.setattr(TrackerPool, "default_factory", script)
    return script


@pytest.fixture
def run(tiny_checkpoint):
    return dict(model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu")


# -- bad input: a clear error naming sample/frame/field, and no change at all ----------------

def _edit_kf(ds, frame, edit, field="kf"):
    sample = ds.first()
    value = sample.frames[frame][field]
    sample.frames[frame][field] = edit(value)
    sample.save()


def _set_frame(ds, frame, field, value):
    sample = ds.first()
    sample.frames[frame][field] = value
    sample.save()


def _case_no_keyframes(ds, tmp, ckpt):
    import fiftyone as fo

    for n in (2, 6):
        _set_frame(ds, n, "kf", fo.Detections())
    return {}, "NoKeyframesError", [r"no keyframes", r"'kf'"]


def _case_empty_view(ds, tmp, ckpt):
    return dict(view=ds.limit(0)), "NoKeyframesError", [r"no samples"]


def _case_field_missing(ds, tmp, ckpt):
    return dict(keyframes_field="nope"), "ValueError", [r"no frame field 'nope'", r"could be: kf"]


def _case_field_unsupported(ds, tmp, ckpt):
    import fiftyone as fo

    _set_frame(ds, 2, "cls", fo.Classification(label="a"))
    return dict(keyframes_field="cls"), "ValueError", [r"'cls'.*Classification"]


def _case_empty_mask(ds, tmp, ckpt):
    def edit(v):
        v.detections[1].mask = np.zeros_like(v.detections[1].mask)
        return v
    _edit_kf(ds, 6, edit)
    return {}, "KeyframeError", [r"frame 6", r"detection #1 \(label 'green'\).*empty instance mask"]


def _case_segmentation_without_mask(ds, tmp, ckpt):
    import fiftyone as fo

    _set_frame(ds, 2, "seg_kf", fo.Segmentation())
    return dict(keyframes_field="seg_kf"), "KeyframeError", [r"frame 2", r"no mask", r"'seg_kf'"]


def _case_mask_wrong_size(ds, tmp, ckpt):
    import fiftyone as fo

    mask = np.zeros((30, 30), np.uint8)
    mask[5:15, 5:15] = 1
    _set_frame(ds, 4, "seg_kf", fo.Segmentation(mask=mask))
    return dict(keyframes_field="seg_kf"), "KeyframeError", [r"frame 4", r"30x30 but the video is 64x48", r"'seg_kf'"]


def _case_mask_outside_frame(ds, tmp, ckpt):
    def edit(v):
        v.detections[0].bounding_box = [1.2, 0.1, 0.2, 0.2]
        return v
    _edit_kf(ds, 2, edit)
    return {}, "KeyframeError", [r"frame 2", r"detection #0 \(label 'red', index 7\) lies outside the frame"]


def _case_polyline_outside_frame(ds, tmp, ckpt):
    import fiftyone as fo

    poly = fo.Polyline(label="p", points=[[(1.1, 1.1), (1.5, 1.1), (1.5, 1.5)]], closed=True, filled=True)
    _set_frame(ds, 3, "poly_kf", fo.Polylines(polylines=[poly]))
    return dict(keyframes_field="poly_kf"), "KeyframeError", [r"frame 3", r"polyline #0.*covers no pixel"]


def _case_box_without_area(ds, tmp, ckpt):
    def edit(v):  # a box keyframe (no mask) whose box has no width
        v.detections[1].mask = None
        v.detections[1].bounding_box = [0.5, 0.5, 0.0, 0.2]
        return v
    _edit_kf(ds, 6, edit)
    return {}, "KeyframeError", [r"frame 6", r"detection #1.*invalid bounding box"]


def _case_points_without_a_prompt_model(ds, tmp, ckpt):
    import fiftyone as fo

    _set_frame(ds, 4, "pts", fo.Keypoints(keypoints=[fo.Keypoint(label="p", points=[(0.5, 0.5)])]))
    return dict(keyframes_field="pts"), "KeyframeError", [r"frame 4", r"keypoint #0 \(label 'p'\).*set prompt_model"]


def _case_index_collision(ds, tmp, ckpt):
    def edit(v):
        v.detections[1].index = 7  # the red object already has index 7 on this frame
        return v
    _edit_kf(ds, 6, edit)
    return {}, "KeyframeError", [r"frame 6", r"detection #0 .* and detection #1 .* have the same index 7"]


def _case_object_hidden(ds, tmp, ckpt):
    import fiftyone as fo

    small = np.zeros((H, W), bool)
    small[10:14, 10:14] = True
    big = np.zeros((H, W), bool)
    big[5:30, 5:30] = True
    _set_frame(ds, 6, "kf", fo.Detections(detections=[_det("small", small), _det("big", big)]))
    return {}, "KeyframeError", [r"frame 6", r"detection #0 \(label 'small'\) is entirely covered"]


def _case_invalid_index(ds, tmp, ckpt):
    def edit(v):
        v.detections[1].index = -3
        return v
    _edit_kf(ds, 2, edit)
    return {}, "KeyframeError", [r"frame 2", r"index -3"]


def _case_segmentation_index_zero(ds, tmp, ckpt):
    def edit(v):
        v.detections[1].index = 0
        return v
    _edit_kf(ds, 2, edit)
    return dict(write_segmentation="seg"), "KeyframeError", [r"frame 2", r"index 0.*0 is background"]


def _case_keyframe_beyond_video(ds, tmp, ckpt):
    _set_frame(ds, T + 3, "kf", ds.first().frames[2]["kf"])
    return {}, "KeyframeError", [rf"frame {T + 3}", rf"only {T} frames"]


def _case_keyframe_beyond_metadata(ds, tmp, ckpt):
    import fiftyone as fo

    sample = ds.first()
    sample.metadata = fo.VideoMetadata(total_frame_count=5, frame_width=W, frame_height=H, frame_rate=10.0)
    sample.save()
    return {}, "KeyframeError", [r"frame 6", r"only 5 frames \(metadata.total_frame_count is 5, decord decodes 8\)"]


def _replace_video(ds, data: bytes | None, tmp, name):
    sample = ds.first()
    path = tmp / name
    if data is not None:
        path.write_bytes(data)
    sample.filepath = str(path)
    sample.save()


def _case_missing_video(ds, tmp, ckpt):
    _replace_video(ds, None, tmp, "missing.mp4")
    return {}, "VideoError", [r"not found", r"missing\.mp4"]


def _case_truncated_video(ds, tmp, ckpt):
    data = Path(ds.first().filepath).read_bytes()
    _replace_video(ds, data[: len(data) // 2], tmp, "truncated.mp4")
    return {}, "VideoError", [r"cannot open video .*truncated\.mp4"]


def _case_undecodable_video(ds, tmp, ckpt):
    _replace_video(ds, np.random.default_rng(0).bytes(6000), tmp, "garbage.mp4")
    return {}, "VideoError", [r"cannot open video .*garbage\.mp4"]


def _case_zero_length_video(ds, tmp, ckpt):
    _replace_video(ds, b"", tmp, "empty.mp4")
    return {}, "VideoError", [r"empty \(0 bytes\)"]


def _case_zero_frame_video(ds, tmp, ckpt):
    import cv2

    writer = cv2.VideoWriter(str(tmp / "noframes.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    writer.release()
    _replace_video(ds, None, tmp, "noframes.mp4")
    return {}, "VideoError", [r"noframes\.mp4"]


def _case_unknown_model(ds, tmp, ckpt):
    return dict(model="DeAOTX"), "ValueError", [r"unknown model 'DeAOTX'", r"R50_DeAOTL"]


def _case_checkpoint_other_variant(ds, tmp, ckpt):
    return dict(model="DeAOTS"), "CheckpointError", [r"does not match model DeAOTS", r"holds a DeAOTT"]


def _case_checkpoint_truncated(ds, tmp, ckpt):
    data = Path(ckpt).read_bytes()
    (tmp / "trunc.pth").write_bytes(data[: len(data) // 3])
    return dict(checkpoint=str(tmp / "trunc.pth")), "CheckpointError", [r"cannot read checkpoint .*trunc\.pth"]


def _case_checkpoint_not_state_dict(ds, tmp, ckpt):
    import torch

    torch.save({"epoch": 3, "lr": 0.1}, tmp / "notsd.pth")
    return dict(checkpoint=str(tmp / "notsd.pth")), "CheckpointError", [r"not a state dict of tensors"]


class _Sneaky:
    """Unpickling this would create a file: a checkpoint must never run code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _case_checkpoint_with_code(ds, tmp, ckpt):
    import torch

    torch.save({"state_dict": torch.load(ckpt)["state_dict"], "hook": _Sneaky(str(tmp / "pwned"))}, tmp / "code.pth")
    return dict(checkpoint=str(tmp / "code.pth")), "CheckpointError", [r"refused", r"weights_only=True"]


def _case_empty_segmentation(ds, tmp, ckpt):
    import fiftyone as fo

    for n in (2, 6):  # all-zero label maps: nothing to propagate
        _set_frame(ds, n, "seg_kf", fo.Segmentation(mask=np.zeros((H, W), np.uint8)))
    return dict(keyframes_field="seg_kf"), "NoKeyframesError", [r"no keyframes", r"'seg_kf'"]


def _case_checkpoint_missing(ds, tmp, ckpt):
    return dict(checkpoint=str(tmp / "absent.pth")), "ModelUnavailableError", [r"not found.*absent\.pth"]


def _case_bad_knob(ds, tmp, ckpt):
    return dict(long_term_gap=0), "ValueError", [r"long_term_gap must be a number >= 1"]


BAD_INPUTS = {name[len("_case_"):]: fn for name, fn in globals().items() if name.startswith("_case_")}
SAMPLE_ERRORS = ("KeyframeError", "VideoError")


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_changes_nothing(case, make_video, tmp_path, tiny_checkpoint):
    import deaot_core
    import deaot_vos
    from deaot_vos.labels import KeyframeError
    from deaot_vos.propagation import NoKeyframesError

    errors = dict(NoKeyframesError=NoKeyframesError, ValueError=ValueError, KeyframeError=KeyframeError,
                  VideoError=deaot_vos.VideoError, CheckpointError=deaot_core.CheckpointError,
                  ModelUnavailableError=deaot_vos.ModelUnavailableError)
    ds = _base(f"t_bad_{case}", make_video)
    overrides, error, patterns = BAD_INPUTS[case](ds, tmp_path, tiny_checkpoint)
    sid = ds.first().id
    kwargs = dict(keyframes_field="kf", output_field="out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu",
                  overwrite=True)
    kwargs.update(overrides)
    view = kwargs.pop("view", ds)
    before = _snapshot(ds)
    with pytest.raises(errors[error]) as info:
        deaot_vos.propagate(view, **kwargs)
    message = str(info.value)
    for pattern in patterns:
        assert __import__("re").search(pattern, message), (pattern, message)
    if error in SAMPLE_ERRORS:  # names the sample (and the field for keyframe errors)
        assert sid in message, message
        if error == "KeyframeError":
            assert f"field '{kwargs['keyframes_field']}'" in message, message
    assert _snapshot(ds) == before
    assert not (tmp_path / "pwned").exists()


def test_non_video_dataset_is_refused_and_changes_nothing(tmp_path, tiny_checkpoint):
    import cv2
    import fiftyone as fo
    import deaot_vos

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    ds = _fresh("t_bad_images")
    ds.add_sample(fo.Sample(filepath=str(tmp_path / "a.png"), out=fo.Classification(label="keep")))
    before = _snapshot(ds)
    with pytest.raises(ValueError, match="not a video collection"):
        deaot_vos.propagate(ds, "kf", "out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu", overwrite=True)
    assert _snapshot(ds) == before


def test_all_bad_samples_are_named_in_one_error(make_video, tmp_path, run):
    import deaot_vos

    ds = _base("t_bad_many", make_video, videos=3)
    first, _, third = ds.values("id")
    _replace_video(ds, None, tmp_path, "missing.mp4")
    sample = ds[third]
    sample.frames[6]["kf"].detections[0].mask = np.zeros_like(sample.frames[6]["kf"].detections[0].mask)
    sample.save()
    before = _snapshot(ds)
    with pytest.raises(deaot_vos.VideoError) as info:
        deaot_vos.propagate(ds, "kf", "out", overwrite=True, **run)
    message = str(info.value)
    assert first in message and "and 1 more sample(s) failed the checks" in message
    assert third in message and "empty instance mask" in message
    assert [type(e).__name__ for e in info.value.failures] == ["VideoError", "KeyframeError"]
    assert _snapshot(ds) == before


# -- faults: the output field stays as it was ----------------------------------------------------

def test_exception_mid_video_leaves_everything_as_it_was_then_rerun_restarts(make_video, scripted, run):
    import deaot_vos

    ds = _base("t_fault_exc", make_video, videos=2)
    second = ds.values("id")[1]
    before = _snapshot(ds, strict=False)
    # video 1: 9 steps (forward 2..8, backward 2, 1); fail on the 4th step of video 2, after bulk writes
    scripted.fail = lambda tr, frame: RuntimeError("boom") if len(scripted.steps) == 13 else None
    with pytest.raises(RuntimeError, match="boom") as info:
        deaot_vos.propagate(ds, "kf", "out", overwrite=True, write_every=2, **run)
    assert any(second in note and "at frame 5" in note for note in getattr(info.value, "__notes__", []))
    assert _snapshot(ds, strict=False) == before and _no_tmp(ds)

    scripted.fail = None
    summary = deaot_vos.propagate(ds, "kf", "out", overwrite=True, write_every=2, **run)
    assert [r["status"] for r in summary["samples"]] == ["ok", "ok"] and summary["written"]
    _assert_complete(ds)
    assert _no_tmp(ds)


def test_failure_while_swapping_fields_is_finished_by_the_next_run(make_video, scripted, run, monkeypatch):
    """A step of the final swap fails (the database went away): the error says so, nothing is
    lost (the new output is complete in the temporary field, every sample loads), and the next
    run into the field finishes the swap before anything else."""
    import fiftyone as fo
    import deaot_vos
    from deaot_vos.propagation import journal

    ds = _base("t_fault_swap", make_video)
    copy = journal.copy_values

    def failing_copy(dataset, source, target):
        if target == "out":
            raise RuntimeError("database went away")
        return copy(dataset, source, target)

    monkeypatch.setattr(journal, "copy_values", failing_copy)
    with pytest.raises(RuntimeError, match="database went away") as info:
        deaot_vos.propagate(ds, "kf", "out", overwrite=True, write_every=1, **run)
    assert any("finishes the swap" in note for note in info.value.__notes__)
    assert journal.claim_for(ds, "out")["phase"] == "commit"
    ds.reload()
    assert "out" + journal.TMP_SUFFIX in ds.get_frame_field_schema()
    for sample in fo.load_dataset(ds.name).iter_samples():  # everything loads meanwhile
        list(sample.frames.values())
    monkeypatch.setattr(journal, "copy_values", copy)
    with pytest.raises(deaot_vos.OutputExistsError):  # the next run settles the journal first
        deaot_vos.propagate(ds, "kf", "out", **run)
    assert _no_tmp(ds) and journal.claim_for(ds, "out") is None
    _assert_complete(ds)


def _oom():
    import torch

    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_retries_at_half_resolution(make_video, scripted, run):
    import deaot_vos

    ds = _base("t_fault_oom_half", make_video, output=False)
    # runs out of memory on the 3rd frame unless the network input is at most 40 pixels long
    scripted.fail = lambda tr, frame: (_oom() if tr.local_steps == 3 and (tr.max_long_edge or 1e9) > 40 else None)
    summary = deaot_vos.propagate(ds, "kf", "out", write_every=2, **run)
    row, = summary["samples"]
    assert row["status"] == "ok" and row["max_long_edge"] == 32 and row["device"] == "cpu"
    assert len(row["warnings"]) == 1 and "out of memory at frame 4" in row["warnings"][0]
    assert "max_long_edge 1040" in row["warnings"][0] and "max_long_edge 32" in row["warnings"][0]
    assert [s[1] for s in scripted.steps][:3] == [1040] * 3 and scripted.steps[-1][1] == 32
    _assert_complete(ds)


def test_out_of_memory_on_cuda_falls_back_to_cpu(make_video, scripted, run, monkeypatch):
    import deaot_vos
    import deaot_vos.propagation.plan as plan

    monkeypatch.setattr(plan, "resolve_device", lambda device: "cuda:0")
    ds = _base("t_fault_oom_cpu", make_video, output=False)
    scripted.fail = lambda tr, frame: _oom() if tr.device != "cpu" and tr.local_steps == 2 else None
    summary = deaot_vos.propagate(ds, "kf", "out", **run)
    row, = summary["samples"]
    assert row["status"] == "ok" and row["device"] == "cpu" and row["max_long_edge"] == 1040
    assert len(row["warnings"]) == 2 and "retrying the video on cpu" in row["warnings"][1]
    assert [s[:2] for s in scripted.steps[::2]][:3] == [("cuda:0", 1040), ("cuda:0", 32), ("cpu", 1040)]
    _assert_complete(ds)


def test_out_of_memory_everywhere_changes_nothing(make_video, scripted, run):
    import torch
    import deaot_vos

    ds = _base("t_fault_oom_all", make_video)
    before = _snapshot(ds, strict=False)
    scripted.fail = lambda tr, frame: _oom() if tr.local_steps == 3 else None
    with pytest.raises(torch.OutOfMemoryError):
        deaot_vos.propagate(ds, "kf", "out", overwrite=True, write_every=1, **run)
    assert len(scripted.steps) == 6  # two attempts: 1040 (64 effective), 32
    assert _snapshot(ds, strict=False) == before and _no_tmp(ds)


def test_cancel_stops_within_a_frame_and_writes_nothing(make_video, scripted, run):
    import deaot_vos

    ds = _base("t_cancel", make_video, videos=2)
    before = _snapshot(ds, strict=False)
    frames_reported = []

    def progress(fraction, label):
        if "frame " in label:
            frames_reported.append(label)
        return False if "[2/2]" in label and "frame 4/" in label else None

    with pytest.raises(deaot_vos.PropagationCancelled):
        deaot_vos.propagate(ds, "kf", "out", overwrite=True, write_every=1, progress=progress, **run)
    # every step was reported; the step whose report cancelled was the last one
    assert len(scripted.steps) == len(frames_reported) + 1  # + the backward pass's keyframe re-step of video 1
    assert _snapshot(ds, strict=False) == before and _no_tmp(ds)
    deaot_vos.propagate(ds, "kf", "out", overwrite=True, **run)
    _assert_complete(ds)


def test_operator_cancel_marking_the_delegated_operation_failed(make_video, scripted, monkeypatch, run):
    import fiftyone.operators as foo
    import deaot_vos.propagation.cancel as cancel
    from fiftyone.operators.delegated import DelegatedOperationService

    monkeypatch.setattr(cancel, "CANCEL_POLL_SECONDS", 0.0)
    ds = _base("t_cancel_operator", make_video)
    before = _snapshot(ds, strict=False)
    params = dict(keyframes_field="kf", output_field="out", overwrite=True, delegate=True, **run)
    queued = foo.execute_operator(URI, dict(dataset=ds, view=ds.view(), params=params))
    assert queued.delegated
    service = DelegatedOperationService()
    op, = service.list_operations(operator=URI, dataset_name=ds.name)

    def mark_failed(tr, frame):  # `fiftyone delegated fail <id>` while the 3rd frame runs
        if len(scripted.steps) == 3:
            service.set_failed(op.id)

    scripted.fail = mark_failed
    service.execute_queued_operations(operator=URI, dataset_name=ds.name)
    assert len(scripted.steps) == 3, "stopped at the next frame"
    assert _snapshot(ds, strict=False) == before and _no_tmp(ds)
    assert service.get(op.id).run_state == "failed"
    service.delete_operation(op.id)


_WORKER = r'''
import os, sys, time
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from fakes import Script
from deaot_vos.propagation.trackers import TrackerPool

def slow(tracker, frame):
    """After 4 frames: tell the parent, then take 0.5 s per frame."""
    if len(script.steps) == 5:
        open(sys.argv[3], "w").close()
    if len(script.steps) >= 5:
        time.sleep(0.5)

script = Script(fail=slow)
TrackerPool.default_factory = script
if sys.argv[5] == "mid-write":
    # die like a SIGKILL right after set_values inserted new frame documents, before it
    # writes their values (its second bulk write)
    import fiftyone.core.collections as foc
    original = foc.SampleCollection._set_doc_values
    def set_doc_values(self, field_name, *args, frames=False, **kwargs):
        if frames and self._dataset._frame_collection.count_documents({}) > int(sys.argv[6]):
            os.kill(os.getpid(), 9)
        return original(self, field_name, *args, frames=frames, **kwargs)
    foc.SampleCollection._set_doc_values = set_doc_values
from deaot_vos.cli import main
sys.exit(main(["propagate", "--dataset", sys.argv[2], "--keyframes-field", "kf", "--output-field", "out",
               "--overwrite", "--model", "DeAOTT", "--checkpoint", sys.argv[4], "--device", "cpu",
               "--write-every", "2"]))
'''


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGKILL-mid-write", "SIGTERM"])
def test_killed_or_terminated_worker(sig, make_video, tmp_path, run):
    """SIGKILL: the output field is untouched, the next run recovers the leftovers (temporary
    field, frame documents it created, also bare ones: ``mid-write`` dies between set_values'
    insert of new frames and the write of their values). SIGTERM: the CLI cancels at the next
    frame and cleans up."""
    import fiftyone as fo
    import deaot_vos
    from deaot_vos import propagation

    ds = _base(f"t_{sig.lower()}", make_video)
    ds.persistent = True  # visible to the worker process
    try:
        before = _snapshot(ds, strict=False)
        outputs = _outputs(ds)
        marker = tmp_path / "started"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        mode = "mid-write" if sig == "SIGKILL-mid-write" else "signal"
        frame_docs = ds._frame_collection.count_documents({})
        worker = subprocess.Popen([sys.executable, "-c", _WORKER, str(REPO), ds.name, str(marker), run["checkpoint"],
                                   mode, str(frame_docs)],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while mode == "signal" and not marker.exists():
            assert worker.poll() is None, worker.communicate()[1][-3000:]
            assert time.time() < deadline, "the worker did not start propagating"
            time.sleep(0.05)
        while sig == "SIGKILL" and ds._frame_collection.count_documents({}) <= frame_docs:
            assert worker.poll() is None and time.time() < deadline, "the worker wrote no new frame"
            time.sleep(0.05)  # kill once it has created frame documents (the recovery has work to do)
        if mode == "signal":
            worker.send_signal(getattr(signal, sig))
        _, stderr = worker.communicate(timeout=120)
        ds.reload()
        assert _outputs(ds) == outputs, "the output field must be as it was"
        if sig == "SIGTERM":
            assert worker.returncode == 130 and "cancelled: no field was changed" in stderr, stderr[-3000:]
            assert _snapshot(ds, strict=False) == before and _no_tmp(ds)
        else:
            assert worker.returncode == -signal.SIGKILL
            assert "out" + propagation.TMP_SUFFIX in ds.get_frame_field_schema()  # the killed run's leftovers
            assert ds.count("frames") > len(before[1])
            if mode == "mid-write":  # frames inserted bare: no created_at, no value
                tmp = "out" + propagation.TMP_SUFFIX
                docs = ds._root_dataset._frame_collection.find({})
                assert any("created_at" not in d and d.get(tmp) is None for d in docs)
            with pytest.raises(deaot_vos.OutputExistsError):  # any later run recovers first
                deaot_vos.propagate(ds, "kf", "out", **run)
            assert _snapshot(ds, strict=False) == before and _no_tmp(ds)
        deaot_vos.propagate(ds, "kf", "out", overwrite=True, **run)
        _assert_complete(ds)
    finally:
        fo.delete_dataset(ds.name)


# -- many videos -------------------------------------------------------------------------------

def test_skip_failures_isolates_bad_videos_and_lists_them(make_video, scripted, tmp_path, run, capsys):
    import deaot_vos
    from deaot_vos.cli import main

    # video 2's file is missing (found by the checks); video 3 (40x56) fails on its 4th frame
    ds = _base("t_many", make_video, videos=3, sizes=[(H, W), (H, W), (40, 56)])
    ds.persistent = True
    try:
        ids = ds.values("id")
        sample = ds[ids[1]]
        sample.filepath = str(tmp_path / "gone.mp4")
        sample.save()
        raw = {sid: _snapshot(ds.select(sid), strict=False)[1] for sid in ids}
        scripted.fail = lambda tr, frame: RuntimeError("decoder died") if frame.shape[0] == 40 and tr.local_steps == 4 \
            else None
        summary = deaot_vos.propagate(ds, "kf", "out", overwrite=True, skip_failures=True, write_every=1, **run)
        assert [r["status"][:5] for r in summary["samples"]] == ["ok", "error", "error"] and summary["written"]
        failed = {f["id"]: f["error"] for f in summary["failed"]}
        assert set(failed) == set(ids[1:])
        assert failed[ids[1]].startswith("VideoError") and "gone.mp4" in failed[ids[1]]
        assert failed[ids[2]] == "RuntimeError: decoder died (at frame 5)"
        # the failed videos keep exactly their previous output (and frame documents)
        for sid in ids[1:]:
            assert _snapshot(ds.select(sid), strict=False)[1] == raw[sid]
        _assert_complete(ds.select(ids[0]))
        assert _no_tmp(ds)
        # the CLI says which videos failed and exits with status 3
        assert main(["propagate", "--dataset", ds.name, "--keyframes-field", "kf", "--output-field", "out",
                     "--overwrite", "--skip-failures", "--model", "DeAOTT", "--checkpoint", run["checkpoint"],
                     "--device", "cpu"]) == 3
        err = capsys.readouterr().err
        assert "2 video(s) failed" in err and "gone.mp4" in err and "decoder died" in err
    finally:
        import fiftyone as fo

        fo.delete_dataset(ds.name)


# -- fuzz: random keyframe layouts -----------------------------------------------------------------

FUZZ_SIZES = [(40, 56), (48, 64)]  # decord mis-decodes some tiny sizes (32x48 gives 4 garbage channels)
FUZZ_T = 6


@pytest.fixture(scope="module")
def fuzz_videos(tmp_path_factory):
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).parent))
    from conftest import synthetic_label_maps, write_video

    folder = tmp_path_factory.mktemp("fuzz")
    return {size: str(write_video(folder / f"v{size[0]}x{size[1]}.mp4", synthetic_label_maps(FUZZ_T, *size)))
            for size in FUZZ_SIZES}


@st.composite
def layouts(draw):
    size = draw(st.sampled_from(FUZZ_SIZES))
    h, w = size
    kind = draw(st.sampled_from(["detections", "segmentation", "polylines"]))
    count = draw(st.integers(1, 3))
    indexes = draw(st.lists(st.integers(1, 30), min_size=count, max_size=count, unique=True))
    objects = []
    for k in range(count):
        indexed = kind == "segmentation" or draw(st.booleans())
        objects.append(dict(index=indexes[k] if indexed else None,
                            label=draw(st.sampled_from(["a", "b"])) if indexed else f"obj{k}"))
    frames = draw(st.lists(st.integers(1, FUZZ_T), min_size=1, max_size=3, unique=True))
    keyframes = {}
    for n in sorted(frames):
        present = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=count, unique=True))
        boxes = []
        for k in present:
            y0, x0 = draw(st.integers(0, h - 3)), draw(st.integers(0, w - 3))
            bh, bw = draw(st.integers(2, min(16, h - y0))), draw(st.integers(2, min(16, w - x0)))
            seed = draw(st.integers(0, 2 ** 16))
            boxes.append((k, y0, x0, bh, bw, seed))
        keyframes[n] = boxes
    defect = draw(st.sampled_from([None] * 5 + ["collision", "empty", "outside", "no_mask", "beyond"]))
    return dict(size=size, kind=kind, objects=objects, keyframes=keyframes, defect=defect)


def _region(h, w, y0, x0, bh, bw, seed):
    rng = np.random.default_rng(seed)
    crop = rng.random((bh, bw)) < 0.75
    crop[bh // 2, bw // 2] = True
    region = np.zeros((h, w), bool)
    region[y0:y0 + bh, x0:x0 + bw] = crop
    return region


def _keyframe_label(layout, n):
    """(FiftyOne label, [(object, region as FiftyOne renders it)], defect applied or None)."""
    import fiftyone as fo

    h, w = layout["size"]
    objs, kind, defect = layout["objects"], layout["kind"], layout["defect"]
    items, regions = [], []
    for k, y0, x0, bh, bw, seed in layout["keyframes"][n]:
        obj = objs[k]
        if kind == "segmentation":
            region = _region(h, w, y0, x0, bh, bw, seed)
        elif kind == "detections":
            region = _region(h, w, y0, x0, bh, bw, seed)
            items.append(_det(obj["label"], region, obj["index"]))
        else:
            pts = [(x0 / w, y0 / h), ((x0 + bw) / w, y0 / h), ((x0 + bw) / w, (y0 + bh) / h), (x0 / w, (y0 + bh) / h)]
            poly = fo.Polyline(label=obj["label"], points=[pts], closed=True, filled=True, index=obj["index"])
            canvas = np.zeros((h, w), np.uint8)
            poly.to_segmentation(mask=canvas, target=1)
            region = canvas > 0
            items.append(poly)
        regions.append((k, region))
    applied = None
    if kind == "segmentation":
        mask = np.zeros((h, w), np.uint8)
        for k, region in regions:
            mask[region] = objs[k]["index"]
        if n == min(layout["keyframes"]) and defect == "outside":  # a mask of another shape
            mask, applied = np.zeros((h, w + 20), np.uint8), "aspect ratio"
        return fo.Segmentation(mask=mask), regions, applied
    first = items[0]
    if n == min(layout["keyframes"]) and defect is not None and defect != "beyond":
        if defect == "collision":
            clone = first.copy()
            clone.index = 999 if first.index is None else first.index
            first.index = clone.index
            items.append(clone)
            applied = "same index"
        elif defect == "empty" and kind == "detections":
            first.mask = np.zeros_like(first.mask)
            applied = "empty instance mask"
        elif defect == "no_mask" and kind == "detections":  # a box keyframe whose box has no height
            first.mask = None
            first.bounding_box = [first.bounding_box[0], 0.5, first.bounding_box[2], 0.0]
            applied = "invalid bounding box"
        elif defect == "outside":
            if kind == "detections":
                first.bounding_box = [1.5, 0.2, 0.1, 0.1]
                applied = "outside the frame"
            else:
                first.points = [[(1.2, 1.2), (1.4, 1.2), (1.4, 1.4)]]
                applied = "covers no pixel"
    value = fo.Detections(detections=items) if kind == "detections" else fo.Polylines(polylines=items)
    return value, regions, applied


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(layout=layouts())
def test_fuzz_keyframe_layouts(layout, fuzz_videos, tiny_checkpoint):
    import fiftyone as fo
    import deaot_vos
    from deaot_vos.labels import KeyframeError

    h, w = layout["size"]
    ds = _fresh("t_fuzz")
    sample = fo.Sample(filepath=fuzz_videos[layout["size"]])
    expected, regions_by_frame, problems = {}, {}, []
    for n in sorted(layout["keyframes"]):
        value, regions, applied = _keyframe_label(layout, n)
        problems += [applied] if applied else []
        sample.frames[n]["kf"] = value
        regions_by_frame[n] = regions
        # an object entirely painted over by later ones on its keyframe is refused too
        for i, (k, region) in enumerate(regions):
            later = np.zeros((h, w), bool)
            for _, r in regions[i + 1:]:
                later |= r
            if layout["kind"] != "segmentation" and not (region & ~later).any():
                problems.append("entirely covered")
    if layout["defect"] == "beyond":
        sample.frames[FUZZ_T + 1]["kf"] = sample.frames[min(layout["keyframes"])]["kf"]
        problems.append(f"only {FUZZ_T} frames")
    ds.add_sample(sample)
    before = _snapshot(ds)
    try:
        summary = deaot_vos.propagate(ds, "kf", "out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu",
                                   max_long_edge=64)
    except KeyframeError as err:  # the documented error for bad layouts, and nothing written
        assert problems and any(p in str(err) for p in problems), (problems, str(err))
        assert f"frame " in str(err) and sample.id in str(err) and "'kf'" in str(err)
        assert _snapshot(ds) == before
        return
    assert not problems, problems
    assert summary["samples"][0]["status"] == "ok"
    sample.reload()
    objs = layout["objects"]
    first_seen = {}
    for n in sorted(layout["keyframes"]):
        for k, _ in regions_by_frame[n]:
            first_seen.setdefault(k, n)
    k1 = min(layout["keyframes"])
    on_k1 = {k for k, _ in regions_by_frame[k1]}
    index_of = {}
    for n in range(1, FUZZ_T + 1):
        out = sample.frames[n]["out"]
        assert isinstance(out, fo.Detections), n  # every frame filled
        for d in out.detections:
            index_of.setdefault(d.label, set()).add(d.index)
    for n, regions in regions_by_frame.items():  # keyframes exact, ids as given
        out = sample.frames[n]["out"]
        for k, region in regions:
            obj = objs[k]
            match = [d for d in out.detections
                     if (d.index == obj["index"] if obj["index"] is not None else d.label == obj["label"])]
            assert len(match) == 1, (n, obj, out)
            d = match[0]
            assert d.label == (obj["label"] if layout["kind"] != "segmentation" else str(obj["index"]))
            rendered = np.zeros((h, w), np.uint8)
            d.to_segmentation(mask=rendered, target=1)
            if layout["kind"] == "detections":
                given = sample.frames[n]["kf"].detections[[kk for kk, _ in regions].index(k)]
                assert d.bounding_box == given.bounding_box and np.array_equal(d.mask, given.mask)
            else:
                later = np.zeros((h, w), bool)
                for kk, r in regions[[kk for kk, _ in regions].index(k) + 1:]:
                    later |= r
                assert np.array_equal(rendered > 0, region & ~later), (n, obj)
            if obj["index"] is None:  # a stable index per object
                index_of.setdefault(("auto", k), set()).add(d.index)
    for key, values in index_of.items():
        if isinstance(key, tuple):
            assert len(values) == 1, (key, values)
    for n in range(1, FUZZ_T + 1):  # an object never appears before it is introduced
        for d in sample.frames[n]["out"].detections:
            # only objects that are on some keyframe can be in the output (a declared but unused
            # object's index may be given to an auto-indexed one)
            k = next(i for i, o in enumerate(objs) if i in first_seen and (
                o["index"] == d.index if o["index"] is not None else o["label"] == d.label))
            assert n >= first_seen[k] or (n < k1 and k in on_k1), (n, k, first_seen)
