"""Box keyframes: how good is ``deaot_vos.box_masks.masks_from_boxes`` against the filled box?

    .venv/bin/python bench/box_masks.py            # writes bench/results/box_masks.json

1. The two real demo clips, first frame: every ground-truth object of at least 400 pixels at
   480x270, its box the tight box of its mask. Mean IoU per clip and resolution of the filled
   box (each box alone, overlaps allowed) and of ``masks_from_boxes`` (disjoint masks). 480x270:
   the repo's clips (first frame decoded by ``deaot_vos.video_io``, the shipped PNG masks);
   1920x1080: the original JPEG/PNG of ``--originals`` (skipped when absent). The runtime is one
   1080p call with every object's box.
2. Held-out synthetic clips (``deaot_core.data.synthetic``, seeds ``--seed`` + i, a range the
   demo weights never saw): DAVIS J of the shipped demo weights propagating the first frame's
   true masks, the filled boxes, and ``masks_from_boxes``; the ratio box / mask is the target.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch  # before OpenCV and decord: torch imported after them crashes on some machines

REPO = Path(__file__).resolve().parents[1]
CLIPS = ("1001_3iEIq5HBY1s", "1007_YCTBBdbKSSg")
MIN_PIXELS = 400  # at 480x270
WEIGHTS = REPO / "deaot_core" / "weights" / "deaot_t_synthetic.pth"


def filled_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    masks = np.zeros((len(boxes), height, width), bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.astype(int)):
        mask[y0:y1, x0:x1] = True
    return masks


def mean_iou(masks: np.ndarray, label_map: np.ndarray, ids) -> float:
    ious = [(m & (label_map == i)).sum() / max((m | (label_map == i)).sum(), 1) for m, i in zip(masks, ids)]
    return float(np.mean(ious))


def demo_frames(clip: str, originals: Path):
    """(resolution name, RGB frame, label map) of the clip's first frame."""
    from PIL import Image
    from deaot_vos.video_io import open_video

    folder = REPO / "demo_data" / "aot-demo"
    yield "480x270", open_video(str(folder / f"{clip}.mp4")).frame(1), np.array(Image.open(folder / f"{clip}.png"))
    images = sorted((originals / "images" / clip).glob("*.jpg"))
    masks = sorted((originals / "masks" / clip).glob("*.png"))
    if images and masks:
        yield "1920x1080", np.asarray(Image.open(images[0]).convert("RGB")), np.array(Image.open(masks[0]))


def demo_scores(originals: Path) -> tuple[dict, dict]:
    """Mean IoU per clip and resolution, and the 1080p runtime with every object's box."""
    from deaot_vos.box_masks import masks_from_boxes, tight_boxes

    scores, runtime = {}, {}
    for clip in CLIPS:
        ids = None
        for resolution, frame, labels in demo_frames(clip, originals):
            if ids is None:  # object selection at 480x270, kept at 1080p
                values, counts = np.unique(labels, return_counts=True)
                ids = [int(v) for v, c in zip(values, counts) if v and c >= MIN_PIXELS]
            boxes = tight_boxes(labels, ids)
            ours = masks_from_boxes(frame, boxes)
            scores[f"{clip} {resolution}"] = {
                "objects": len(ids), "filled_box": round(mean_iou(filled_boxes(boxes, *labels.shape), labels, ids), 4),
                "masks_from_boxes": round(mean_iou(ours, labels, ids), 4)}
            if resolution == "1920x1080":
                every = tight_boxes(labels, [int(v) for v in np.unique(labels) if v])
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    masks_from_boxes(frame, every)
                    times.append(time.perf_counter() - start)
                runtime[clip] = {"boxes": len(every), "seconds_median_of_3": round(float(np.median(times)), 3)}
    return scores, runtime


def box_keyframe(frame: np.ndarray, labels: np.ndarray, make_masks) -> np.ndarray:
    """The label map of ``labels``' objects rebuilt from their tight boxes by ``make_masks``."""
    ids = [int(v) for v in np.unique(labels) if v]
    from deaot_vos.box_masks import tight_boxes

    masks = make_masks(frame, tight_boxes(labels, ids))
    keyframe = np.zeros(labels.shape, np.uint8)
    for mask, i in zip(masks, ids):
        keyframe[mask] = i
    return keyframe


