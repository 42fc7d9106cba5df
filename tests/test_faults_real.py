"""Faults tried as a hostile user and a flaky machine would, with real processes: the database
stopped mid-run, two ``fiftyone delegated launch`` workers with one killed mid-task, keyframes
edited on frames a view hides, a video replaced by another of the same length, a long video
(memory stays flat) and 200 objects on one keyframe."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import detection as _det, fresh_dataset

URI = "@deaot/vos/propagate_masks"
pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")


def _masks(ds, field="out"):
    """frame number -> sorted [(index, bbox, mask bytes)] of the first sample's ``field``."""
    numbers, values = ds.values(["frames.frame_number", f"frames.{field}"])
    return {n: sorted((d.index, tuple(d.bounding_box), d.mask.tobytes()) for d in v.detections)
            for n, v in zip(numbers[0], values[0]) if v is not None}


def _one_video(name, path, maps, keyframes=(2, 6)):
    import fiftyone as fo

    ds = fresh_dataset(name)
    sample = fo.Sample(filepath=path)
    for n in keyframes:
        m = maps[n - 1]
        sample.frames[n]["kf"] = fo.Detections(detections=[_det("red", m == 1), _det("green", m == 2)])
    ds.add_sample(sample)
    return ds


@pytest.fixture
def run(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("DEAOT_CACHE", str(tmp_path / "cache"))
    return dict(model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu")


def test_keyframe_edited_on_a_frame_the_view_hides_then_incremental(make_video, run):
    """The view decides the keyframes: a keyframe edited on a frame the view hides is not used
    by an incremental run on that view (it equals a full run on the view), and a later
    incremental run on the whole dataset recomputes exactly what depends on it (it equals a
    full run on the dataset)."""
    import fiftyone as fo
    from fiftyone import ViewField as F
    import deaot_vos

    path, maps = make_video("hidden", 10, objects=2)
    ds = _one_video("faults_hidden", path, maps, keyframes=(2, 6))
    view = ds.match_frames(F("frame_number") != 6)
    first, = deaot_vos.propagate(ds, "kf", "out", incremental=True, **run)["samples"]
    assert first["keyframes"] == [2, 6] and first["frames_recomputed"] == 10
    sample = ds.first()  # the user edits the keyframe on frame 6, which the view hides
    edited = maps[5].copy()
    edited[edited == 2] = 0
    edited[30:40, 40:50] = 2
    sample.frames[6]["kf"] = fo.Detections(detections=[_det("red", edited == 1), _det("green", edited == 2)])
    sample.save()
    on_view, = deaot_vos.propagate(view, "kf", "out", incremental=True, **run)["samples"]
    assert on_view["keyframes"] == [2] and on_view["frames_recomputed"] == 5  # 6..10 followed the old keyframe 6
    deaot_vos.propagate(view, "kf", "full_view", **run)
    assert _masks(ds, "out") == _masks(ds, "full_view") and sorted(_masks(ds, "out")) == list(range(1, 11))
    on_dataset, = deaot_vos.propagate(ds, "kf", "out", incremental=True, **run)["samples"]
    assert on_dataset["keyframes"] == [2, 6] and on_dataset["frames_recomputed"] == 5
    deaot_vos.propagate(ds, "kf", "full", **run)
    assert _masks(ds, "out") == _masks(ds, "full")
    assert _masks(ds, "out")[6] != _masks(ds, "full_view")[6]


def _raw_video(path, label_maps):
    """Uncompressed AVI: its size depends only on the frame count and resolution."""
    import imageio_ffmpeg

    t, h, w = label_maps.shape
    colours = np.array([[60, 60, 60], [230, 40, 40], [40, 220, 60]], np.uint8)
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), codec="rawvideo", pix_fmt_in="rgb24",
                                         pix_fmt_out="bgr24", macro_block_size=1, fps=10)
    writer.send(None)
    for i in range(t):
        writer.send(np.ascontiguousarray(colours[label_maps[i] % 3]).tobytes())
    writer.close()
    return str(path)


