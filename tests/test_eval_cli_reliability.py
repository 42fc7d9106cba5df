"""Reliability of the evaluation and the command line (issue 14).

* bad labels in the predictions or the ground truth raise an ``EvaluationError`` naming the
  sample (id and file name), the field (which one, its name) and the frame, in evaluation words;
* a sample whose file path is a directory is said to be a directory, not "not found";
* ``python -m deaot_vos ...`` with the database unreachable prints one line and exits non-zero.

Real FiftyOne datasets (the suite's private mongod), real videos, real subprocesses.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import detection as _det

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- bad labels


def _gt(label_map):
    import fiftyone as fo

    return fo.Detections(detections=[_det(f"obj{k}", label_map == k, index=k) for k in (1, 2)
                                     if (label_map == k).any()])


def _no_mask(label_map):
    """The frame's objects, the first one as a box without a mask."""
    dets = _gt(label_map)
    dets.detections[0].mask = None
    return dets


def _segmentation(mask):
    import fiftyone as fo

    return fo.Segmentation(mask=mask)


def _mask_path(tmp_path, kind):
    import fiftyone as fo

    if kind == "directory":
        path = tmp_path / "mask_dir.png"
        path.mkdir()
    else:
        path = tmp_path / "no_such_mask.png"
    return fo.Segmentation(mask_path=str(path))


def _det_mask_dir(tmp_path, label_map):
    dets = _gt(label_map)
    folder = tmp_path / "det_mask.png"
    folder.mkdir()
    dets.detections[1].mask = None
    dets.detections[1].mask_path = str(folder)
    return dets


# (name, which field is bad, frame, builder(tmp_path, label_map) -> label, expected detail)
LABEL_CASES = [
    ("pred_detection_without_mask", "pred", 4, lambda t, m: _no_mask(m),
     r"detection #0 \(label 'obj1', index 1\) has no instance mask"),
    ("gt_detection_without_mask", "gt", 3, lambda t, m: _no_mask(m),
     r"detection #0 \(label 'obj1', index 1\) has no instance mask"),
    ("pred_segmentation_wrong_size", "pred", 5, lambda t, m: _segmentation(np.ones((30, 30), np.uint8)),
     r"segmentation mask is 30x30 but the video is 96x64"),
    ("gt_segmentation_without_mask", "gt", 2, lambda t, m: _segmentation(None),
     r"segmentation has no mask"),
    ("pred_segmentation_fractional", "pred", 6, lambda t, m: _segmentation(np.full((64, 96), 0.5, np.float32)),
     r"values that are not integers"),
    ("gt_segmentation_mask_path_missing", "gt", 7, lambda t, m: _mask_path(t, "missing"),
     r"mask file not found: .*no_such_mask\.png"),
    ("pred_segmentation_mask_path_directory", "pred", 8, lambda t, m: _mask_path(t, "directory"),
     r"mask_dir\.png is a directory, not a mask file"),
    ("pred_detection_mask_path_directory", "pred", 4, lambda t, m: _det_mask_dir(t, m),
     r"detection #1 \(label 'obj2', index 2\): its mask_path.*det_mask\.png is a directory"),
]


