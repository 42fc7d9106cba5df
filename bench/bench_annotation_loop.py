"""The annotation loop on held-out synthetic clips with ground truth: bidirectional fusion,
"where to label next" suggestions and incremental re-propagation.

    .venv/bin/python bench/bench_annotation_loop.py --part all --json bench/results/annotation_loop.json

Parts (``--part``):

- ``fusion``: keyframes on the first and last frame; J&F (DAVIS protocol: the frames in between)
  of forward-only against ``bidirectional`` with each fusion weighting, and the time per clip.
- ``suggest``: how well :func:`deaot_core.review_signals.review_scores` finds wrong frames: Spearman of
  the score against 1 - J (frames pooled over clips), and the mean J of the top 5 % of frames by
  score against the mean J, both per clip (top 5 % of each clip's frames against its mean,
  averaged) and pooled (top 5 % of all frames against all frames: what sorting a dataset's frames
  by the score field gives), after propagating from frame 0 alone and from the first and last
  frames.
- ``loop``: J&F against the number of keyframes K = 1..5, keyframes (a) spaced uniformly or
  (b) chosen one by one (propagate, give the top suggested frame its ground truth, re-propagate
  incrementally), each with and without fusion; and the frames recomputed per step.
- ``tune``: the signal weights, by grid search on clips held apart from the others (seeds
  ``--tune-seed``+i), maximising the weaker of the two suggestion targets relative to its bar
  (min(Spearman / 0.4, top-5 % J drop / 0.15)).

Clips: ``deaot_core.data.synthetic`` with seeds ``--seed`` + i (as bench_synthetic_jf.py), 241x433.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import deaot_core
from deaot_core.data.synthetic import generate_clip
from deaot_core.metrics.davis import global_summary, sequence_metrics
from deaot_core.review_signals import (SIGNALS, WEIGHTS, FrameReview, colour_cut_scores, review_scores, review_signals,
                               top_frames)

REPO = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = REPO / "deaot_core" / "weights" / "deaot_t_synthetic.pth"


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(values):
        order = np.argsort(values, kind="stable")
        r = np.empty(len(values))
        r[order] = np.arange(len(values))
        for v in np.unique(values):  # average the ranks of ties
            tie = values == v
            r[tie] = r[tie].mean()
        return r
    a, b = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    return float(np.corrcoef(a, b)[0, 1])


class Propagator:
    """Propagates a clip from ground-truth keyframes, keeping the stored results and saved
    states of the last run for incremental re-runs."""

    def __init__(self, model, bidirectional: bool, fusion: str = "distance"):
        self.tracker = deaot_core.Tracker(model, device="cpu")
        self.bidirectional, self.fusion = bidirectional, fusion
        self.states = deaot_core.MemoryStates()
        self.stored: dict[int, deaot_core.FrameResult] = {}

    def run(self, clip, keyframes, incremental: bool = False) -> tuple[np.ndarray, deaot_core.PropagationStats]:
        stats = deaot_core.PropagationStats()
        previous = {t: r.signature for t, r in self.stored.items()} if incremental else None
        results = deaot_core.propagate_video(
            self.tracker, clip.frames, {k: clip.labels[k] for k in keyframes}, bidirectional=self.bidirectional,
            fusion=self.fusion, previous=previous, states=self.states if incremental else None, stats=stats)
        for result in results:
            self.stored[result.index] = result
        pred = np.stack([self.stored[t].label_map for t in range(len(clip.frames))]).astype(np.uint8)
        return pred, stats

    def reviews(self, count: int) -> list[FrameReview]:
        return [FrameReview(self.stored[t].label_map, self.stored[t].confidences, self.stored[t].agreement)
                for t in range(count)]


def clips_from(seed: int, count: int, frames: int, size: tuple[int, int]):
    return [(f"synthetic_{seed + i}", generate_clip(seed + i, num_frames=frames, height=size[0], width=size[1]))
            for i in range(count)]


def jf(objects) -> float:
    return round(global_summary(objects)["J&F-Mean"], 4)


def part_fusion(model, clips) -> dict:
    out = {}
    for name, bidirectional, fusion in [("forward", False, "distance"), ("bidirectional_distance", True, "distance"),
                                        ("bidirectional_equal", True, "equal")]:
        objects, seconds = [], []
        for _, clip in clips:
            start = time.perf_counter()
            pred, _ = Propagator(model, bidirectional, fusion).run(clip, [0, len(clip.frames) - 1])
            seconds.append(time.perf_counter() - start)
            objects.extend(sequence_metrics(clip.labels, pred)["objects"])
        out[name] = {"J&F": jf(objects), "J": round(global_summary(objects)["J-Mean"], 4),
                     "sec_per_clip": round(float(np.mean(seconds)), 3)}
    return out


def frame_errors(clip, pred) -> np.ndarray:
    """(T,) mean J over the clip's objects per frame (NaN on the first and last frame)."""
    j = sequence_metrics(clip.labels, pred)["J"]  # (K, T-2), column i = frame i+1
    out = np.full(len(clip.frames), np.nan)
    out[1:-1] = j.mean(axis=0)
    return out


