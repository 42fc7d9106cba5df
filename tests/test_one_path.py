"""Every entry point takes the same per-video path (``sample_path.propagate_sample``): on a track
field with keyframe marks, on a clip view and on a video whose first attempt runs out of memory,
``apply_model`` writes exactly the labels ``propagate`` writes; and ``apply_model`` refuses to
store its labels in the prompt (keyframes) field. Real database, real videos, the real DeAOTT
with the shipped demo checkpoint."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import detection
from test_zoo import _frames

pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")

MARKED = (3, 8)  # the frames whose track labels are marked keyframe=True


def _track_dataset(path: str, maps: np.ndarray):
    """A video whose ``kf`` field is a track (as CVAT and the App write it): both objects labelled
    on every frame, only frames 3 and 8 marked ``keyframe=True``; the other frames hold stale
    copies of the last marked frame's masks (or of frame 3's before it)."""
    import fiftyone as fo

    dataset = fo.Dataset()
    sample = fo.Sample(filepath=path)
    dataset.add_sample(sample)
    names = {1: "red", 2: "green"}
    for number in range(1, len(maps) + 1):
        anchor = max([m for m in MARKED if m <= number] or [MARKED[0]])
        sample.frames[number]["kf"] = fo.Detections(detections=[
            detection(names[k], maps[anchor - 1] == k, index=k, keyframe=number in MARKED) for k in (1, 2)])
    sample.save()
    return dataset


def _model(**kwargs):
    from deaot_vos import PropagationOptions
    from deaot_vos.zoo_model import DeAOTVideoModel

    return DeAOTVideoModel(PropagationOptions(keyframes_field="kf", device="cpu"), **kwargs)


def _masks(dataset, field: str) -> dict[int, list[tuple]]:
    """Per frame: (label, index, box, mask bytes) of each Detection of ``field``."""
    numbers, values = dataset.values(["frames.frame_number", "frames." + field])
    return {n: sorted((d.label, d.index, tuple(d.bounding_box), np.ascontiguousarray(d.mask).tobytes())
                      for d in v.detections) for n, v in zip(numbers[0], values[0]) if v is not None}


def _keyframe_flags(dataset, field: str) -> dict[int, bool]:
    numbers, flags = dataset.values(["frames.frame_number", f"frames.{field}.deaot_keyframe"])
    return {n: f for n, f in zip(numbers[0], flags[0]) if f is not None}


def test_apply_model_uses_the_keyframe_marks_of_a_track_field(make_video):
    import deaot_vos

    path, maps = make_video("track", num_frames=12)
    dataset = _track_dataset(path, maps)
    deaot_vos.propagate(dataset, "kf", "ref", device="cpu")
    dataset.apply_model(_model(), label_field="zoo", prompt_field="frames.kf")

    reference, got = _frames(dataset, "ref"), _frames(dataset, "zoo")
    assert sorted(got) == list(range(1, 13)) and got == reference
    assert _keyframe_flags(dataset, "zoo") == _keyframe_flags(dataset, "ref") == {n: n in MARKED for n in range(1, 13)}
    stale, zoo = _masks(dataset, "kf"), _masks(dataset, "zoo")
    assert sum(zoo[n] != stale[n] for n in range(1, 13) if n not in MARKED) >= 5, "frames were propagated, not copied"


def test_apply_model_equals_propagate_on_a_clip_view_of_a_track_field(make_video):
    import deaot_vos

    path, maps = make_video("track_clip", num_frames=12)
    dataset = _track_dataset(path, maps)
    clips = dataset.to_clips([[(2, 10)]])
    deaot_vos.propagate(clips, "kf", "ref", device="cpu")
    clips.apply_model(_model(), label_field="zoo", prompt_field="frames.kf")
    dataset.reload()  # the clip view declared the new field on the root dataset's schema

    reference, got = _frames(dataset, "ref"), _frames(dataset, "zoo")
    assert sorted(got) == list(range(2, 11)) and got == reference
    assert _keyframe_flags(dataset, "zoo") == {n: n in MARKED for n in range(2, 11)}


def _out_of_memory_at_full_size(choice, device, options):
    """The real tracker, except that one built at the requested size runs out of memory on its
    first step (as CUDA does on a large video); the retry at a smaller size runs normally."""
    import torch
    from deaot_vos.propagation.trackers import build_tracker

    tracker = build_tracker(choice, device, options)
    if options.max_long_edge == 1040:
        def step(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        tracker.step = step
    return tracker


def test_apply_model_retries_out_of_memory_as_propagate_does(make_video, caplog):
    import deaot_vos

    path, maps = make_video("oom", num_frames=10)
    dataset = _track_dataset(path, maps)
    summary = deaot_vos.propagate(dataset, "kf", "ref", device="cpu", tracker_factory=_out_of_memory_at_full_size)
    row, = summary["samples"]
    assert row["status"] == "ok" and row["max_long_edge"] == 48 and "out of memory at frame" in row["warnings"][0]

    caplog.clear()
    dataset.apply_model(_model(tracker_factory=_out_of_memory_at_full_size), label_field="zoo",
                        prompt_field="frames.kf")
    reference, got = _frames(dataset, "ref"), _frames(dataset, "zoo")
    assert sorted(got) == list(range(1, 11)) and got == reference
    assert "retrying the video with max_long_edge 48" in caplog.text


@pytest.mark.parametrize("label_field", ["kf", "frames.kf", "kf_seg"])
def test_apply_model_refuses_to_write_into_the_prompt_field(make_video, label_field):
    import fiftyone.core.models as fom

    loop = fom._apply_video_model
    path, maps = make_video("refuse", num_frames=6)
    dataset = _track_dataset(path, maps)
    segmentation = label_field == "kf_seg"
    if segmentation:  # the label maps would go to "kf" (the dict names the fields)
        label_field = {"detections": "kf", "segmentation": "kf_seg"}
    before = (_masks(dataset, "kf"), sorted(dataset.get_frame_field_schema()), dataset.count("frames"))
    with pytest.raises(ValueError, match="would overwrite the keyframes.*nothing was written"):
        dataset.apply_model(_model(segmentation=segmentation), label_field=label_field, prompt_field="frames.kf")
    dataset.reload()
    assert (_masks(dataset, "kf"), sorted(dataset.get_frame_field_schema()), dataset.count("frames")) == before
    assert fom._apply_video_model is loop, "apply_model's video loop is restored after the call"