def synthetic_j(clips: int, frames: int, height: int, width: int, seed: int, threads: int) -> dict:
    """DAVIS J of the demo weights from the true, filled-box and masks_from_boxes keyframes."""
    import deaot_core
    from deaot_core.data.synthetic import generate_clip
    from deaot_core.metrics.davis import global_summary, sequence_metrics
    from deaot_vos.box_masks import masks_from_boxes

    torch.set_num_threads(threads)
    model = deaot_core.build_model("DeAOTT")
    deaot_core.load_checkpoint(model, WEIGHTS)
    model.eval()
    kinds = {"mask": None, "filled_box": lambda f, b: filled_boxes(b, *f.shape[:2]),
             "masks_from_boxes": masks_from_boxes}
    objects = {kind: [] for kind in kinds}
    for i in range(clips):
        clip = generate_clip(seed + i, num_frames=frames, height=height, width=width)
        for kind, make in kinds.items():
            keyframe = clip.labels[0] if make is None else box_keyframe(clip.frames[0], clip.labels[0], make)
            tracker = deaot_core.Tracker(model, device="cpu", threads=threads)
            pred = np.zeros(clip.labels.shape, np.uint8)
            for result in deaot_core.propagate_video(tracker, clip.frames, {0: keyframe}):
                pred[result.index] = result.label_map
            objects[kind].extend(sequence_metrics(clip.labels, pred)["objects"])
    j = {kind: round(global_summary(objs)["J-Mean"], 4) for kind, objs in objects.items()}
    return {"clips": clips, "frames": frames, "size": [height, width], "seeds": f"{seed} + i",
            "objects": len(objects["mask"]), "J": j,
            "ratio_filled_box": round(j["filled_box"] / j["mask"], 4),
            "ratio_masks_from_boxes": round(j["masks_from_boxes"] / j["mask"], 4)}


def machine() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    facts = dict(line.split(":", 1) for line in lines if ":" in line)
    return f"{facts.get('Model name', platform.processor()).strip()}, {facts.get('CPU(s)', '?').strip()} CPUs"


def table(doc: dict) -> str:
    rows = ["| clip | resolution | objects | filled box | masks_from_boxes |", "|---|---|---|---|---|"]
    for name, s in doc["demo"].items():
        clip, resolution = name.split()
        rows.append(f"| {clip} | {resolution} | {s['objects']} | {s['filled_box']:.3f} | {s['masks_from_boxes']:.3f} |")
    syn = doc.get("synthetic")
    if syn:
        size = f"{syn['size'][0]}x{syn['size'][1]}"
        rows.append(f"\nSynthetic J ({syn['clips']} clips x {syn['frames']} frames, {size}): "
                    f"mask keyframe {syn['J']['mask']:.3f}, filled box {syn['J']['filled_box']:.3f} "
                    f"({syn['ratio_filled_box']:.2f}x), masks_from_boxes {syn['J']['masks_from_boxes']:.3f} "
                    f"({syn['ratio_masks_from_boxes']:.2f}x)")
    for clip, r in doc["runtime_1080p"].items():
        rows.append(f"Runtime at 1920x1080, {clip}: {r['boxes']} boxes in {r['seconds_median_of_3']:.2f} s")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--originals", type=Path, default=Path("/work/shared/data/aot-demo"),
                   help="folder with images/<clip>/*.jpg and masks/<clip>/*.png (1080p; skipped if absent)")
    p.add_argument("--clips", type=int, default=8, help="synthetic clips (0: skip)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", default="241x433", help="HxW of the synthetic clips")
    p.add_argument("--seed", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "box_masks.json")
    args = p.parse_args(argv)
    demo, runtime = demo_scores(args.originals)
    doc = {"machine": machine(), "demo": demo, "runtime_1080p": runtime}
    if args.clips:
        height, width = (int(v) for v in args.size.lower().split("x"))
        doc["synthetic"] = synthetic_j(args.clips, args.frames, height, width, args.seed, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