def collect_signals(model, clips, keyframe_sets) -> list[dict]:
    """Per clip and keyframe set: the signals, the per-frame J and the keyframes."""
    rows = []
    for _, clip in clips:
        cuts = colour_cut_scores(clip.frames)
        for keys in keyframe_sets(len(clip.frames)):
            propagator = Propagator(model, bidirectional=len(keys) > 1)
            pred, _ = propagator.run(clip, keys)
            signals = review_signals(propagator.reviews(len(clip.frames)), keys, cuts)
            rows.append({"signals": signals, "J": frame_errors(clip, pred), "keys": keys})
    return rows


def suggestion_quality(rows, weights) -> dict:
    scores, errors, drops = [], [], []
    total = sum(weights.values()) or 1.0
    for row in rows:
        score = sum(weights[n] * row["signals"][n] for n in SIGNALS) / total
        valid = [t for t in range(len(score)) if not np.isnan(row["J"][t]) and t not in row["keys"]]
        scores.extend(score[valid])
        errors.extend(1.0 - row["J"][valid])
        top = sorted(valid, key=lambda t: -score[t])[:max(1, round(0.05 * len(valid)))]
        drops.append(float(np.mean(row["J"][valid]) - np.mean(row["J"][top])))
    scores_a, j = np.array(scores), 1.0 - np.array(errors)
    pooled_top = np.argsort(-scores_a, kind="stable")[:max(1, round(0.05 * len(scores_a)))]
    return {"spearman": round(spearman(scores_a, 1.0 - j), 4),
            "top5pct_J_below_clip_mean": round(float(np.mean(drops)), 4),
            "top5pct_pooled_J_below_mean": round(float(j.mean() - j[pooled_top].mean()), 4), "frames": len(scores)}


def _keyframe_sets(count):
    return [[0], [0, count - 1]]


def part_suggest(model, clips, weights) -> dict:
    rows = collect_signals(model, clips, _keyframe_sets)
    out = {"all_signals": suggestion_quality(rows, weights)}
    for name in SIGNALS:
        out[f"only_{name}"] = suggestion_quality(rows, {n: float(n == name) for n in SIGNALS})
    return out


def part_tune(model, clips) -> dict:
    rows = collect_signals(model, clips, _keyframe_sets)
    grid = [0.0, 0.5, 1.0, 2.0, 4.0]
    best = None
    for values in itertools.product(grid, repeat=len(SIGNALS)):
        if not any(values):
            continue
        weights = dict(zip(SIGNALS, values))
        quality = suggestion_quality(rows, weights)
        objective = min(quality["spearman"] / 0.4, quality["top5pct_J_below_clip_mean"] / 0.15)
        if best is None or objective > best[2]:
            best = (weights, quality, objective)
    return {"weights": best[0], "quality": best[1], "objective": round(best[2], 4)}


