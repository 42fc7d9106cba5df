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

``--objects 2-5 6-10 11-20`` scores the same checkpoints on held-out sets with more objects per
clip, one set per range, ``--clips`` clips each (11-20 objects: two identity groups of a DeAOT
with 10 slots). The 2-5 set is the generator's default clip and seeds described above (the
README's numbers); another range MIN-MAX draws clip i from the generator seeded with
(``--seed``, MIN, MAX, i), so its clips share nothing with the 2-5 set's, and redraws from the
same generator when a crowded layout cannot show every object in frame 0 (as the training data
do). Results of the 2-5 set keep their plain names ("checkpoint:<path>"); the others are named
"<name> objects=MIN-MAX"; ``by_objects`` holds J&F per range and name.
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
if str(REPO) not in sys.path:  # a clone without the editable install (the device image of gpu_train_stage5.sh)
    sys.path.insert(0, str(REPO))

import deaot_core  # noqa: E402
from deaot_core.data.synthetic import (  # noqa: E402
    PLACEMENT_RETRIES, ClipOptions, PlacementError, clip_rng, generate_clip,
)
from deaot_core.metrics.davis import global_summary, sequence_metrics  # noqa: E402


DEFAULT_OBJECTS = (2, 5)  # the generator's default: the README's held-out set


def held_out_clips(count: int, frames: int, height: int, width: int, seed: int,
                   objects: tuple[int, int] = DEFAULT_OBJECTS):
    """(name, clip) of the held-out set with ``objects`` = (min, max) objects per clip."""
    if tuple(objects) == DEFAULT_OBJECTS:
        for i in range(count):
            yield f"synthetic_{seed + i}", generate_clip(seed + i, num_frames=frames, height=height, width=width)
        return
    low, high = objects
    options = ClipOptions(min_objects=low, max_objects=high)
    for i in range(count):
        rng = clip_rng([seed, low, high], i)
        for _ in range(PLACEMENT_RETRIES):
            try:
                clip = generate_clip(rng, num_frames=frames, height=height, width=width, options=options)
                break
            except PlacementError:
                continue
        else:
            raise PlacementError(f"held-out clip {i} with {low}-{high} objects: no layout after "
                                 f"{PLACEMENT_RETRIES} draws")
        yield f"synthetic_{low}-{high}_{seed}_{i}", clip


def object_range(text: str) -> tuple[int, int]:
    """"6-10" -> (6, 10); "7" -> (7, 7)."""
    low, _, high = text.partition("-")
    low, high = int(low), int(high or low)
    if not 1 <= low <= high <= 255:
        raise argparse.ArgumentTypeError(f"objects must be MIN-MAX with 1 <= MIN <= MAX <= 255, got {text!r}")
    return low, high


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


def score_set(args, clips, tracker_options: dict, suffix: str = "") -> list[dict]:
    """Every predictor of the command line scored on ``clips``: copy the first mask, random
    weights (unless ``--no-random``), each checkpoint at each precision; names end in ``suffix``."""
    results = [score("copy_first_mask" + suffix, clips,
                     lambda c: (np.repeat(c.labels[:1], len(c.labels), axis=0), 0.0))]
    if not args.no_random:
        torch.manual_seed(0)
        random_model = deaot_core.build_model(args.model)
        results.append(score("random_weights" + suffix, clips,
                             lambda c: propagate(random_model, c, args.device, threads=args.threads)))
    for checkpoint in args.checkpoint:
        model = deaot_core.build_model(args.model)
        deaot_core.load_checkpoint(model, checkpoint)
        predictions: dict[str, dict] = {}
        for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
            name = f"checkpoint:{checkpoint}" + ("" if precision == "fp32" else f":{precision}") + suffix
            predictions[precision] = {}
            results.append(score(name, clips,
                                 lambda c, _p=precision: propagate(model, c, args.device, _p, **tracker_options),
                                 keep=predictions[precision]))
            if precision != "fp32" and "fp32" in predictions:
                ref, got = predictions["fp32"], predictions[precision]
                agree = [float((ref[k][1:] == got[k][1:]).mean()) for k in ref]
                fp32_jf = next(r for r in results if r["name"] == f"checkpoint:{checkpoint}{suffix}")["summary"]
                results[-1]["vs_fp32"] = {"label_agreement": round(float(np.mean(agree)), 5),
                                          "label_agreement_min_clip": round(min(agree), 5),
                                          "J&F_delta": round(results[-1]["summary"]["J&F-Mean"] - fp32_jf["J&F-Mean"], 4)}
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", default=[],
                   help="checkpoint(s) to score on the same clips (omit to score random weights only)")
    p.add_argument("--model", default="DeAOTT")
    p.add_argument("--clips", type=int, default=20, help="clips per object range")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--size", default="241x433", help="HxW of the clips")
    p.add_argument("--seed", type=int, default=1_000_000, help="first clip seed (held out)")
    p.add_argument("--objects", type=object_range, nargs="+", default=[DEFAULT_OBJECTS], metavar="MIN-MAX",
                   help="held-out sets by objects per clip, e.g. 2-5 6-10 11-20 (default: 2-5)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, also the tracker's (TrackerOptions.threads)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-random", action="store_true", help="skip the random-weights baseline")
    p.add_argument("--precisions", default="fp32",
                   help="comma-separated tracker precisions for the checkpoint (fp32, bf16, fp16): each "
                        "is scored, and the reduced ones are compared pixel by pixel with fp32")
    p.add_argument("--test-scales", type=float, nargs="+", default=[1.0],
                   help="Tracker(test_scales=...): the official multi-scale test (e.g. 0.8 1.0 1.2)")
    p.add_argument("--test-flip", action="store_true", help="Tracker(test_flip=True): the official flip test")
    p.add_argument("--max-short-edge", type=int, default=None, help="Tracker(max_short_edge=...)")
    p.add_argument("--group-size", type=int, default=None,
                   help="Tracker(group_size=...) (default: the checkpoint's identity_slots, else 10)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tracker_options = dict(test_scales=tuple(args.test_scales), test_flip=args.test_flip,
                           max_short_edge=args.max_short_edge, threads=args.threads, group_size=args.group_size)
    height, width = (int(v) for v in args.size.lower().split("x"))
    results, sets, by_objects = [], {}, {}
    for objects in dict.fromkeys(args.objects):
        label = f"{objects[0]}-{objects[1]}"
        suffix = "" if objects == DEFAULT_OBJECTS else f" objects={label}"
        clips = list(held_out_clips(args.clips, args.frames, height, width, args.seed, objects))
        scored = score_set(args, clips, tracker_options, suffix)
        for r in scored:
            r["objects_range"] = label
        results.extend(scored)
        sets[label] = {"seeds": f"{args.seed} + i" if objects == DEFAULT_OBJECTS
                       else f"clip_rng([{args.seed}, {objects[0]}, {objects[1]}], i)",
                       "objects_per_clip": [int(c.labels[0].max()) for _, c in clips]}
        by_objects[label] = {r["name"][:len(r["name"]) - len(suffix)]: r["summary"]["J&F-Mean"] for r in scored}
    setup = {"model": args.model, "clips": args.clips, "frames": args.frames, "size": [height, width],
             "first_seed": args.seed, "objects_sets": sets, "device": args.device, "threads": args.threads,
             "torch": torch.__version__, "tracker_options": tracker_options}
    if len(sets) == 1:  # the layout of a one-set run before object ranges existed
        setup["objects_per_clip"] = next(iter(sets.values()))["objects_per_clip"]
    doc = {"setup": setup, "results": {r["name"]: r for r in results}, "by_objects": by_objects}
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
