"""SAM 2.1 against DeAOT: per-frame time and peak memory on the same clip, masks and threads.

    PYTHONPATH=/path/to/sam2-pkgs python bench/bench_sam2.py                      # the full grid
    PYTHONPATH=... python bench/bench_sam2.py --device cuda --precision bf16 --jsonl bench/results/sam2_gpu.jsonl
    python bench/bench_sam2.py --report bench/results/sam2_cpu.jsonl --plot bench/results/sam2_vs_deaot.png

SAM 2 is not a dependency of this project and this script installs nothing: it imports the
``sam2`` package (Meta's SAM 2 / 2.1 code with its hydra configs) and says how to set it up if
that fails. Both sides use random weights (the compute per frame does not depend on them).

Clip: synthetic 480p frames (``bench_tracker.synthetic_clip``: moving squares over noise) written
once as JPEG files (SAM 2's ``init_state`` reads a folder); every config reads the same files.
Each object is given by its mask on frame 0: ``add_new_mask`` for SAM 2, the label map of the
first ``Tracker.step`` for DeAOT. Times are per propagated frame (frame 0, the prompted one, is
left out): SAM 2's interval between ``propagate_in_video`` yields, DeAOT's ``step()``, both
including the output label map on the CPU. ``cpu_s_per_frame`` is the process's CPU time (all
threads) per propagated frame: less sensitive than wall time to other jobs on a shared machine. ``steady`` is the mean over the second half of the
frames, and never before frame 7, when SAM 2's memory bank (the prompt + the 6 most recent frames)
has filled; DeAOT's cost per frame is flat (its memories have a fixed size with the default gap).

Every config runs in its own subprocess, so peak RSS (``ru_maxrss``) is that config's, and its
JSON line is appended to ``--jsonl`` as soon as it ends.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SAM2_CONFIGS = {
    "sam2.1_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
}
DEAOT_MODELS = ("DeAOTT", "R50_DeAOTL")
SETUP_HELP = """\
The `sam2` package is not importable. It is not a dependency of this project; install it (and its
config/IO helpers) into a separate folder without touching this environment's torch/numpy, and put
that folder on PYTHONPATH, e.g.:

    SAM2_BUILD_CUDA=0 python -m pip install --target /tmp/sam2-pkgs --no-deps \\
        sam2 hydra-core omegaconf iopath antlr4-python3-runtime==4.9.3 portalocker
    PYTHONPATH=/tmp/sam2-pkgs python bench/bench_sam2.py ...

(SAM2_BUILD_CUDA=0 skips the optional CUDA extension, which only fills small holes in masks.)
Import error: {error}"""


def write_clip(folder: Path, frames: int, height: int, width: int, objects: int) -> np.ndarray:
    """Write frames as ``<index>.jpg`` (quality 95) into ``folder``; return the (H, W) frame-0 label map."""
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_tracker import synthetic_clip

    first_label = None
    for t, (frame, label) in enumerate(synthetic_clip(frames, height, width, objects)):
        Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=95)
        if t == 0:
            first_label = label
    missing = [k for k in range(1, objects + 1) if not (first_label == k).any()]
    if missing:
        raise ValueError(f"synthetic clip {height}x{width}: objects {missing} have no pixels on frame 0")
    return first_label


def read_frame(folder: Path, index: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(folder / f"{index:05d}.jpg").convert("RGB"))


def rss_mb() -> float:
    """Current resident set size of this process (VmRSS), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


SAM2_MEMORY_FRAMES = 7  # num_maskmem of every SAM 2.1 config: the prompted frame + the 6 most recent


