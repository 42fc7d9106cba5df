"""Per-frame time and peak memory of ``deaot_core.Tracker`` alone.

    python bench/bench_tracker.py --models DeAOTT R50_DeAOTL --size 480x854 --objects 2 --frames 20

Prints one JSON line per run and a Markdown table. Frames are synthetic (moving squares over
noise); weights are random (speed does not depend on them).
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

import deaot_core


def synthetic_clip(frames: int, height: int, width: int, objects: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    size = max(8, min(height, width) // 8)
    for t in range(frames):
        frame, label = background.copy(), np.zeros((height, width), np.int64)
        for obj in range(1, objects + 1):
            y = (obj * 37) % max(1, height - size)
            x = (obj * 53 + 3 * t) % max(1, width - size)
            frame[y:y + size, x:x + size] = (obj * 47) % 255
            label[y:y + size, x:x + size] = obj
        yield frame, label


def run(model_name: str, height: int, width: int, objects: int, frames: int, device: str, precision: str,
        max_long_term_frames: int | None, warmup: int, channels_last: bool | None = None,
        compile: bool = False, batch_groups: bool | None = None) -> dict:
    torch.manual_seed(0)
    model = deaot_core.build_model(model_name)
    tracker = deaot_core.Tracker(model, device=device, precision=precision,
                                 max_long_term_frames=max_long_term_frames, channels_last=channels_last,
                                 compile=compile, batch_groups=batch_groups)
    times, cpu_times = [], []
    cuda = tracker.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for t, (frame, label) in enumerate(synthetic_clip(frames + warmup, height, width, objects)):
        start, cpu_start = time.perf_counter(), time.process_time()
        tracker.step(frame, label if t == 0 else None)
        _ = tracker.label
        if cuda:
            torch.cuda.synchronize()
        if t > warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    result = {
        "model": model_name, "size": f"{height}x{width}", "input": "x".join(map(str, tracker.input_size)),
        "objects": objects, "frames": frames, "device": str(tracker.device), "precision": precision,
        "channels_last": tracker.memory_format == torch.channels_last, "compile": compile,
        "batch_groups": tracker.batch_groups, "threads": torch.get_num_threads(), "ms_per_frame": 1000 * float(np.mean(times)),
        "fps": 1.0 / float(np.mean(times)),
        "cpu_ms_per_frame": 1000 * float(np.mean(cpu_times)), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "long_term_frames": tracker.long_term_frames,
    }
    if cuda:
        result["gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["DeAOTT", "R50_DeAOTL"])
    parser.add_argument("--size", default="480x854")
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--max-long-term-frames", type=int, default=None)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="Tracker(channels_last=...) (default: the tracker's: on for fp16/bf16)")
    parser.add_argument("--compile", action="store_true", help="Tracker(compile=True); use --warmup >= 2")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--batch-groups", action=argparse.BooleanOptionalAction, default=None,
                        help="Tracker(batch_groups=...): identity groups of a frame share what they can "
                             "(default: the tracker's, on)")
    args = parser.parse_args()
    height, width = map(int, args.size.lower().split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        with torch.no_grad():
            row = run(name, height, width, args.objects, args.frames, args.device, args.precision,
                      args.max_long_term_frames, args.warmup, args.channels_last, args.compile,
                      args.batch_groups)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| model | frame | input | objects | device | precision | layout | compiled | ms/frame | FPS | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size']} | {r['input']} | {r['objects']} | {r['device']} | {r['precision']} | "
              f"{'channels-last' if r['channels_last'] else 'contiguous'} | {'yes' if r['compile'] else 'no'} | "
              f"{r['ms_per_frame']:.0f} | {r['fps']:.2f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
