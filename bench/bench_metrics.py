"""Time DAVIS J/F per frame per object at 480x854; prints JSON.

Usage: python bench/bench_metrics.py [--frames 20] [--objects 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from deaot_core.metrics import davis as metrics


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def make_sequence(t: int, k: int, h: int = 480, w: int = 854, seed: int = 0):
    """Synthetic (T, H, W) GT/pred label maps: k moving ellipses, pred shifted + jittered."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((t, h, w), np.uint8)
    pred = np.zeros((t, h, w), np.uint8)
    for obj in range(1, k + 1):
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(0.1, 0.25) * h, rng.uniform(0.08, 0.2) * w
        vy, vx = rng.uniform(-2, 2, size=2)
        for i in range(t):
            g = _ellipse(h, w, cy + vy * i, cx + vx * i, ry, rx)
            p = _ellipse(h, w, cy + vy * i + 3, cx + vx * i - 4, ry * 0.97, rx * 1.03)
            gt[i][g] = obj
            pred[i][p] = obj
    return gt, pred


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20, help="T (T-2 frames are scored)")
    ap.add_argument("--objects", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    h, w = 480, 854
    gt, pred = make_sequence(args.frames, args.objects, h, w)
    n_scored = (args.frames - 2) * args.objects

    seq_s = _best(lambda: metrics.sequence_metrics(gt, pred), args.repeat)

    g1, p1 = gt[1] == 1, pred[1] == 1
    j_s = _best(lambda: metrics.per_frame_j(g1, p1), args.repeat * 5)
    f_s = _best(lambda: metrics.per_frame_f(g1, p1), args.repeat * 5)

    # worst case: boundaries everywhere (random noise), no cropping possible
    rng = np.random.default_rng(1)
    gn, pn = rng.random((h, w)) < 0.5, rng.random((h, w)) < 0.5
    f_noise_s = _best(lambda: metrics.per_frame_f(gn, pn), args.repeat)

    out = {
        "resolution": [h, w],
        "bound_pix": metrics.bound_pixels(h, w),
        "frames_T": args.frames,
        "objects_K": args.objects,
        "sequence_metrics_ms_per_frame_per_object": 1e3 * seq_s / n_scored,
        "per_frame_j_ms": 1e3 * j_s,
        "per_frame_f_ms": 1e3 * f_s,
        "per_frame_f_noise_worst_case_ms": 1e3 * f_noise_s,
        "numpy": np.__version__,
        "opencv": __import__("cv2").__version__,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