def test_video_replaced_by_another_of_the_same_length(run, tmp_path):
    """A video file overwritten by another video of the same frame count, byte size and
    modification time (uncompressed AVI; times kept as ``cp -p``/``rsync -t`` keep them): an
    incremental run recomputes every frame and equals a full run on the new file."""
    import deaot_vos
    from conftest import synthetic_label_maps

    maps = synthetic_label_maps(8, 48, 64, 2)
    path = _raw_video(tmp_path / "replaced.avi", maps)
    ds = _one_video("faults_replaced", path, maps, keyframes=(1,))
    first, = deaot_vos.propagate(ds, "kf", "out", incremental=True, **run)["samples"]
    assert first["frames_recomputed"] == 8
    stat = os.stat(path)
    other_path = _raw_video(tmp_path / "other.avi", np.roll(maps, 20, axis=2))
    assert os.stat(other_path).st_size == stat.st_size
    shutil.copyfile(other_path, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second, = deaot_vos.propagate(ds, "kf", "out", incremental=True, **run)["samples"]
    assert (second["frames_recomputed"], second["frames_reused"]) == (8, 0)
    deaot_vos.propagate(ds, "kf", "full", **run)
    assert _masks(ds, "out") == _masks(ds, "full")


def test_two_hundred_objects_on_one_keyframe(tmp_path, run):
    """200 objects given on frame 1 (tracked in groups): the keyframe is copied exactly, every
    object keeps its own index on every frame, and the segmentation holds all 200 values."""
    import fiftyone as fo
    import deaot_vos
    from conftest import write_video

    T, H, W, N = 4, 160, 160, 200
    maps = np.zeros((T, H, W), np.int32)
    for k in range(N):
        y, x = divmod(k, 14)
        maps[:, 2 + y * 11:10 + y * 11, 2 + x * 11:10 + x * 11] = k + 1
    path = write_video(tmp_path / "crowd.mp4", maps)
    ds = fresh_dataset("faults_crowd")
    sample = fo.Sample(filepath=str(path))
    sample.frames[1]["kf"] = fo.Detections(detections=[_det(f"o{k}", maps[0] == k + 1, index=k + 1) for k in range(N)])
    ds.add_sample(sample)
    row, = deaot_vos.propagate(ds, "kf", "out", write_segmentation="seg", **run)["samples"]
    assert row["status"] == "ok" and row["objects"] == N and row["frames_written"] == T
    ds.reload()
    outputs, segmentations = ds.values("frames.out")[0], ds.values("frames.seg")[0]
    first = {d.index: d for d in outputs[0].detections}
    assert sorted(first) == list(range(1, N + 1))
    for d in sample.frames[1]["kf"].detections:
        assert first[d.index].bounding_box == d.bounding_box and np.array_equal(first[d.index].mask, d.mask)
    assert np.array_equal(np.unique(segmentations[0].mask), np.arange(N + 1))
    for dets, seg in zip(outputs, segmentations):
        indexes = [d.index for d in dets.detections]
        assert len(indexes) == len(set(indexes)) and set(indexes) <= set(range(1, N + 1))
        assert set(np.unique(seg.mask)) - {0} == set(indexes)


class _ColourTracker:
    """Stand-in tracker (for long runs): labels red pixels 1 and green pixels 2 (the colours
    _raw_video draws), so 3000 frames take seconds and memory is the plugin's own."""

    def __init__(self, model, device="cpu", options=None, **kwargs):
        self.device = str(device)
        self.reset()

    def reset(self):
        self.label, self.num_objects = None, 0

    def step(self, frame, mask=None, objects=None):
        import torch

        f = frame.astype(int)
        label = np.zeros(frame.shape[:2], np.int64)
        label[(f[..., 0] > 150) & (f[..., 1] < 120)] = 1
        label[(f[..., 1] > 150) & (f[..., 0] < 120)] = 2
        if mask is not None:
            self.num_objects = max(self.num_objects, int(np.max(mask)))
        self.label = label
        return torch.from_numpy(np.stack([label == k for k in range(self.num_objects + 1)]).astype(np.float32))


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_a_3000_frame_video_runs_in_flat_memory(tmp_path, run, monkeypatch):
    """Decoding, labels and writes of a 3000-frame video: the resident memory sampled per frame
    grows by less than 25 MiB from the first tenth to the end (a leak of one 64x48 mask
    per frame would add ~9 MiB, of one decoded frame ~27 MiB). The tracker is a stand-in; the
    real model's memory over the same video is measured in docs/reliability.md."""
    import fiftyone as fo
    import deaot_core
    import deaot_vos
    from conftest import synthetic_label_maps

    monkeypatch.setattr(deaot_core, "Tracker", _ColourTracker)
    T = 3000
    maps = synthetic_label_maps(40, 48, 64, 2)
    maps = np.concatenate([maps, maps[::-1]] * (T // 80 + 1))[:T]
    path = _raw_video(tmp_path / "long.avi", maps)
    ds = fresh_dataset("faults_long")
    sample = fo.Sample(filepath=path)
    sample.frames[1]["kf"] = fo.Detections(detections=[_det("red", maps[0] == 1), _det("green", maps[0] == 2)])
    ds.add_sample(sample)
    rss = []
    row, = deaot_vos.propagate(ds, "kf", "out", write_segmentation="seg", progress=lambda f, _: rss.append(_rss_mib()),
                               **run)["samples"]
    assert row["status"] == "ok" and row["frames_written"] == T
    early, late = max(rss[:len(rss) // 10]), max(rss)
    assert late - early < 25, f"resident memory grew from {early:.0f} to {late:.0f} MiB"
    ds.reload()
    assert ds.count("frames.out") == T and ds.count("frames.seg") == T


# -- two delegated workers on one queue, one SIGKILLed mid-task ------------------------------

_DYING_WORKER = r'''
import os, sys
import fiftyone.core.collections as foc

original = foc.SampleCollection._set_doc_values

def set_doc_values(self, field_name, *args, frames=False, **kwargs):
    # die like a SIGKILL (out of memory, a killed container) once part of a video is staged
    if frames and field_name.endswith("_deaot_tmp"):
        os.kill(os.getpid(), 9)
    return original(self, field_name, *args, frames=frames, **kwargs)

foc.SampleCollection._set_doc_values = set_doc_values
from fiftyone.core.cli import main
sys.argv = ["fiftyone", "delegated", "launch"]
main()
'''


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"


def test_a_worker_killed_mid_task_fails_its_video_visibly_and_writes_none_of_it(make_video, tiny_checkpoint,
                                                                                tmp_path):
    """Worker A takes the first task and dies (SIGKILL) once part of its video is staged (and
    stays unreaped, as under a parent that has not waited yet); worker B runs the other tasks. A's operation ends failed naming the dead worker, its video has no
    output (not half of one), the others are complete, no staging field is left, and an
    incremental re-run fills the missing video only."""
    import subprocess
    import sys
    import time

    import fiftyone as fo
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService
    import deaot_vos
    from deaot_vos.propagation import job_status
    from test_workers import _start_worker, _stop

    T, videos = 8, 3
    ds = fresh_dataset("faults_workers")
    ds.persistent = True
    for v in range(videos):
        path, maps = make_video(f"fw{v}", T, objects=2, height=48, width=64)
        sample = fo.Sample(filepath=path)
        sample.frames[2]["kf"] = fo.Detections(detections=[_det("red", maps[1] == 1), _det("green", maps[1] == 2)])
        ds.add_sample(sample)
    service = DelegatedOperationService()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    worker_b = None
    try:
        with open(tmp_path / "a.log", "wb") as log:
            worker_a = subprocess.Popen([sys.executable, "-c", _DYING_WORKER], stdout=log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)
        params = dict(keyframes_field="kf", output_field="out", model="DeAOTT", checkpoint=tiny_checkpoint,
                      device="cpu", delegate=True, write_every=2)
        assert foo.execute_operator(URI, dict(dataset=ds, view=ds.view(), params=params)).delegated
        deadline = time.time() + 150
        while not _zombie(worker_a.pid):  # killed and left unreaped: its pid still exists
            assert time.time() < deadline, (tmp_path / "a.log").read_text()[-3000:]
            time.sleep(0.2)
        job_id = next(op.result.result["job"] for op in service.list_operations(operator=URI, dataset_name=ds.name)
                      if op.result and "job" in (op.result.result or {}))
        (dead_sid, claim), = job_status(job_id)["videos"].items()
        assert claim["status"] == "running" and claim["pid"] == worker_a.pid
        worker_b = _start_worker(tmp_path / "b.log")
        deadline = time.time() + 150
        # the job is finalized by the last task, whose own operation is marked completed just after it
        while not job_status(job_id)["finalized"] or any(
                op.run_state not in ("completed", "failed") for op in service.list_operations(
                    operator=URI, dataset_name=ds.name)):
            assert worker_b.poll() is None and time.time() < deadline, (tmp_path / "b.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        if worker_b is not None:
            _stop(worker_b)
    assert worker_a.wait(timeout=10) == -9
    ops = {op.id: op for op in service.list_operations(operator=URI, dataset_name=ds.name)}
    dead_op = ops[__import__("bson").ObjectId(claim["op"])]
    assert dead_op.run_state == "failed" and f"pid {worker_a.pid}" in dead_op.result.error
    assert sorted(op.run_state for op in ops.values()) == ["completed"] * videos + ["failed"]
    job = job_status(job_id)
    assert job["videos"][dead_sid]["status"] == "failed" and "died" in job["videos"][dead_sid]["error"]
    ds.reload()
    assert "out_deaot_tmp" not in ds.get_frame_field_schema()
    counts = {sid: sum(v is not None for v in values) for sid, values in zip(ds.values("id"), ds.values("frames.out"))}
    assert counts == {sid: (0 if sid == dead_sid else T) for sid in counts}, counts
    row = [r for r in deaot_vos.propagate(ds, "kf", "out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu",
                                          incremental=True)["samples"]]
    assert {r["id"]: r["frames_recomputed"] for r in row} == {s: (T if s == dead_sid else 0) for s in ds.values("id")}
    assert ds.count("frames.out") == videos * T
    fo.delete_dataset(ds.name)


# -- the database stopped in the middle of a run ------------------------------------------------

_DB_CLIENT = r'''
import json, os, sys, time
from pathlib import Path
import numpy as np
mode, tmp = sys.argv[1], Path(sys.argv[2])
import fiftyone as fo
import deaot_vos
sys.path.insert(0, sys.argv[3])
if mode == "setup":
    from helpers import detection
    ds = fo.Dataset("faults_db", persistent=True)
    maps = np.load(tmp / "maps.npy")
    for v in range(2):
        sample = fo.Sample(filepath=str(tmp / f"db{v}.mp4"), note=f"video {v}")
        sample.frames[2]["kf"] = fo.Detections(detections=[detection("red", maps[1] == 1), detection("green", maps[1] == 2)])
        sample.frames[3]["mine"] = fo.Classification(label="keep me")
        ds.add_sample(sample)
    sys.exit(0)
ds = fo.load_dataset("faults_db")
if mode == "check":
    has_out = "out" in ds.get_frame_field_schema()
    print(json.dumps(dict(out=ds.count("frames.out") if has_out else 0, mine=ds.distinct("frames.mine.label"), kf=ds.count("frames.kf"),
                          frames=ds.count("frames"), fields=sorted(ds.get_frame_field_schema()))))
    sys.exit(0)
calls = []
def progress(fraction, label):
    calls.append(fraction)
    if len(calls) == 5:  # mid-video: tell the test, wait until it has stopped the database
        (tmp / "at_frame").touch()
        while not (tmp / "db_stopped").exists():
            time.sleep(0.05)
try:
    summary = deaot_vos.propagate(ds, "kf", "out", model="DeAOTT", checkpoint=sys.argv[4], device="cpu",
                                  write_every=2, overwrite=mode == "rerun", progress=progress if mode == "run" else None)
except Exception as err:
    print(f"FAILED {type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(3)
print("OK", json.dumps([r["status"] for r in summary["samples"]]))
'''


class _Mongod:
    """A mongod of the test's own (stopped and restarted by the test) on a free port."""

    def __init__(self, root):
        import socket

        from conftest import _find_mongod

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.root, self.binary, self.proc = root, _find_mongod(), None
        (root / "db").mkdir()
        self.start()

    def start(self):
        import socket
        import subprocess
        import time

        self.proc = subprocess.Popen([self.binary, "--dbpath", str(self.root / "db"), "--port", str(self.port),
                                      "--bind_ip", "127.0.0.1", "--nounixsocket", "--journalCommitInterval", "500",
                                      "--logpath",
                                      str(self.root / "mongod.log"), "--logappend"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            assert self.proc.poll() is None and time.time() < deadline, "mongod did not start"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)

    def kill(self):
        self.proc.kill()  # a crash, not a clean shutdown
        self.proc.wait()


@pytest.mark.parametrize("outage", ["short", "long"])
def test_the_database_stopped_mid_run(outage, tmp_path, tiny_checkpoint):
    """mongod SIGKILLed while a run is at frame 5 of its first video. Short outage (restarted
    after 2 s): the run waits for it and finishes. Long outage (down until the run gives up; a
    2 s server selection timeout here): the run fails with a clear error, nothing is lost,
    and a re-run after the restart completes."""
    import json
    import subprocess
    import sys
    import time

    mongod = _Mongod(tmp_path)
    timeout = 2000 if outage == "long" else 30000
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               FIFTYONE_DATABASE_URI=f"mongodb://127.0.0.1:{mongod.port}/?serverSelectionTimeoutMS={timeout}")

    def client(mode, **kwargs):
        args = [sys.executable, "-c", _DB_CLIENT, mode, str(tmp_path), str(Path(__file__).parent), tiny_checkpoint]
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)

    def check():
        out, err = client("check").communicate(timeout=120)
        assert out.strip(), err[-3000:]
        return json.loads(out.strip().splitlines()[-1])

    from conftest import synthetic_label_maps, write_video

    maps = synthetic_label_maps(12, 48, 64, 2)
    np.save(tmp_path / "maps.npy", maps)
    for v in range(2):
        write_video(tmp_path / f"db{v}.mp4", maps)
    try:
        setup = client("setup")
        assert setup.wait(timeout=120) == 0, setup.communicate()[1][-3000:]
        before = check()
        run = client("run")
        deadline = time.time() + 300
        while not (tmp_path / "at_frame").exists():
            assert run.poll() is None and time.time() < deadline, run.communicate()
            time.sleep(0.05)
        mongod.kill()
        (tmp_path / "db_stopped").touch()
        if outage == "short":
            time.sleep(2)
            mongod.start()
        out, err = run.communicate(timeout=180)
        if outage == "short":
            assert run.returncode == 0 and 'OK ["ok", "ok"]' in out, err[-3000:]
        else:
            assert run.returncode == 3 and "FAILED ServerSelectionTimeoutError" in err, err[-3000:]
            mongod.start()
            after = check()
            assert after["out"] == 0 and after["mine"] == ["keep me"] and after["kf"] == before["kf"], after
            rerun = client("rerun")
            out, err = rerun.communicate(timeout=180)
            assert rerun.returncode == 0 and 'OK ["ok", "ok"]' in out, err[-3000:]
        after = check()
        assert after["out"] == 2 * 12 and after["mine"] == ["keep me"] and after["kf"] == before["kf"], after
        assert not [f for f in after["fields"] if f.endswith(("_deaot_tmp", "_deaot_old"))], after
    finally:
        mongod.kill()
