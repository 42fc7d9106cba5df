"""Video metadata from our decoder: the ``metadata`` command and operator fill what is missing
(so the App plays videos without ffprobe), propagation fills it for the videos it touches.
Real database, real videos decoded by decord; ffprobe is made to fail."""
from __future__ import annotations

import pytest


@pytest.fixture
def no_ffprobe(monkeypatch):
    import eta.core.video as etav

    def refuse(*args, **kwargs):
        raise AssertionError("ffprobe was called")

    monkeypatch.setattr(etav.VideoMetadata, "build_for", classmethod(refuse))


def _dataset(fo, paths):
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    assert dataset.count("metadata") == 0
    return dataset


def test_metadata_command_fills_what_is_missing(fiftyone_db, make_video, tmp_path, capsys, no_ffprobe):
    import fiftyone as fo
    from deaot_vos.cli import main

    first, maps = make_video("a", num_frames=7)
    second, _ = make_video("b", num_frames=5, height=48, width=80)
    dataset = _dataset(fo, [first, second, str(tmp_path / "missing.mp4")])
    dataset.persistent = True
    kept = dataset.match(fo.ViewField("filepath") == second).first()
    kept.metadata = fo.VideoMetadata(frame_width=80, frame_height=48, frame_rate=10.0, total_frame_count=5)
    kept.save()

    assert main(["metadata", dataset.name]) == 1
    out = capsys.readouterr()
    assert "metadata filled for 1 video(s), 1 already had it, 1 failed" in out.out
    assert "missing.mp4" in out.err and "not found" in out.err
    dataset.reload()
    meta = dataset.match(fo.ViewField("filepath") == first).first().metadata
    assert (meta.frame_width, meta.frame_height, meta.total_frame_count) == (96, 64, 7)
    assert meta.frame_rate > 0 and meta.duration == pytest.approx(7 / meta.frame_rate)
    assert meta.size_bytes > 0 and meta.mime_type == "video/mp4"
    assert meta.encoding_str == "mp4v"  # what the test's OpenCV writer encodes, not a fixed guess

    assert main(["metadata", dataset.name, "--overwrite"]) == 1
    assert "metadata filled for 2 video(s), 0 already had it" in capsys.readouterr().out
    assert main(["metadata", "no-such-dataset"]) == 2


def test_operator_and_propagation_fill_metadata(fiftyone_db, make_video, no_ffprobe, torch_threads):
    import fiftyone as fo
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, Executor
    import deaot_vos
    from helpers import detection

    path, maps = make_video("op", num_frames=6)
    dataset = _dataset(fo, [path])
    ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, view=[], params={}), executor=Executor())
    result = foo.get_operator("@deaot/vos/compute_video_metadata").execute(ctx)
    assert result == dict(filled=1, kept=0, failed=[])
    assert dataset.first().metadata.total_frame_count == 6

    touched = _dataset(fo, [path])
    sample = touched.first()
    sample.frames[1]["kf"] = fo.Detections(detections=[detection("a", maps[0] == 1)])
    sample.save()
    deaot_vos.propagate(touched, "kf", "out", device="cpu")
    meta = touched.first().metadata
    assert (meta.frame_width, meta.frame_height, meta.total_frame_count) == (96, 64, 6)
