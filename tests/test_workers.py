"""Scale-out (issue 6): the propagate operator, delegated over several videos, queues one
operation per video; two real ``fiftyone delegated launch`` workers sharing the test database
run them in parallel. Every video is done exactly once, by one of the workers, both workers do
some, no staging field remains and nothing but the output field changes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import detection as _det

pytestmark = pytest.mark.usefixtures("fiftyone_db")

URI = "@deaot/vos/propagate_masks"
H, W, T = 48, 64, 8
VIDEOS = 5
TIMEOUT = 150  # seconds for the whole queue (typically ~30 s on 2 loaded cores)
NEW_FRAME_KEYS = {"_id", "frame_number", "_sample_id", "_dataset_id", "created_at", "last_modified_at", "out"}


def _raw(ds):
    """Raw sample documents by id, and frame documents by (sample id, frame number)."""
    samples = {str(d["_id"]): d for d in ds._sample_collection.find({})}
    frames = {(str(d["_sample_id"]), d["frame_number"]): d for d in ds._frame_collection.find({})}
    return samples, frames


def _worker_command() -> list[str]:
    script = Path(sys.executable).parent / "fiftyone"
    if script.is_file():
        return [sys.executable, str(script), "delegated", "launch"]
    return [sys.executable, "-c", "import sys; from fiftyone.core.cli import main; "
                                  "sys.argv = ['fiftyone', 'delegated', 'launch']; main()"]


def _start_worker(log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               FIFTYONE_DO_NOT_TRACK="true")  # FIFTYONE_DATABASE_URI / _PLUGINS_DIR: set by conftest
    with open(log, "wb") as out:
        return subprocess.Popen(_worker_command(), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """``fiftyone delegated launch`` loops forever; Ctrl-C (SIGINT) ends it cleanly."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def workers_dataset(make_video):
    import fiftyone as fo

    name = "t_workers"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    for v in range(VIDEOS):
        path, maps = make_video(f"w{v}", T, objects=2, height=H, width=W)
        sample = fo.Sample(filepath=path, note=f"video {v}")
        for n in (2, 5):
            m = maps[n - 1]
            sample.frames[n]["kf"] = fo.Detections(detections=[_det("red", m == 1, index=4), _det("green", m == 2)])
        sample.frames[3]["other"] = fo.Classification(label="x")
        ds.add_sample(sample)
    yield ds
    from fiftyone.operators.delegated import DelegatedOperationService

    service = DelegatedOperationService()
    for op in service.list_operations(dataset_name=name):
        service.delete_operation(op.id)
    fo.delete_dataset(name)


