"""Boxes -> masks without a model (the offline route of box keyframes).

Placeholder: each mask is its filled box; where boxes overlap, the pixel goes to the later box,
or the smaller one when the later is larger (so no mask is swallowed by a larger box listed after
it). The real algorithm replaces this file; the contract stays.
"""
from __future__ import annotations

import numpy as np


def masks_from_boxes(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """image: (H, W, 3) uint8 RGB frame; boxes: (N, 4) float, pixel xyxy (x0, y0, x1, y1), x1/y1 exclusive.
    Returns (N, H, W) bool: one mask per box, inside its box, never empty, masks disjoint."""
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    pixel = np.stack([np.clip(np.floor(boxes[:, 0]), 0, width), np.clip(np.floor(boxes[:, 1]), 0, height),
                      np.clip(np.ceil(boxes[:, 2]), 0, width), np.clip(np.ceil(boxes[:, 3]), 0, height)], axis=1)
    pixel = pixel.astype(int)
    areas = (pixel[:, 2] - pixel[:, 0]) * (pixel[:, 3] - pixel[:, 1])
    owner = np.full((height, width), -1, dtype=int)
    # paint larger boxes first, ties in list order: the smaller (then the later) box keeps the overlap
    for i in sorted(range(len(pixel)), key=lambda i: (-areas[i], i)):
        x0, y0, x1, y1 = pixel[i]
        owner[y0:y1, x0:x1] = i
    masks = np.stack([owner == i for i in range(len(pixel))]) if len(pixel) else np.zeros((0, height, width), bool)
    for i, (x0, y0, x1, y1) in enumerate(pixel):
        if not masks[i].any() and x1 > x0 and y1 > y0:  # entirely covered: keep its centre pixel
            cy, cx = (y0 + y1 - 1) // 2, (x0 + x1 - 1) // 2
            masks[:, cy, cx] = False
            masks[i, cy, cx] = True
    return masks
