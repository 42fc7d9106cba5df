"""A cancelled or failed run removes only what it wrote: frame documents another client created
(or wrote a field on) while the run went on survive its rollback, on every staging path (the
local swap cancelled, a ``skip_failures`` reset, a queued job's task cancelled).

A 10-frame video whose frame documents are 2, 3, 5, 6 (keyframes 2 and 6, an unrelated field on
3, an earlier output on 2 and 5). When the run reports frame 4, a second *process* adds a field
on frame 9 (the test waits for it to finish: the order is deterministic); the run goes on, writes
its staged value onto frame 9 too, and is then cancelled (or fails). Frame 9 and its field
must survive; the frames the run created alone (1, 4, 7, 8, 10) must go.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import detection
from test_reliability import _old_output, _outputs, scripted  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")

T = 10
BEFORE = {2, 3, 5, 6}

# the other client: a separate process adds a field on frame 9 of the dataset's only video
_OTHER_CLIENT = r'''
import sys
import fiftyone as fo
ds = fo.load_dataset(sys.argv[1])
sample = ds.first()
sample.frames[9]["note"] = fo.Classification(label="added by another client")
sample.save()
'''


def _dataset(name, make_video):
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    ds.persistent = True  # visible to the other process
    path, maps = make_video(name, T, objects=2, height=48, width=64)
    sample = fo.Sample(filepath=path)
    for n in (2, 6):
        sample.frames[n]["kf"] = fo.Detections(detections=[detection("red", maps[n - 1] == 1),
                                                           detection("green", maps[n - 1] == 2)])
    sample.frames[3]["other"] = fo.Classification(label="x")
    sample.frames[2]["out"] = _old_output("a")
    sample.frames[5]["out"] = _old_output("b")
    ds.add_sample(sample)
    assert set(ds.values("frames.frame_number")[0]) == BEFORE
    return ds


class _OtherClientAtFrame4:
    """A progress callback: at frame 4 runs the other client (a real process) to completion;
    ``then(label)`` decides the rest (False cancels; it may raise)."""

    def __init__(self, ds, then):
        self.ds, self.then, self.done = ds, then, False
        self.labels = []

    def __call__(self, fraction, label):
        self.labels.append(label)
        if not self.done and "frame 4/" in label:
            self.done = True
            out = subprocess.run([sys.executable, "-c", _OTHER_CLIENT, self.ds.name], capture_output=True, text=True,
                                 timeout=300)
            assert out.returncode == 0, out.stderr[-3000:]
        return self.then(label)


def _assert_other_client_kept(ds, outputs):
    ds.reload()
    sample = ds.first()
    numbers = set(ds.values("frames.frame_number")[0])
    assert numbers == BEFORE | {9}, f"frame documents after the rollback: {sorted(numbers)}"
    assert sample.frames[9]["note"].label == "added by another client"
    assert _outputs(ds) == outputs, "the output field must be as it was"
    assert not [f for f in ds.get_frame_field_schema() if f.endswith("_deaot_tmp")]


def _run_options(tiny_checkpoint):
    return dict(model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu", overwrite=True, write_every=1)


def test_a_cancelled_local_run_keeps_a_frame_another_client_wrote(make_video, scripted, tiny_checkpoint):
    import fiftyone as fo
    import deaot_vos

    ds = _dataset("rollback_local", make_video)
    try:
        outputs = _outputs(ds)
        # cancel at the very end: every frame (9 included) holds the run's staged value by then
        progress = _OtherClientAtFrame4(ds, lambda label: "writing the output" not in label)
        with pytest.raises(deaot_vos.PropagationCancelled):
            deaot_vos.propagate(ds, "kf", "out", progress=progress, **_run_options(tiny_checkpoint))
        assert progress.done and any("frame 10/" in label for label in progress.labels)
        _assert_other_client_kept(ds, outputs)
    finally:
        fo.delete_dataset(ds.name)


def test_a_failed_video_under_skip_failures_keeps_a_frame_another_client_wrote(make_video, scripted,
                                                                                 tiny_checkpoint):
    import fiftyone as fo
    import deaot_vos

    def fail_at_the_last_frame(label):
        if "frame 10/" in label:
            raise RuntimeError("decoder died")

    ds = _dataset("rollback_skip", make_video)
    try:
        outputs = _outputs(ds)
        progress = _OtherClientAtFrame4(ds, fail_at_the_last_frame)
        summary = deaot_vos.propagate(ds, "kf", "out", progress=progress, skip_failures=True,
                                      **_run_options(tiny_checkpoint))
        assert progress.done and summary["failed"] and "decoder died" in summary["failed"][0]["error"]
        _assert_other_client_kept(ds, outputs)
    finally:
        fo.delete_dataset(ds.name)


def test_a_cancelled_queued_task_keeps_a_frame_another_client_wrote(make_video, scripted, tiny_checkpoint):
    import fiftyone as fo
    from deaot_vos.propagation import PropagationCancelled, PropagationOptions, queue_propagation, run_task

    ds = _dataset("rollback_job", make_video)
    try:
        outputs = _outputs(ds)
        options = _run_options(tiny_checkpoint)
        queued = queue_propagation(ds, "kf", "out", **options)
        progress = _OtherClientAtFrame4(ds, lambda label: "frame 10/" not in label)
        with pytest.raises(PropagationCancelled):
            run_task(ds, queued["job"], ds.values("id"), progress=progress,
                     options=PropagationOptions(keyframes_field="kf", output_field="out", **options))
        assert progress.done
        _assert_other_client_kept(ds, outputs)
    finally:
        fo.delete_dataset(ds.name)