def test_two_workers_share_the_queue(workers_dataset, tiny_checkpoint, tmp_path):
    import fiftyone as fo
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService
    from deaot_vos.propagation import OutputExistsError
    from deaot_vos.propagation import job_status

    ds = workers_dataset
    samples_before, frames_before = _raw(ds)
    service = DelegatedOperationService()
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    procs = [_start_worker(log) for log in logs]
    start = time.time()

    def worker_logs() -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}" for log in logs)

    try:
        # both workers polling before anything is queued (each pays its own start-up)
        while not all("service running" in log.read_text(errors="replace") for log in logs):
            assert all(p.poll() is None for p in procs), worker_logs()
            assert time.time() - start < 90, "workers did not start\n" + worker_logs()
            time.sleep(0.3)
        params = dict(keyframes_field="kf", output_field="out", model="DeAOTT", checkpoint=tiny_checkpoint,
                      device="cpu", delegate=True)
        queued = foo.execute_operator(URI, dict(dataset=ds, view=ds.view(), params=params))
        assert queued.delegated
        while True:
            ops = service.list_operations(operator=URI, dataset_name=ds.name)
            states = [op.run_state for op in ops]
            if "failed" in states:
                failed = [op.result for op in ops if op.run_state == "failed"]
                pytest.fail(f"an operation failed: {failed}\n{worker_logs()}")
            if len(ops) == 1 + VIDEOS and set(states) == {"completed"}:
                break
            assert time.time() - start < TIMEOUT, f"not done in {TIMEOUT}s: {states}\n{worker_logs()}"
            time.sleep(0.5)
        elapsed = time.time() - start
    finally:
        for proc in procs:
            _stop(proc)
    print(f"{VIDEOS} videos by two workers in {elapsed:.1f}s")

    # the parent only queued; each child did one video and recorded its worker
    parent = next(op for op in ops if "job" in (op.result.result or {}))
    assert parent.result.result["status"] == "queued" and parent.result.result["operations_queued"] == VIDEOS
    children = [op for op in ops if op.id != parent.id]
    ds.reload()
    sids = ds.values("id")
    done_by = {}
    for op in children:
        result = op.result.result
        assert result["status"] == "ok" and result["propagated"] == 1, result
        (row,) = result["summary"]
        assert row["status"] == "ok" and row["id"] not in done_by
        done_by[row["id"]] = result["worker"]["pid"]
    assert sorted(done_by) == sorted(sids)
    job = job_status(parent.result.result["job"])
    assert job["finalized"] and job["pending"] == []
    assert {sid: v["status"] for sid, v in job["videos"].items()} == {sid: "done" for sid in sids}
    assert {sid: v["pid"] for sid, v in job["videos"].items()} == done_by
    pids = {p.pid for p in procs}
    assert set(done_by.values()) == pids, f"both workers must take videos: {done_by} vs {pids}"

    # every frame of every video holds the output; keyframes copied exactly
    for sample in ds:
        assert sorted(sample.frames.keys()) == list(range(1, T + 1))
        for n in range(1, T + 1):
            frame = sample.frames[n]
            assert isinstance(frame["out"], fo.Detections), (sample.id, n)
            if frame["kf"] is not None:
                out = {d.index: d for d in frame["out"].detections}
                for d in frame["kf"].detections:
                    match = out[d.index] if d.index is not None else next(o for o in out.values()
                                                                           if o.label == d.label)
                    assert match.bounding_box == d.bounding_box and np.array_equal(match.mask, d.mask)

    # nothing else changed; no staging field left
    assert sorted(ds.get_frame_field_schema()) == sorted(
        ["id", "frame_number", "created_at", "last_modified_at", "kf", "other", "out"])
    samples_after, frames_after = _raw(ds)
    strip = lambda d, drop: {k: v for k, v in d.items() if k not in drop}  # noqa: E731
    # the samples are as they were but for the metadata the run filled (the App needs it to play them)
    assert {k: strip(d, {"last_modified_at", "metadata"}) for k, d in samples_after.items()} == \
        {k: strip(d, {"last_modified_at", "metadata"}) for k, d in samples_before.items()}
    assert all(d["metadata"]["total_frame_count"] == T for d in samples_after.values())
    for key, doc in frames_after.items():
        if key in frames_before:
            assert strip(doc, {"out", "last_modified_at"}) == strip(frames_before[key], {"out", "last_modified_at"})
        else:
            assert set(doc) <= NEW_FRAME_KEYS, doc.keys()

    # queueing again without overwrite is refused up front, for the whole view: nothing queued
    with pytest.raises(Exception, match="'out' already exists"):
        foo.execute_operator(URI, dict(dataset=ds, view=ds.view(), params=params))
    assert len(service.list_operations(operator=URI, dataset_name=ds.name)) == 1 + VIDEOS


def _run_queue(service, dataset_name):
    """Run queued operations in this process until none is left (a worker's loop, without the wait)."""
    while service.execute_queued_operations(operator=URI, dataset_name=dataset_name):
        pass


