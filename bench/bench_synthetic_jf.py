"""DAVIS J&F of a checkpoint on held-out synthetic clips, against random weights and a
"copy the first mask" baseline.

    .venv/bin/python bench/bench_synthetic_jf.py --checkpoint checkpoints/deaott_synthetic/final.pth

Clips: ``--clips`` (20) clips of ``--frames`` (40) frames from ``deaot_core.data.synthetic``
with seeds ``--seed`` (1_000_000) + i -- a range the trainer never draws from (it uses
(seed, index) pairs of its own) -- and 2-5 objects each. Default size 241x433 (about half of
480p, sides of the form 16k+1 so the tracker does not resize) because a 2-core CPU needs
about 4x longer at 480x854 (``--size 481x857``); the clip generator scales object size with
the frame, so the task is the same. The tracker propagates from frame 0's ground truth;
scores use the official DAVIS 2017 semi-supervised protocol (``deaot_core.metrics.davis``: frames
1..T-2, objects pooled over clips). Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

import deaot_core  # noqa: E402
from deaot_core.data.synthetic import generate_clip  # noqa: E402
from deaot_core.metrics.davis import global_summary, sequence_metrics  # noqa: E402


def held_out_clips(count: int, frames: int, height: int, width: int, seed: int):
    for i in range(count):
        yield f"synthetic_{seed + i}", generate_clip(seed + i, num_frames=frames, height=height, width=width)


def propagate(model, clip, device: str, precision: str = "fp32", **tracker_options) -> tuple[np.ndarray, float]:
    """The clip's labels propagated from its first frame (``deaot_core.propagate_video``), and the
    mean seconds per propagated frame."""
    tracker = deaot_core.Tracker(model, device=device, precision=precision, **tracker_options)
    pred = np.zeros(clip.labels.shape, np.uint8)
    results = deaot_core.propagate_video(tracker, clip.frames, {0: clip.labels[0]})
    first = next(results)  # the reference frame
    pred[first.index] = first.label_map
    start = time.perf_counter()
    for result in results:
        pred[result.index] = result.label_map
    per_frame = (time.perf_counter() - start) / max(1, len(clip.frames) - 1)
    return pred, per_frame


def score(name: str, clips, predict, keep: dict | None = None) -> dict:
    """J&F of ``predict`` over ``clips``; predictions are stored in ``keep`` (by clip) if given."""
    objects, per_clip, times = [], {}, []
    for clip_name, clip in clips:
        pred, per_frame = predict(clip)
        if keep is not None:
            keep[clip_name] = pred
        result = sequence_metrics(clip.labels, pred)
        objects.extend(result["objects"])
        per_clip[clip_name] = round(result["summary"]["J&F-Mean"], 4)
        times.append(per_frame)
    summary = {k: round(v, 4) for k, v in global_summary(objects).items()}
    return {"name": name, "summary": summary, "per_clip_JF": per_clip, "objects": len(objects),
            "sec_per_frame": round(float(np.mean(times)), 4) if times else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", default=[],
                   help="checkpoint(s) to score on the same clips (omit to score random weights only)")
    p.add_argument("--model", default="DeAOTT")
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--size", default="241x433", help="HxW of the clips")
    p.add_argument("--seed", type=int, default=1_000_000, help="first clip seed (held out)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-random", action="store_true", help="skip the random-weights baseline")
    p.add_argument("--precisions", default="fp32",
                   help="comma-separated tracker precisions for the checkpoint (fp32, bf16, fp16): each "
                        "is scored, and the reduced ones are compared pixel by pixel with fp32")
    p.add_argument("--test-scales", type=float, nargs="+", default=[1.0],
                   help="Tracker(test_scales=...): the official multi-scale test (e.g. 0.8 1.0 1.2)")
    p.add_argument("--test-flip", action="store_true", help="Tracker(test_flip=True): the official flip test")
    p.add_argument("--max-short-edge", type=int, default=None, help="Tracker(max_short_edge=...)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tracker_options = dict(test_scales=tuple(args.test_scales), test_flip=args.test_flip,
                           max_short_edge=args.max_short_edge)
    height, width = (int(v) for v in args.size.lower().split("x"))
    clips = list(held_out_clips(args.clips, args.frames, height, width, args.seed))

    results = [score("copy_first_mask", clips,
                     lambda c: (np.repeat(c.labels[:1], len(c.labels), axis=0), 0.0))]
    if not args.no_random:
        torch.manual_seed(0)
        random_model = deaot_core.build_model(args.model)
        results.append(score("random_weights", clips, lambda c: propagate(random_model, c, args.device)))
    for checkpoint in args.checkpoint:
        model = deaot_core.build_model(args.model)
        deaot_core.load_checkpoint(model, checkpoint)
        predictions: dict[str, dict] = {}
        for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
            name = f"checkpoint:{checkpoint}" + ("" if precision == "fp32" else f":{precision}")
            predictions[precision] = {}
            results.append(score(name, clips,
                                 lambda c, _p=precision: propagate(model, c, args.device, _p, **tracker_options),
                                 keep=predictions[precision]))
            if precision != "fp32" and "fp32" in predictions:
                ref, got = predictions["fp32"], predictions[precision]
                agree = [float((ref[k][1:] == got[k][1:]).mean()) for k in ref]
                fp32_jf = next(r for r in results if r["name"] == f"checkpoint:{checkpoint}")["summary"]
                results[-1]["vs_fp32"] = {"label_agreement": round(float(np.mean(agree)), 5),
                                          "label_agreement_min_clip": round(min(agree), 5),
                                          "J&F_delta": round(results[-1]["summary"]["J&F-Mean"] - fp32_jf["J&F-Mean"], 4)}
    doc = {
        "setup": {"model": args.model, "clips": args.clips, "frames": args.frames, "size": [height, width],
                  "first_seed": args.seed, "objects_per_clip": [int(c.labels[0].max()) for _, c in clips],
                  "device": args.device, "threads": args.threads, "torch": torch.__version__,
                  "tracker_options": tracker_options},
        "results": {r["name"]: r for r in results},
    }
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