@pytest.mark.parametrize("name,which,frame,build,detail", LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_evaluate_label_errors_name_sample_field_and_frame(name, which, frame, build, detail, fiftyone_db,
                                                           make_video, tmp_path):
    import fiftyone as fo

    from deaot_vos.evaluation import EvaluationError, evaluate_vos

    path, maps = make_video(f"clip_{name}", num_frames=10)
    ds = fo.Dataset()
    try:
        ok = fo.Sample(filepath=path)  # a first, good video: the error must name the bad one
        bad = fo.Sample(filepath=path.replace(".mp4", "_copy.mp4"))
        os.link(path, bad.filepath)
        bad_field = "predictions" if which == "pred" else "ground_truth"
        # the bad field holds the type of the bad label on every frame (a field has one type)
        segmentation = "segmentation" in name
        for sample in (ok, bad):
            for number in range(1, 11):
                m = maps[number - 1]
                for field in ("ground_truth", "predictions"):
                    good = _segmentation(m.astype(np.uint8)) if segmentation and field == bad_field else _gt(m)
                    sample.frames[number][field] = good
        bad.frames[frame][bad_field] = build(tmp_path, maps[frame - 1])
        ds.add_samples([ok, bad])
        before = (ds.list_evaluations(), sorted(ds.get_field_schema()), sorted(ds.get_frame_field_schema()))

        with pytest.raises(EvaluationError) as info:
            evaluate_vos(ds, "predictions", "ground_truth", eval_key="ev")
        message = str(info.value)
        role = "predictions, pred_field" if which == "pred" else "ground truth, gt_field"
        expected = (rf"^sample {bad.id} \({os.path.basename(bad.filepath)}\): frame {frame} of field "
                    rf"'{bad_field}' \({role}\): .*{detail}")
        assert re.search(expected, message), message
        assert ok.id not in message
        assert "propagat" not in message.lower() and "keyframe" not in message.lower(), message
        err = info.value
        assert (err.sample_id, err.field, err.frame_number) == (bad.id, bad_field, frame)
        assert err.what == ("pred_field" if which == "pred" else "gt_field")
        # nothing was written
        assert (ds.list_evaluations(), sorted(ds.get_field_schema()), sorted(ds.get_frame_field_schema())) == before
    finally:
        ds.delete()


# --------------------------------------------------------------------------- a directory as the video


def test_video_path_that_is_a_directory_is_named_a_directory(tmp_path):
    from deaot_vos.video_io import VideoError, open_video

    folder = tmp_path / "clip.mp4"
    folder.mkdir()
    with pytest.raises(VideoError, match=r"clip\.mp4 is a directory, not a video file") as info:
        open_video(str(folder))
    assert "not found" not in str(info.value)
    with pytest.raises(VideoError, match=r"video file not found: .*absent\.mp4"):
        open_video(str(tmp_path / "absent.mp4"))
    broken = tmp_path / "broken.mp4"
    broken.symlink_to(tmp_path / "gone.mp4")
    with pytest.raises(VideoError, match=r"broken symbolic link"):
        open_video(str(broken))


def test_evaluate_sample_whose_filepath_is_a_directory(fiftyone_db, make_video, tmp_path):
    import fiftyone as fo

    from deaot_vos.evaluation import EvaluationError, evaluate_vos

    _, maps = make_video("ref", num_frames=5)
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    ds = fo.Dataset()
    try:
        sample = fo.Sample(filepath=str(folder))  # no metadata: the frame size is read from the video
        for number in range(1, 6):
            sample.frames[number]["ground_truth"] = _gt(maps[number - 1])
            sample.frames[number]["predictions"] = _gt(maps[number - 1])
        ds.add_sample(sample)
        with pytest.raises(EvaluationError, match=rf"sample {sample.id} \(folder\.mp4\).*folder\.mp4 is a "
                                                  r"directory, not a video file") as info:
            evaluate_vos(ds, "predictions", "ground_truth", eval_key="ev")
        assert "not found" not in str(info.value)
        assert ds.list_evaluations() == []
    finally:
        ds.delete()


# --------------------------------------------------------------------------- rename onto taken names


def _rename_state(ds):
    """Everything a refused rename must leave as it was: runs, schemas and every float field's values."""
    sample = {f: ds.values(f) for f in sorted(ds.get_field_schema()) if f[-2:] in ("JF", "_J", "_F")}
    frame = {f: ds.values("frames." + f) for f in sorted(ds.get_frame_field_schema()) if f[-2:] in ("_J", "_F")}
    return ds.list_evaluations(), sample, frame


def _predicted_as_ground_truth(make_video, name: str):
    """A dataset of one 6-frame video whose ``predictions`` equal its ``ground_truth`` on every frame."""
    import fiftyone as fo

    path, maps = make_video(name, num_frames=6)
    ds = fo.Dataset()
    sample = fo.Sample(filepath=path)
    for number in range(1, 7):
        sample.frames[number]["ground_truth"] = _gt(maps[number - 1])
        sample.frames[number]["predictions"] = _gt(maps[number - 1])
    ds.add_sample(sample)
    return ds


@pytest.mark.parametrize("taken", [("g_JF", "frames.g_J"), ("frames.g_F",)], ids=["sample_and_frame", "frame_only"])
def test_rename_evaluation_onto_user_fields_is_refused_and_delete_keeps_them(taken, fiftyone_db, make_video):
    """A J&F run renamed onto a key whose field names the user already uses: refused before
    anything moves (FiftyOne would log the failure and rename the run anyway, and deleting it
    would then delete the user's fields); deleting the run afterwards leaves the user's fields."""
    from deaot_vos.evaluation import EvaluationRenameRefused, evaluate_vos

    ds = _predicted_as_ground_truth(make_video, "rename")
    try:
        evaluate_vos(ds, "predictions", "ground_truth", eval_key="f")
        user = {}
        for path_ in taken:  # the user's own float fields with their own values
            ds.set_values(path_, [[0.25] * 6] if path_.startswith("frames.") else [0.25])
            user[path_] = ds.values(path_)
        before = _rename_state(ds)
        assert before[1]["f_JF"] == [pytest.approx(1.0)]

        with pytest.raises(EvaluationRenameRefused) as info:
            ds.rename_evaluation("f", "g")
        message = str(info.value)
        for path_ in taken:
            assert f"field '{path_.replace('frames.', '')}'" in message, message
        assert "'f'" in message and "'g'" in message and "nothing was renamed" in message
        ds.reload()
        assert _rename_state(ds) == before
        assert ds.load_evaluation_results("f").summary()["J&F-Mean"] == pytest.approx(1.0)

        ds.delete_evaluation("f")
        ds.reload()
        assert ds.list_evaluations() == []
        for path_, values in user.items():
            assert ds.values(path_) == values, path_
        left = [f for f in ds.get_field_schema() if f.startswith("f_")]
        left += [f for f in ds.get_frame_field_schema() if f.startswith("f_")]
        assert left == []
        # a free key still renames, fields and all
        evaluate_vos(ds, "predictions", "ground_truth", eval_key="f")
        ds.rename_evaluation("f", "h")
        assert ds.list_evaluations() == ["h"] and ds.values("h_JF") == [pytest.approx(1.0)]
        assert ds.values("frames.h_J")[0][1] == pytest.approx(1.0)
        with pytest.raises(EvaluationRenameRefused, match="valid Python identifiers"):
            ds.rename_evaluation("h", "not-a-key")
        assert ds.list_evaluations() == ["h"]
    finally:
        ds.delete()


def test_rename_of_the_segmentation_run_onto_user_fields_is_refused_and_delete_keeps_them(fiftyone_db, make_video):
    """The same for the ``segmentation`` run made with ``segmentation_key`` (FiftyOne's fields
    ``<key>_accuracy`` ...): refused, nothing renamed, and deleting it keeps the user's field."""
    from deaot_vos.evaluation import EvaluationRenameRefused, evaluate_vos
    from deaot_vos.segmentation_run import label_map_fields

    ds = _predicted_as_ground_truth(make_video, "rename_seg")
    try:
        evaluate_vos(ds, "predictions", "ground_truth", eval_key="f", segmentation_key="s")
        ds.set_values("t_recall", [0.25])
        ds.set_values("frames.t_accuracy", [[0.5] * 6])
        fields = (sorted(ds.get_field_schema()), sorted(ds.get_frame_field_schema()))
        before = (ds.list_evaluations(), ds.values("s_accuracy"), ds.values("frames.s_recall"))

        with pytest.raises(EvaluationRenameRefused, match=r"'s'.*'t'.*sample field 't_recall'.*frame field "
                                                          r"'t_accuracy'.*nothing was renamed"):
            ds.rename_evaluation("s", "t")
        ds.reload()
        assert (sorted(ds.get_field_schema()), sorted(ds.get_frame_field_schema())) == fields
        assert (ds.list_evaluations(), ds.values("s_accuracy"), ds.values("frames.s_recall")) == before
        assert ds.load_evaluation_results("s").metrics()["J&F-Mean"] == pytest.approx(1.0)

        ds.delete_evaluation("s")
        ds.reload()
        assert ds.list_evaluations() == ["f"]
        assert ds.values("t_recall") == [0.25] and ds.values("frames.t_accuracy")[0] == [0.5] * 6
        assert not [f for f in ds.get_field_schema() if f.startswith("s_")]
        # a free key renames, and the label maps stay the run's inputs
        evaluate_vos(ds, "predictions", "ground_truth", eval_key="f", segmentation_key="v", overwrite=True)
        ds.rename_evaluation("v", "u")
        assert sorted(ds.list_evaluations()) == ["f", "u"] and ds.values("u_accuracy") == [pytest.approx(1.0)]
        assert ds.get_evaluation_info("u").config.gt_field == "frames." + label_map_fields("v")[0]
        assert ds.load_evaluation_results("u").metrics()["J&F-Mean"] == pytest.approx(1.0)
    finally:
        ds.delete()


# --------------------------------------------------------------------------- database outage


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing listens there


CLI_CASES = {
    "propagate": ["propagate", "--dataset", "d", "--keyframes-field", "kf", "--output-field", "out"],
    "propagate_queue": ["propagate", "--dataset", "d", "--keyframes-field", "kf", "--output-field", "out", "--queue"],
    "evaluate": ["evaluate", "--dataset", "d", "--pred-field", "p", "--gt-field", "g", "--eval-key", "k"],
    "compare": ["compare", "--dataset", "d"],
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_with_the_database_unreachable_prints_one_line(case):
    port = _closed_port()
    env = dict(os.environ)
    env.update(FIFTYONE_DATABASE_URI=f"mongodb://deaot:s3cret@127.0.0.1:{port}/?serverSelectionTimeoutMS=1500",
               FIFTYONE_DO_NOT_TRACK="true")
    proc = subprocess.run([sys.executable, "-m", "deaot_vos", *CLI_CASES[case]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and proc.returncode == 4, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: the FiftyOne database at mongodb://127.0.0.1:%d cannot be reached" % port), line
    assert "Connection refused" in line and "FIFTYONE_DATABASE_URI" in line and "mongod is running" in line, line
    assert "s3cret" not in proc.stderr and "deaot:" not in proc.stderr
    assert proc.stdout == ""