def test_a_failing_task_keeps_its_videos_output_and_the_others_are_written(workers_dataset, tiny_checkpoint,
                                                                           tmp_path):
    """overwrite=True over an existing output; one video breaks after queueing: its task fails,
    its output stays as it was, the other tasks write theirs, the staging field is dropped."""
    import fiftyone as fo
    from fiftyone.operators.delegated import DelegatedOperationService
    from deaot_vos.propagation import job_status, queue_propagation

    ds = workers_dataset
    old = fo.Detections(detections=[fo.Detection(label="old", bounding_box=[0.1, 0.1, 0.2, 0.2], index=1)])
    for sample in ds:
        sample.frames[2]["out"] = old
        sample.save()
    bad = ds.first()
    outputs_before = {k: d.get("out") for k, d in _raw(ds)[1].items() if k[0] == bad.id}
    queued = queue_propagation(ds, "kf", "out", overwrite=True, model="DeAOTT", checkpoint=tiny_checkpoint,
                               device="cpu")
    assert len(queued["operations"]) == VIDEOS and queued["samples"] == VIDEOS
    assert "out_deaot_tmp" in ds.get_frame_field_schema()
    with pytest.raises(RuntimeError, match="still queued or running"):  # same field, while queued
        queue_propagation(ds, "kf", "out", overwrite=True, model="DeAOTT", checkpoint=tiny_checkpoint)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    bad.filepath = str(broken)
    bad.save()

    service = DelegatedOperationService()
    _run_queue(service, ds.name)
    ops = service.list_operations(operator=URI, dataset_name=ds.name)
    assert sorted(op.run_state for op in ops) == ["completed"] * (VIDEOS - 1) + ["failed"]
    job = job_status(queued["job"])
    assert job["finalized"] and job["videos"][bad.id]["status"] == "failed"
    ds.reload()
    assert not [f for f in ds.get_frame_field_schema() if f.endswith(("_deaot_tmp", "_deaot_old"))]
    assert {k: d.get("out") for k, d in _raw(ds)[1].items() if k[0] == bad.id} == outputs_before
    for sample in ds.skip(1):
        assert all(isinstance(sample.frames[n]["out"], fo.Detections) and
                   sample.frames[n]["out"].detections[0].label != "old" for n in range(1, T + 1))


def test_a_job_without_live_operations_is_closed_by_the_next_run(workers_dataset, tiny_checkpoint):
    """Workers killed: the job's operations are marked failed; the next run removes the staging
    field (and the output field the job created, still empty) and goes on."""
    import deaot_vos
    from fiftyone.operators.delegated import DelegatedOperationService
    from deaot_vos.propagation import job_status, queue_propagation

    ds = workers_dataset
    queued = queue_propagation(ds, "kf", "out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu")
    assert {"out", "out_deaot_tmp"} <= set(ds.get_frame_field_schema())
    service = DelegatedOperationService()
    from bson import ObjectId

    for op_id in queued["operations"]:
        assert service.set_failed(ObjectId(op_id), result=None) is not None
    summary = deaot_vos.propagate(ds.limit(1), "kf", "out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu")
    assert summary["written"] and job_status(queued["job"])["finalized"]
    ds.reload()
    assert "out_deaot_tmp" not in ds.get_frame_field_schema() and ds.count("frames.out") == T


def test_cli_queue(workers_dataset, tiny_checkpoint, capsys):
    """``python -m deaot_vos propagate --queue``: one operation per two videos, then a worker runs them."""
    import json

    from fiftyone.operators.delegated import DelegatedOperationService
    from deaot_vos.cli import main

    ds = workers_dataset
    sids = ds.values("id")[:3]
    argv = ["propagate", "--dataset", ds.name, "--keyframes-field", "kf", "--output-field", "out", "--model",
            "DeAOTT", "--checkpoint", tiny_checkpoint, "--device", "cpu", "--queue", "--videos-per-task", "2",
            "--json"] + [a for sid in sids for a in ("--sample-id", sid)]
    assert main(argv) == 0
    queued = json.loads(capsys.readouterr().out)
    assert len(queued["operations"]) == 2 and queued["samples"] == 3
    _run_queue(DelegatedOperationService(), ds.name)
    ds.reload()
    assert ds.count("frames.out") == 3 * T and "out_deaot_tmp" not in ds.get_frame_field_schema()
    assert main(argv) == 1 and "already exists" in capsys.readouterr().err  # refused once, up front
