"""Box keyframes: one mask per box on its frame, offline (no model, no download).

Each box is segmented on a frame scaled to at most :data:`WORK_SIDE` pixels on its long side
(colour statistics of a few hundred pixels per object are reliable there, and the cost does not
grow with the video's resolution). Per box, a colour histogram of the box, weighted by an
inscribed ellipse (the shape prior), is compared with a histogram of a ring around the box (the
background); two re-estimation rounds give each pixel of the box a smoothed foreground
probability. All boxes are resolved together: a pixel goes to the most probable box, with a bias
towards smaller boxes (a small box inside a larger one is usually in front of it). A box whose
colours say little (less than :data:`MIN_FILL` of it foreground) gets its inscribed ellipse.
"""
from __future__ import annotations

import cv2
import numpy as np

WORK_SIDE = 480  # long side of the frame the colour models are fitted on
BINS = 16  # histogram bins per RGB channel
RING = 0.5  # background ring around a box, as a fraction of the box's sides
ROUNDS = 2  # foreground-model re-estimations
PRIOR_INSIDE, PRIOR_CORNERS = 0.7, 0.3  # foreground prior inside / outside the inscribed ellipse
PRIOR_WEIGHT = 0.5  # exponent of the prior against the colour likelihoods
THRESHOLD = 0.5  # foreground probability of a mask pixel
SMALL_BOX_BIAS = 0.2  # added to the probability of the smallest box (0 for the largest), by rank
MIN_FILL = 0.15  # a box with less foreground than this gets its inscribed ellipse


