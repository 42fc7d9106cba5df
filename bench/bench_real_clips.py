"""The demo's real clips without ground truth: how many first-frame objects keep a mask, and how
speckled the masks are.

    .venv/bin/python bench/bench_real_clips.py --checkpoint deaot_core/weights/deaot_t_synthetic.pth \\
        > bench/results/real_clips.json

Clips: the two real clips ``make demo`` propagates (``demo_data/aot-demo/``: YouTube-VOS frames
from the official AOT/DeAOT demo, 480x270 H.264, 45 and 44 frames, with first-frame label maps of
44 and 43 objects; shipped in the repository). Each clip is propagated from its first-frame mask
with the tracker alone (``deaot_core.Tracker`` with its defaults, fp32, ``--threads`` threads;
no FiftyOne). There is no ground truth for later frames, so per clip it reports:

* ``kept``: at frames 10, 20 and 40 (``--at``; 0-based, frame 0 holds the given mask), how many
  first-frame objects still have a mask of at least ``--min-area`` (20 %) of their first-frame
  area; ``present``: how many have any pixel; ``kept_per_frame``: the kept count on every frame.
* ``median_components``: the median number of connected pieces (8-connectivity) of an object's
  mask, over every non-empty object mask of frames 1..T-1 (1 = one solid mask; more = speckle);
  also per ``--at`` frame (``median_components_at``) and the share of masks in one piece.

``--still`` replaces every frame after the first by a copy of frame 0: nothing moves, so what is
lost there is what the model cannot redraw from its own memory (small objects), not motion.

Several ``--checkpoint`` values are scored on the same clips (before / after a training). Frames
are decoded with decord (the plugin's reader), else OpenCV. Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # a clone without the editable install (the device image)
    sys.path.insert(0, str(REPO))

import deaot_core  # noqa: E402

CLIPS_DIR = REPO / "demo_data" / "aot-demo"
REAL_CLIPS = ("1001_3iEIq5HBY1s", "1007_YCTBBdbKSSg")  # as deaot_vos.demo.REAL_CLIPS (no FiftyOne import here)


def read_frames(path: Path) -> tuple[np.ndarray, str]:
    """(T, H, W, 3) uint8 RGB frames of a video, and the reader used ("decord" or "opencv")."""
    try:
        import decord
    except ImportError:
        decord = None
    if decord is not None:
        reader = decord.VideoReader(str(path), num_threads=1)
        return reader.get_batch(list(range(len(reader)))).asnumpy(), "decord"
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        raise ValueError(f"{path}: no frames could be decoded")
    return np.stack(frames), "opencv"


def read_label_map(path: Path) -> np.ndarray:
    """(H, W) uint8 object ids of a palette PNG (0 = background)."""
    from PIL import Image

    return np.asarray(Image.open(path))


def components(mask: np.ndarray) -> int:
    """Connected pieces (8-connectivity) of a boolean mask."""
    count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return count - 1


def mask_statistics(pred: np.ndarray, object_ids: list[int], at: list[int], min_area: float) -> dict:
    """Survival and speckle of the predicted label maps ``pred`` (T, H, W) against frame 0's
    objects ``object_ids`` (see the module docstring)."""
    first_area = {k: int((pred[0] == k).sum()) for k in object_ids}
    kept_per_frame, present_per_frame, pieces, pieces_at = [], [], [], {}
    for t in range(len(pred)):
        areas = np.bincount(pred[t].ravel(), minlength=256)
        kept_per_frame.append(sum(int(areas[k] >= min_area * first_area[k]) for k in object_ids))
        present_per_frame.append(sum(int(areas[k] > 0) for k in object_ids))
        if t == 0:
            continue
        frame_pieces = [components(pred[t] == k) for k in object_ids if areas[k] > 0]
        pieces.extend(frame_pieces)
        if t in at:
            pieces_at[str(t)] = float(np.median(frame_pieces)) if frame_pieces else None
    return {
        "objects": len(object_ids), "frames": len(pred),
        "kept": {str(t): kept_per_frame[t] for t in at if t < len(pred)},
        "present": {str(t): present_per_frame[t] for t in at if t < len(pred)},
        "median_components": float(np.median(pieces)) if pieces else None,
        "mean_components": round(float(np.mean(pieces)), 3) if pieces else None,
        "one_piece_share": round(float(np.mean(np.array(pieces) == 1)), 4) if pieces else None,
        "median_components_at": pieces_at,
        "kept_per_frame": kept_per_frame,
    }


def propagate_clip(model, frames: np.ndarray, first_mask: np.ndarray, device: str, threads: int,
                   precision: str, options: dict | None = None) -> tuple[np.ndarray, float]:
    """The clip's label maps propagated from frame 0's mask, and seconds per propagated frame;
    ``options``: further :class:`deaot_core.TrackerOptions` fields."""
    tracker = deaot_core.Tracker(model, device=device, precision=precision, threads=threads, **(options or {}))
    pred = np.zeros(frames.shape[:3], np.uint8)
    results = deaot_core.propagate_video(tracker, frames, {0: first_mask})
    first = next(results)
    pred[first.index] = first.label_map
    start = time.perf_counter()
    for result in results:
        pred[result.index] = result.label_map
    return pred, (time.perf_counter() - start) / max(1, len(frames) - 1)


def tracker_options(pairs: list[str]) -> dict:
    """``["group_size=3", "test_scales=2"]`` -> TrackerOptions keyword arguments (numbers parsed)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option wants KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def score_checkpoint(model, clips: dict, args) -> dict:
    per_clip = {}
    for name, (frames, first_mask) in clips.items():
        object_ids = [int(k) for k in np.unique(first_mask) if k != 0]
        pred, per_frame = propagate_clip(model, frames, first_mask, args.device, args.threads, args.precision,
                                         args.options)
        stats = mask_statistics(pred, object_ids, args.at, args.min_area)
        stats["sec_per_frame"] = round(per_frame, 3)
        per_clip[name] = stats
        print(f"{name}: kept {stats['kept']} of {stats['objects']}, median components "
              f"{stats['median_components']} ({per_frame:.2f} s/frame)", file=sys.stderr)
    total = {"objects": sum(c["objects"] for c in per_clip.values()),
             "kept": {str(t): sum(c["kept"].get(str(t), 0) for c in per_clip.values()) for t in args.at}}
    return {"clips": per_clip, "total": total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", required=True, help="checkpoint(s) to score on the same clips")
    p.add_argument("--model", default="DeAOTT")
    p.add_argument("--clips-dir", default=str(CLIPS_DIR), help="folder with <clip>.mp4 + <clip>.png")
    p.add_argument("--clips", nargs="+", default=list(REAL_CLIPS))
    p.add_argument("--frames", type=int, help="only the first N frames of each clip (default: all)")
    p.add_argument("--still", action="store_true",
                   help="propagate onto copies of frame 0 (no motion; see the module docstring)")
    p.add_argument("--at", type=int, nargs="+", default=[10, 20, 40], help="frames (0-based) to count kept objects")
    p.add_argument("--min-area", type=float, default=0.2, help="kept: at least this fraction of the first-frame area")
    p.add_argument("--threads", type=int, default=1, help="torch threads (TrackerOptions.threads)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a further TrackerOptions field, e.g. group_size=3 or max_long_edge=960 (repeatable)")
    p.add_argument("--precision", default="fp32")
    args = p.parse_args(argv)
    args.options = tracker_options(args.option)
    torch.set_num_threads(args.threads)
    folder = Path(args.clips_dir)
    clips, reader = {}, None
    for name in args.clips:
        frames, reader = read_frames(folder / f"{name}.mp4")
        frames = frames[:args.frames] if args.frames else frames
        if args.still:
            frames = np.repeat(frames[:1], len(frames), axis=0)
        first_mask = read_label_map(folder / f"{name}.png")
        if first_mask.shape != frames.shape[1:3]:
            raise ValueError(f"{name}: mask {first_mask.shape} does not match frames {frames.shape[1:3]}")
        clips[name] = (frames, first_mask)
    results = {}
    for checkpoint in args.checkpoint:
        model = deaot_core.build_model(args.model)
        deaot_core.load_checkpoint(model, checkpoint)
        results[f"checkpoint:{checkpoint}"] = score_checkpoint(model, clips, args)
    doc = {"setup": {"model": args.model, "clips": {k: {"frames": int(v[0].shape[0]), "size": list(v[0].shape[1:3])}
                                                    for k, v in clips.items()},
                     "still": args.still, "at": args.at, "min_area": args.min_area, "reader": reader, "device": args.device,
                     "threads": args.threads, "options": args.options, "precision": args.precision, "torch": torch.__version__},
           "results": results}
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