def uniform(count: int, k: int) -> list[int]:
    return [0] if k == 1 else sorted({int(round(x)) for x in np.linspace(0, count - 1, k)})


def part_loop(model, clips, max_k: int, weights) -> dict:
    out = {}
    for bidirectional in (False, True):
        mode = "bidirectional" if bidirectional else "forward"
        uniform_objects = {k: [] for k in range(1, max_k + 1)}
        suggested_objects = {k: [] for k in range(1, max_k + 1)}
        recomputed = {k: [] for k in range(1, max_k + 1)}
        for _, clip in clips:
            count = len(clip.frames)
            for k in range(1, max_k + 1):
                pred, _ = Propagator(model, bidirectional).run(clip, uniform(count, k))
                uniform_objects[k].extend(sequence_metrics(clip.labels, pred)["objects"])
            propagator, keys, cuts = Propagator(model, bidirectional), [0], colour_cut_scores(clip.frames)
            for k in range(1, max_k + 1):
                pred, stats = propagator.run(clip, keys, incremental=k > 1)
                suggested_objects[k].append(sequence_metrics(clip.labels, pred)["objects"])
                recomputed[k].append(stats.computed)
                score = review_scores(propagator.reviews(count), keys, cuts, weights)
                keys = sorted(keys + top_frames(score, 1))
        out[mode] = {
            "uniform_JF": {k: jf(v) for k, v in uniform_objects.items()},
            "suggested_JF": {k: jf([o for clip_objects in v for o in clip_objects])
                             for k, v in suggested_objects.items()},
            "frames_recomputed_mean": {k: round(float(np.mean(v)), 1) for k, v in recomputed.items()},
        }
    return out


def plot(loop: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, style in (("forward", "--"), ("bidirectional", "-")):
        for kind, marker in (("uniform_JF", "o"), ("suggested_JF", "s")):
            ks = sorted(int(k) for k in loop[mode][kind])
            ax.plot(ks, [loop[mode][kind][k] for k in ks], style, marker=marker,
                    label=f"{mode}, {kind.split('_')[0]} keyframes")
    ax.set_xlabel("keyframes K")
    ax.set_ylabel("J&F (DAVIS protocol)")
    ax.set_title("Annotation loop on held-out synthetic clips")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", default="all", help="fusion, suggest, loop, tune, all, or several comma-separated")
    p.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT))
    p.add_argument("--model", default="DeAOTT")
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--size", default="241x433")
    p.add_argument("--seed", type=int, default=1_000_000)
    p.add_argument("--tune-seed", type=int, default=3_000_000)
    p.add_argument("--tune-clips", type=int, default=8)
    p.add_argument("--max-k", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the document here")
    p.add_argument("--plot", default=None, help="PNG of the loop part")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    model = deaot_core.build_model(args.model)
    deaot_core.load_checkpoint(model, args.checkpoint)
    clips = clips_from(args.seed, args.clips, args.frames, size)
    doc = {"setup": {"checkpoint": Path(args.checkpoint).name, "model": args.model, "clips": args.clips,
                     "frames": args.frames, "size": list(size), "first_seed": args.seed, "weights": WEIGHTS}}
    parts = ["fusion", "suggest", "loop"] if args.part == "all" else [x.strip() for x in args.part.split(",")]
    with torch.inference_mode():
        for part in parts:
            start = time.perf_counter()
            if part == "fusion":
                doc["fusion"] = part_fusion(model, clips)
            elif part == "suggest":
                doc["suggest"] = part_suggest(model, clips, WEIGHTS)
            elif part == "tune":
                doc["tune"] = part_tune(model, clips_from(args.tune_seed, args.tune_clips, args.frames, size))
            else:
                doc["loop"] = part_loop(model, clips, args.max_k, WEIGHTS)
                if args.plot:
                    plot(doc["loop"], Path(args.plot))
            doc.setdefault("seconds", {})[part] = round(time.perf_counter() - start, 1)
            print(json.dumps({part: doc[part]}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