def masks_from_boxes(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """image: (H, W, 3) uint8 RGB frame; boxes: (N, 4) float, pixel xyxy (x0, y0, x1, y1), x1/y1
    exclusive. Returns (N, H, W) bool: one mask per box, each inside its box (clipped to the frame;
    a box with no pixel in the frame is first grown or moved to its nearest frame pixel), never
    empty (falls back to the filled box; only impossible when more boxes than pixels share a
    spot), masks disjoint (each pixel to at most one box)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(boxes).all():
        raise ValueError("boxes must be finite pixel coordinates")
    height, width = image.shape[:2]
    full = pixel_boxes(boxes, height, width)
    if len(full) == 0:
        return np.zeros((0, height, width), bool)
    scale = min(1.0, WORK_SIDE / max(height, width))
    small, work = _work_frame(image, scale), pixel_boxes(boxes * scale, *_scaled(height, width, scale))
    areas = (full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1])
    rank = np.empty(len(full))
    rank[np.argsort(-areas, kind="stable")] = np.arange(len(full)) / max(1, len(full) - 1)
    labels = np.zeros((height, width), np.int32)  # 0: no box, k + 1: box k
    best = np.full((height, width), -np.inf, np.float32)
    codes = _colour_codes(small)
    for k in range(len(full)):
        probability = _box_probability(codes, work[k])
        _claim(labels, best, full[k], _upscaled(probability, full[k]), SMALL_BOX_BIAS * rank[k], k)
    _fill_empty(labels, full, areas)
    return np.stack([labels == k + 1 for k in range(len(full))])


def tight_boxes(label_map: np.ndarray, ids) -> np.ndarray:
    """(N, 4) float xyxy tight boxes (x1/y1 exclusive) of objects ``ids`` of an (H, W) label map
    (each id must be present)."""
    boxes = []
    for i in ids:
        ys, xs = np.nonzero(label_map == i)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.array(boxes, np.float64).reshape(-1, 4)


def pixel_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, 4) int xyxy boxes (x1/y1 exclusive) clipped to the frame, each at least one pixel."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0 = np.clip(np.floor(np.minimum(boxes[:, 0], boxes[:, 2])), 0, width - 1)
    y0 = np.clip(np.floor(np.minimum(boxes[:, 1], boxes[:, 3])), 0, height - 1)
    x1 = np.clip(np.ceil(np.maximum(boxes[:, 0], boxes[:, 2])), x0 + 1, width)
    y1 = np.clip(np.ceil(np.maximum(boxes[:, 1], boxes[:, 3])), y0 + 1, height)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)


def _scaled(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, round(height * scale)), max(1, round(width * scale))


def _work_frame(image: np.ndarray, scale: float) -> np.ndarray:
    """The frame at the working scale (area-averaged; not blurred further: blurred edges make
    colours neither histogram has seen, which the prior then hands to the foreground)."""
    if scale < 1.0:
        height, width = _scaled(*image.shape[:2], scale)
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image


def _colour_codes(image: np.ndarray) -> np.ndarray:
    """(H, W) int: each pixel's RGB histogram bin."""
    q = image.astype(np.int32) * BINS // 256
    return (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]


def _histogram(codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Normalised colour histogram of ``codes`` with ``weights``, smoothed over neighbouring bins
    (so that a colour seen once does not decide alone) and never zero."""
    h = np.bincount(codes.ravel(), weights=weights.ravel(), minlength=BINS ** 3).reshape(BINS, BINS, BINS)
    for axis in range(3):
        padded = np.pad(h, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
        h = (0.25 * np.take(padded, range(0, BINS), axis) + 0.5 * np.take(padded, range(1, BINS + 1), axis)
             + 0.25 * np.take(padded, range(2, BINS + 2), axis))
    h = h.ravel() + 1e-3 * max(h.sum(), 1.0) / BINS ** 3
    return h / h.sum()


def ellipse(height: int, width: int) -> np.ndarray:
    """(height, width) bool: the ellipse inscribed in a box of that size (never empty)."""
    yy, xx = np.mgrid[0:height, 0:width]
    r2 = ((yy - (height - 1) / 2) / (height / 2)) ** 2 + ((xx - (width - 1) / 2) / (width / 2)) ** 2
    inside = r2 <= 1.0
    inside[height // 2, width // 2] = True
    return inside


def _box_probability(codes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Foreground probability of each pixel of ``box`` (work scale): its colour likelihood
    under the box's and the surrounding ring's histograms, times the ellipse prior."""
    height, width = codes.shape
    x0, y0, x1, y1 = (int(v) for v in box)
    mx, my = int(np.ceil((x1 - x0) * RING)) + 2, int(np.ceil((y1 - y0) * RING)) + 2
    cx0, cy0, cx1, cy1 = max(0, x0 - mx), max(0, y0 - my), min(width, x1 + mx), min(height, y1 + my)
    crop = codes[cy0:cy1, cx0:cx1]
    inside = np.zeros(crop.shape, bool)
    inside[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = True
    prior = np.zeros(crop.shape, np.float64)
    prior[inside] = np.where(ellipse(y1 - y0, x1 - x0), PRIOR_INSIDE, PRIOR_CORNERS).ravel()
    background = np.where(inside, 0.3 * (1.0 - prior), 1.0)
    odds = (prior / np.maximum(1.0 - prior, 1e-6)) ** PRIOR_WEIGHT
    foreground = prior
    sigma = max(1.0, min(x1 - x0, y1 - y0) / 30)
    for _ in range(ROUNDS):
        ratio = _histogram(crop, foreground)[crop] / _histogram(crop, background)[crop]
        posterior = np.where(inside, ratio * odds / (ratio * odds + 1.0), 0.0).astype(np.float32)
        foreground = cv2.GaussianBlur(posterior, (0, 0), sigma) * inside
    return foreground[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]


def _upscaled(probability: np.ndarray, box: np.ndarray) -> np.ndarray:
    """A work-scale box probability at the size of the full-scale ``box``."""
    width, height = int(box[2] - box[0]), int(box[3] - box[1])
    if probability.shape == (height, width):
        return probability
    return cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)


def _claim(labels: np.ndarray, best: np.ndarray, box: np.ndarray, probability: np.ndarray,
           bias: float, k: int) -> None:
    """Box ``k`` takes the pixels of its mask where its biased probability beats every earlier
    box's; a box with too little foreground claims its inscribed ellipse at probability 0.5."""
    x0, y0, x1, y1 = (int(v) for v in box)
    mask = probability > THRESHOLD
    if mask.mean() < MIN_FILL:
        mask = ellipse(y1 - y0, x1 - x0)
        probability = np.full(mask.shape, THRESHOLD, np.float32)
    score = np.where(mask, probability + bias, -np.inf).astype(np.float32)
    region_best, region_labels = best[y0:y1, x0:x1], labels[y0:y1, x0:x1]
    wins = score > region_best
    region_best[wins] = score[wins]
    region_labels[wins] = k + 1


def _fill_empty(labels: np.ndarray, boxes: np.ndarray, areas: np.ndarray) -> None:
    """Give a box that lost every pixel its filled box (smallest boxes last, so in front), as
    long as that leaves no other box empty."""
    for _ in range(len(boxes)):
        present = np.bincount(labels.ravel(), minlength=len(boxes) + 1)[1:]
        empty = [k for k in np.argsort(-areas, kind="stable") if present[k] == 0]
        if not empty:
            return
        changed = False
        for k in empty:
            x0, y0, x1, y1 = (int(v) for v in boxes[k])
            region = labels[y0:y1, x0:x1]
            owners, counts = np.unique(region[region > 0], return_counts=True)
            spare = (region == 0) | np.isin(region, owners[counts < present[owners - 1]])
            if not spare.any():  # only boxes lying wholly inside this one: each keeps one pixel
                for owner in owners[owners > 0]:
                    region.flat[np.flatnonzero(region == owner)[1:]] = k + 1
                spare = region == k + 1
            if spare.any():
                region[spare] = k + 1
                present = np.bincount(labels.ravel(), minlength=len(boxes) + 1)[1:]
                changed = True
        if not changed:
            return