def summarise(times: list[float]) -> dict:
    """ms/frame over frames 1..T-1 (``times[i]`` is frame i+1) and steady: frames from max(7, T/2) on."""
    ms = [1000 * t for t in times]
    first_steady = max(SAM2_MEMORY_FRAMES, (len(ms) + 1) // 2)  # SAM 2's bank is full from frame 7 on
    steady = ms[first_steady - 1:] or ms[-1:]
    return {"ms_per_frame": float(np.mean(ms)), "ms_per_frame_steady": float(np.mean(steady)),
            "steady_from_frame": len(ms) + 1 - len(steady), "ms_frames": [round(m, 1) for m in ms]}


def time_sam2(model_name: str, folder: Path, label: np.ndarray, objects: int, device: str, precision: str) -> dict:
    """Build SAM 2.1 with random weights, prompt every object by mask on frame 0, time propagation."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(0)
    predictor = build_sam2_video_predictor(SAM2_CONFIGS[model_name], ckpt_path=None, device=device)
    cuda = device.startswith("cuda")
    autocast = torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16,
                              enabled=precision == "bf16")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode(), autocast:
        state = predictor.init_state(str(folder))
        rss_after_init = rss_mb()
        for obj in range(1, objects + 1):
            predictor.add_new_mask(state, frame_idx=0, obj_id=obj, mask=torch.from_numpy(label == obj))
        times, start, cpu_start = [], time.perf_counter(), None
        for frame_idx, obj_ids, masks in predictor.propagate_in_video(state):
            _ = (masks[:, 0] > 0.0).cpu().numpy()  # per-object binary masks on the CPU, like Tracker.label
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            if frame_idx > 0:
                times.append(now - start)
            else:
                cpu_start = time.process_time()
            start = now
        cpu_s = time.process_time() - cpu_start
    result = {"cpu_s_per_frame": cpu_s / len(times), "input": f"{predictor.image_size}x{predictor.image_size}", "memory_frames": predictor.num_maskmem,
              "rss_after_init_mb": rss_after_init, **summarise(times)}
    if cuda:
        result["gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def time_deaot(model_name: str, folder: Path, label: np.ndarray, frames: int, device: str, precision: str) -> dict:
    """``deaot_core.Tracker`` with random weights on the same JPEG frames; frame 0 carries the label map."""
    import torch

    import deaot_core

    torch.manual_seed(0)
    tracker = deaot_core.Tracker(deaot_core.build_model(model_name), device=device, precision=precision)
    cuda = tracker.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, cpu_s = [], 0.0
    with torch.no_grad():
        for t in range(frames):
            frame = read_frame(folder, t)  # decoding stays outside the timer, as SAM 2 decodes in init_state
            start, cpu_start = time.perf_counter(), time.process_time()
            tracker.step(frame, label if t == 0 else None)
            _ = tracker.label  # (H, W) label map as a numpy array on the CPU
            if cuda:
                torch.cuda.synchronize()
            if t > 0:
                times.append(time.perf_counter() - start)
                cpu_s += time.process_time() - cpu_start
    result = {"cpu_s_per_frame": cpu_s / len(times), "input": "x".join(map(str, tracker.input_size)), **summarise(times)}
    if cuda:
        result["gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def run_one(args: argparse.Namespace) -> None:
    """Child process: one model at one object count; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    objects = args.objects[0]
    folder = Path(args.clip_dir)
    label = np.load(folder / "label0.npy")
    frames = len(list(folder.glob("*.jpg")))
    started = time.time()
    if args.one in SAM2_CONFIGS:
        result = time_sam2(args.one, folder, label, objects, args.device, args.precision)
    else:
        result = time_deaot(args.one, folder, label, frames, args.device, args.precision)
    row = {"model": args.one, "objects": objects, "frames": frames, "size": f"{label.shape[0]}x{label.shape[1]}",
           "device": args.device, "precision": args.precision, "threads": torch.get_num_threads(),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "wall_s": round(time.time() - started, 1), **result}
    print(json.dumps(row), flush=True)


def check_sam2() -> None:
    try:
        importlib.import_module("sam2.build_sam")
    except Exception as error:  # ImportError, or hydra/omegaconf missing underneath
        sys.exit(SETUP_HELP.format(error=f"{type(error).__name__}: {error}"))


def plan(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(model, objects, frames) per config: ``--runs`` if given, else models x objects at ``--frames``."""
    if args.runs:
        out = []
        for spec in args.runs:
            model, objects, *frames = spec.split(":")
            out.append((model, int(objects), int(frames[0]) if frames else args.frames))
        return out
    return [(m, n, args.frames) for m in args.models for n in args.objects]


def launch(model: str, objects: int, clip_dir: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--one", model, "--objects", str(objects), "--clip-dir", str(clip_dir),
               "--device", args.device, "--precision", args.precision, "--threads", str(args.threads)]
    env = {**os.environ, "TQDM_DISABLE": "1", "SAM2_BUILD_CUDA": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    if done.returncode != 0:
        return {"model": model, "objects": objects, "error": done.stderr.strip().splitlines()[-5:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*SAM2_CONFIGS, *DEAOT_MODELS])
    parser.add_argument("--objects", nargs="+", type=int, default=[1, 2, 5, 10, 20])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--runs", nargs="+", metavar="MODEL:OBJECTS[:FRAMES]",
                        help="explicit configs instead of the --models x --objects grid")
    parser.add_argument("--size", default="480x854")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: torch.autocast for SAM 2 (as its examples do), Tracker(precision='bf16') for DeAOT")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in every config")
    parser.add_argument("--jsonl", default="bench/results/sam2_cpu.jsonl", help="append one JSON line per config")
    parser.add_argument("--note", default="", help="conditions, stored in every line (e.g. 'shared machine')")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per config")
    parser.add_argument("--report", nargs="+", metavar="JSONL", help="only print the table of these files")
    parser.add_argument("--plot", help="also draw the comparison into this PNG (needs matplotlib)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--clip-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_one(args)
    if args.report:
        rows = [json.loads(line) for path in args.report for line in Path(path).read_text().splitlines() if line]
        return finish(rows, args.plot)
    configs = plan(args)
    if any(model in SAM2_CONFIGS for model, _, _ in configs):
        check_sam2()
    height, width = map(int, args.size.lower().split("x"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sam2-") as tmp:
        clips: dict[tuple[int, int], Path] = {}
        for model, objects, frames in configs:
            clip = clips.get((frames, objects))
            if clip is None:  # every model sees the same files for one (frames, objects)
                clip = clips[frames, objects] = Path(tmp) / f"clip_{frames}f_{objects}obj"
                clip.mkdir()
                np.save(clip / "label0.npy", write_clip(clip, frames, height, width, objects))
            row = launch(model, objects, clip, args)
            row.update(note=args.note, measured=time.strftime("%Y-%m-%dT%H:%M:%S"), host_cpu=platform.processor()
                       or platform.machine(), load_at_end=[round(x, 1) for x in os.getloadavg()])
            print(json.dumps(row), flush=True)
            with open(args.jsonl, "a") as out:
                out.write(json.dumps(row) + "\n")
            rows.append(row)
    finish(rows, args.plot)


def deaott_reference(row: dict, rows: list[dict]) -> dict | None:
    """The DeAOTT row with the same objects, device and precision measured closest in time to ``row``."""
    same = [r for r in rows if r.get("model") == "DeAOTT" and "error" not in r
            and (r["objects"], r["device"], r["precision"]) == (row["objects"], row["device"], row["precision"])]
    when = time.mktime(time.strptime(row["measured"], "%Y-%m-%dT%H:%M:%S")) if "measured" in row else 0
    return min(same, key=lambda r: abs(time.mktime(time.strptime(r.get("measured", row.get("measured")),
                                                                 "%Y-%m-%dT%H:%M:%S")) - when), default=None)


def latest(rows: list[dict]) -> list[dict]:
    """The last finished row per (model, objects)."""
    out = {(r["model"], r["objects"]): r for r in rows if "error" not in r}
    return list(out.values())


def finish(rows: list[dict], plot: str | None) -> None:
    """Print the Markdown table (and draw the plot) of finished rows."""
    print("\n| model | objects | frames | device | precision | network input | ms/frame (frames 1..T-1) | "
          "ms/frame steady (2nd half) | steady / DeAOTT (nearest run in time) | CPU s/frame | CPU / DeAOTT | peak RSS MB | GPU max alloc MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['objects']} | failed: {' '.join(r['error'])[-200:]} |")
            continue
        deaott = deaott_reference(r, rows)
        ratio = f"{r['ms_per_frame_steady'] / deaott['ms_per_frame_steady']:.1f}x" if deaott else "-"
        gpu = f"{r['gpu_max_allocated_mb']:.0f}" if "gpu_max_allocated_mb" in r else "-"
        cpu = f"{r['cpu_s_per_frame']:.1f}" if "cpu_s_per_frame" in r else "-"
        cpu_ratio = (f"{r['cpu_s_per_frame'] / deaott['cpu_s_per_frame']:.1f}x"
                     if deaott and "cpu_s_per_frame" in r and "cpu_s_per_frame" in deaott else "-")
        print(f"| {r['model']} | {r['objects']} | {r['frames']} | {r['device']} | {r['precision']} | {r['input']} | "
              f"{r['ms_per_frame']:.0f} | {r['ms_per_frame_steady']:.0f} | {ratio} | {cpu} | {cpu_ratio} | {r['peak_rss_mb']:.0f} | {gpu} |")
    if plot:
        draw(rows, plot)


def draw(rows: list[dict], path: str) -> None:
    """Steady wall time and CPU time per frame against objects per model; time per frame index at the fewest objects."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    rows = latest(rows)
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 4.5))
    fewest = min(r["objects"] for r in rows)
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["objects"])
        style = "--" if model in DEAOT_MODELS else "-"
        left.plot([r["objects"] for r in mine], [r["ms_per_frame_steady"] / 1000 for r in mine], style + "o", label=model)
        timed = [r for r in mine if "cpu_s_per_frame" in r]
        middle.plot([r["objects"] for r in timed], [r["cpu_s_per_frame"] for r in timed], style + "o", label=model)
        first = next((r for r in mine if r["objects"] == fewest), None)
        if first:
            right.plot(range(1, len(first["ms_frames"]) + 1), [m / 1000 for m in first["ms_frames"]], style,
                       label=f"{model}, {fewest} object{'s' if fewest > 1 else ''}")
    objects = sorted({r["objects"] for r in rows})
    left.set(xlabel="objects", ylabel="s per frame (steady state)", yscale="log", xscale="log", xticks=objects,
             xticklabels=[str(n) for n in objects],
             title=f"{rows[0]['device']} {rows[0]['precision']}, {rows[0]['size']}, {rows[0]['threads']} threads")
    middle.set(xlabel="objects", ylabel="CPU s per frame (all threads)", yscale="log", xscale="log",
               xticks=objects, xticklabels=[str(n) for n in objects], title="CPU time (robust to other jobs)")
    right.axvline(7, color="grey", lw=0.8, ls=":")
    right.set(xlabel="frame", ylabel="s per frame", yscale="log", title="per frame (SAM 2's bank fills by frame 7)")
    for axis in (left, middle, right):
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
