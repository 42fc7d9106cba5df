"""Propagation speed on an idle machine and with one core kept busy by another process.

    python bench/bench_contention.py                       # tracker + end to end, all modes
    python bench/bench_contention.py --part tracker --threads auto 1 2

Each measurement runs in its own process. "busy" starts a bounded busy loop (a separate Python
process spinning for at most ``--busy-seconds``) before the measurement and stops it after.
``--threads``: "auto" is the default (:class:`deaot_core.ThreadGovernor`); a number fixes torch's
thread count (``2`` on a 2-core machine is what the plugin did before the governor).

- tracker: ``deaot_core.Tracker`` alone (DeAOTT, random weights, 240x427 synthetic frames).
- e2e: ``deaot_vos.propagate`` on the demo dataset (``make demo``'s videos, built once into the
  dataset ``deaot-bench-contention`` of the embedded database), decoding, writing and all.

Appends one JSON line per measurement to ``bench/results/contention.jsonl`` and prints a table
with the busy/idle ratio of each thread setting.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "contention.jsonl"
DATASET = "deaot-bench-contention"


def tracker_child(threads: str, frames: int) -> dict:
    import numpy as np
    import torch

    import deaot_core
    sys.path.insert(0, str(HERE))
    from bench_tracker import synthetic_clip

    torch.manual_seed(0)
    tracker = deaot_core.Tracker(deaot_core.build_model("DeAOTT"), threads=None if threads == "auto" else int(threads))
    times, used = [], []
    for t, (frame, label) in enumerate(synthetic_clip(frames + 2, 240, 427, 2)):
        start = time.perf_counter()
        tracker.step(frame, label if t == 0 else None)
        if t >= 2:
            times.append(time.perf_counter() - start)
            used.append(tracker.threads.threads)
    return {"seconds": float(np.sum(times)), "ms_per_frame": 1000 * float(np.mean(times)),
            "threads_used": sorted(set(used))}


def e2e_child(threads: str) -> dict:
    import fiftyone as fo

    import deaot_vos
    from deaot_vos import demo

    if not fo.dataset_exists(DATASET):
        demo.build_dataset(DATASET, real_clips=True, workdir=demo.media_dir(DATASET))
    dataset = fo.load_dataset(DATASET)
    start = time.perf_counter()
    summary = deaot_vos.propagate(dataset, demo.KEYFRAMES_FIELD, "bench", model=demo.DEFAULT_MODEL, device="cpu",
                                  overwrite=True, allow_random_weights=True,
                                  threads=None if threads == "auto" else int(threads))
    seconds = time.perf_counter() - start
    frames = sum(row.get("frames", 0) or 0 for row in summary["samples"])
    return {"seconds": seconds, "videos": len(dataset), "frames": frames}


def measure(part: str, threads: str, busy: bool, args) -> dict:
    busy_loop = None
    if busy:
        busy_loop = subprocess.Popen([sys.executable, "-c",
                                      f"import time\nend = time.time() + {args.busy_seconds}\n"
                                      "while time.time() < end: pass"])
        time.sleep(0.5)
    try:
        command = [sys.executable, __file__, "--child", part, "--threads", threads, "--frames", str(args.frames)]
        out = subprocess.run(command, check=True, capture_output=True, text=True,
                             env=dict(os.environ, FIFTYONE_DO_NOT_TRACK="true", DEAOT_OFFLINE="1")).stdout
    finally:
        if busy_loop is not None:
            busy_loop.kill()
            busy_loop.wait()
    row = json.loads(out.strip().splitlines()[-1])
    row.update(part=part, threads=threads, load="busy" if busy else "idle", cores=os.cpu_count(),
               python=platform.python_version(), date=time.strftime("%Y-%m-%d %H:%M"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["tracker", "e2e"], choices=["tracker", "e2e"])
    parser.add_argument("--threads", nargs="+", default=["auto", "2"], help='"auto" and/or numbers')
    parser.add_argument("--frames", type=int, default=30, help="tracker frames")
    parser.add_argument("--busy-seconds", type=float, default=1200)
    parser.add_argument("--child", choices=["tracker", "e2e"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        threads = args.threads[0]
        row = tracker_child(threads, args.frames) if args.child == "tracker" else e2e_child(threads)
        print(json.dumps(row))
        return
    RESULTS.parent.mkdir(exist_ok=True)
    rows = []
    for part in args.part:
        for threads in args.threads:
            for busy in (False, True):
                row = measure(part, threads, busy, args)
                print(json.dumps(row), flush=True)
                with open(RESULTS, "a") as f:
                    f.write(json.dumps(row) + "\n")
                rows.append(row)
    print("\n| part | threads | idle s | busy s | busy / idle |\n|---|---|---|---|---|")
    for part in args.part:
        for threads in args.threads:
            idle, busy = (next(r["seconds"] for r in rows if (r["part"], r["threads"], r["load"]) == (part, threads, load))
                          for load in ("idle", "busy"))
            print(f"| {part} | {threads} | {idle:.1f} | {busy:.1f} | {busy / idle:.2f}x |")


if __name__ == "__main__":
    main()
