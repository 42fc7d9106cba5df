"""Scale-out: N videos queued as per-video tasks, run by 1 and by 2 ``fiftyone delegated launch``
workers (one torch thread each), wall time side by side; then what happens to the task of a
worker killed mid-task, with and without ``--monitor``.

    nice python bench/bench_workers.py --videos 6 --json bench/results/workers.json

Everything runs against a private mongod (``bench_speed.PrivateMongo``), a private plugins dir
holding this checkout, a private weights cache, synthetic mp4v videos and random DeAOTT weights
(the work per frame does not depend on their values). The workers start and poll before the
videos are queued; the wall time runs from queueing until every task is completed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
from bench_speed import PrivateMongo, machine_info  # noqa: E402

URI = "@deaot/vos/propagate_masks"


def worker_process(log: Path, monitor: bool, env: dict) -> subprocess.Popen:
    argv = ["fiftyone", "delegated", "launch"] + (["--monitor", "--monitor-interval", "1"] if monitor else [])
    cmd = [sys.executable, "-c", f"import sys; from fiftyone.core.cli import main; sys.argv = {argv!r}; main()"]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def synthetic_clip(path: Path, frames: int, height: int = 96, width: int = 128) -> np.ndarray:
    """Two coloured rectangles moving over a textured background, as mp4v; returns the label maps."""
    import cv2

    maps = np.zeros((frames, height, width), np.int32)
    for t in range(frames):
        maps[t, 10 + t % 7:40 + t % 7, 5 + t:35 + t] = 1
        maps[t, 50:80, 60 + t // 2:95 + t // 2] = 2
    background = np.random.default_rng(0).integers(40, 90, size=(height, width, 3), dtype=np.uint8)
    colours = np.array([[0, 0, 0], [230, 40, 40], [40, 220, 60]], np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (width, height))
    for t in range(frames):
        frame = np.where(maps[t][..., None] > 0, colours[maps[t]], background)
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return maps


def make_dataset(name: str, tmp: Path, videos: int, frames: int):
    import fiftyone as fo
    from helpers import detection

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    for v in range(videos):
        path = tmp / f"{name}_{v}.mp4"
        maps = synthetic_clip(path, frames)
        sample = fo.Sample(filepath=str(path))
        sample.frames[1]["kf"] = fo.Detections(detections=[detection("red", maps[0] == 1),
                                                           detection("green", maps[0] == 2)])
        ds.add_sample(sample)
    return ds


def wait_started(procs, logs, timeout=180):
    start = time.time()
    while not all("service running" in log.read_text(errors="replace") for log in logs):
        if any(p.poll() is not None for p in procs) or time.time() - start > timeout:
            raise RuntimeError("a worker did not start: " + logs[0].read_text(errors="replace")[-2000:])
        time.sleep(0.3)


def job_states(job_id):
    from deaot_vos.propagation import job_status

    job = job_status(job_id)
    return job, {sid: v.get("status") for sid, v in job["videos"].items()}


def job_states_active(op_ids) -> bool:
    """Whether any of the operations is not yet completed or failed (still queued or running)."""
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService

    service = DelegatedOperationService()
    return any(str(service.get(ObjectId(i)).run_state) not in ("completed", "failed") for i in op_ids)


def run_queue(ds, checkpoint: str, workers: int, tmp: Path, env: dict, monitor=False, kill_after_claim=False,
              settle_timeout=300.0) -> dict:
    """Start ``workers`` workers, queue one task per video, wait until the job is finalized (or
    ``settle_timeout``). ``kill_after_claim``: SIGKILL the process that claims the first video."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from deaot_vos.propagation import queue_propagation

    logs = [tmp / f"{ds.name}_w{i}.log" for i in range(workers)]
    procs = [worker_process(log, monitor, env) for log in logs]
    row: dict = dict(videos=len(ds), workers=workers, monitor=monitor, killed=None)
    try:
        wait_started(procs, logs)
        start = time.time()
        queued = queue_propagation(ds, "kf", "out", overwrite=True, model="DeAOTT", checkpoint=checkpoint,
                                   device="cpu", write_every=4)
        killed_pid = None
        while True:
            job, states = job_states(queued["job"])
            if kill_after_claim and killed_pid is None and states:
                sid, claim = next(iter(job["videos"].items()))
                killed_pid = claim["pid"]
                time.sleep(1.0)  # let it stage part of its video
                os.kill(killed_pid, signal.SIGKILL)
                row["killed"] = dict(pid=killed_pid, sample=sid,
                                     is_launcher=killed_pid in {p.pid for p in procs})
            if job["finalized"] and not job_states_active(queued["operations"]):
                break
            if time.time() - start > settle_timeout:
                row["timed_out"] = True
                break
            time.sleep(0.2)
        row["wall_s"] = round(time.time() - start, 1)
        job, states = job_states(queued["job"])
        ops = [DelegatedOperationService().get(__import__("bson").ObjectId(i)) for i in queued["operations"]]
        row.update(finalized=job["finalized"], video_states=sorted(states.values()),
                   op_states=sorted(str(op.run_state) for op in ops),
                   errors=[op.result.error[-300:] for op in ops if op.result and op.result.error],
                   workers_alive=[p.poll() is None for p in procs],
                   by_worker=sorted({v.get("pid") for v in job["videos"].values()}))
        ds.reload()
        row["frames_with_output"] = sorted(sum(v is not None for v in vals) for vals in ds.values("frames.out"))
        row["staging_left"] = "out_deaot_tmp" in ds.get_frame_field_schema()
    finally:
        for proc in procs:
            stop(proc)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--json", default=None)
    parser.add_argument("--parts", default="throughput,kill", help="throughput and/or kill")
    parser.add_argument("--kill-timeout", type=float, default=120.0,
                        help="how long to wait for a job with a killed worker to settle")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="deaot-bench-workers-"))
    mongo = PrivateMongo()
    plugins = tmp / "plugins"
    plugins.mkdir()
    (plugins / "deaot-vos").symlink_to(REPO, target_is_directory=True)
    env = dict(os.environ, **mongo.env(), FIFTYONE_PLUGINS_DIR=str(plugins), DEAOT_CACHE=str(tmp / "cache"),
               DEAOT_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    os.environ.update(env)
    machine = machine_info()
    rows = []
    try:
        import torch
        import deaot_core

        torch.manual_seed(0)
        checkpoint = str(tmp / "deaot_t_random.pth")
        deaot_core.save_checkpoint(deaot_core.build_model("DeAOTT"), checkpoint)
        for workers in (1, 2) if "throughput" in args.parts else ():
            ds = make_dataset(f"speed{workers}", tmp, args.videos, args.frames)
            rows.append(dict(run_queue(ds, checkpoint, workers, tmp, env), case="throughput"))
            print(json.dumps(rows[-1]), flush=True)
        for monitor in (False, True) if "kill" in args.parts else ():
            ds = make_dataset(f"kill{int(monitor)}", tmp, 3, args.frames)
            rows.append(dict(run_queue(ds, checkpoint, 2, tmp, env, monitor=monitor, kill_after_claim=True,
                                       settle_timeout=args.kill_timeout), case="worker killed mid-task"))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        mongo.close()
    summary = dict(load_avg_end=list(os.getloadavg()))
    if "throughput" in args.parts:
        one, two = rows[0]["wall_s"], rows[1]["wall_s"]
        summary.update(speedup=round(one / two, 2), one_worker_s=one, two_workers_s=two)
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(machine=machine, summary=summary, results=rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
