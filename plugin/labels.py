"""Keyframe labels -> integer label maps, and label maps -> FiftyOne labels.

Keyframes may be ``fo.Detections`` with instance masks (masks relative to their bounding box,
FiftyOne's convention), ``fo.Segmentation`` label maps, or filled ``fo.Polylines``.

Objects are identified across keyframes by their ``index`` when set (for segmentations, by
their pixel value), else by ``label`` plus their order among the keyframe's objects with that
label. Each object gets an internal id 1..K (the tracker's ids, in order of first appearance)
and a stable output ``index`` (its given index, else the smallest unused integer >= 1).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping

import numpy as np

import fiftyone as fo

log = logging.getLogger(__name__)

KEYFRAME_TYPES = (fo.Detections, fo.Segmentation, fo.Polylines)


@dataclass
class ObjectInfo:
    obj_id: int  # the tracker's id, 1..K
    key: Hashable  # identity across keyframes
    label: str | None
    index: int | None = None  # output index (FiftyOne track id)
    first_frame: int = 0


@dataclass
class Keyframe:
    frame_number: int
    label_map: np.ndarray  # (H, W) int32, 0 background, obj ids elsewhere
    objects: list[int] = field(default_factory=list)  # obj ids given on this keyframe
    # obj id -> exact copy of the given label to output (Detections keyframes only)
    exact: dict[int, Any] = field(default_factory=dict)
    labels: dict[int, str | None] = field(default_factory=dict)


class ObjectRegistry:
    """Maps identity keys to tracker ids and output indexes for one video."""

    def __init__(self) -> None:
        self.by_key: dict[Hashable, ObjectInfo] = {}
        self.by_id: dict[int, ObjectInfo] = {}

    def get(self, key: Hashable, label: str | None, frame_number: int,
            index: int | None = None) -> ObjectInfo:
        info = self.by_key.get(key)
        if info is None:
            info = ObjectInfo(obj_id=len(self.by_key) + 1, key=key, label=label, index=index,
                              first_frame=frame_number)
            self.by_key[key] = info
            self.by_id[info.obj_id] = info
        return info

    def assign_indexes(self) -> None:
        """Objects without a given index get the smallest unused integers >= 1."""
        used = {info.index for info in self.by_key.values() if info.index is not None}
        candidate = 1
        for info in sorted(self.by_key.values(), key=lambda i: i.obj_id):
            if info.index is None:
                while candidate in used:
                    candidate += 1
                info.index = candidate
                used.add(candidate)

    @property
    def num_objects(self) -> int:
        return len(self.by_key)


def _rgb_to_int(mask: np.ndarray) -> np.ndarray:
    mask = mask.astype(np.int64)
    return (mask[..., 0] << 16) | (mask[..., 1] << 8) | mask[..., 2]


def _resize_nearest(label_map: np.ndarray, height: int, width: int) -> np.ndarray:
    if label_map.shape[:2] == (height, width):
        return label_map
    import cv2

    log.warning("resizing a %sx%s keyframe mask to the video size %sx%s (nearest)",
                label_map.shape[1], label_map.shape[0], width, height)
    return cv2.resize(label_map.astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST)


def _render_detection(det: fo.Detection, height: int, width: int) -> np.ndarray:
    """Boolean (H, W) mask of one detection: its mask stretched (nearest) over its bounding box,
    whose corners are rounded to pixels (the App's convention; FiftyOne's Python renderer
    truncates and can lose a row/column to floating-point error)."""
    canvas = np.zeros((height, width), dtype=bool)
    x, y, w, h = det.bounding_box
    x0, y0 = int(round(x * width)), int(round(y * height))
    x1, y1 = int(round((x + w) * width)), int(round((y + h) * height))
    if x1 <= x0 or y1 <= y0:
        return canvas
    if det.has_mask:
        mask = np.asarray(det.get_mask() if hasattr(det, "get_mask") else det.mask)
        if mask.ndim == 3:
            mask = mask[..., 0]
        mask = mask.astype(np.uint8) if mask.dtype == bool else (mask > 0).astype(np.uint8)
        if mask.shape != (y1 - y0, x1 - x0):
            import cv2

            mask = cv2.resize(mask, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    else:
        mask = np.ones((y1 - y0, x1 - x0), dtype=np.uint8)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx1 <= cx0 or cy1 <= cy0:
        return canvas
    canvas[cy0:cy1, cx0:cx1] = mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] > 0
    return canvas


def _render_polyline(poly: fo.Polyline, height: int, width: int) -> np.ndarray:
    canvas = np.zeros((height, width), dtype=np.uint8)
    filled = poly.copy()
    filled.filled = True
    filled.closed = True
    filled.to_segmentation(mask=canvas, target=1)
    return canvas.astype(bool)


def parse_keyframe(value: Any, frame_number: int, height: int, width: int,
                   registry: ObjectRegistry, mask_targets: Mapping | None = None) -> Keyframe | None:
    """Turn one frame's keyframe label into a :class:`Keyframe`; None when it holds no object."""
    if value is None:
        return None
    label_map = np.zeros((height, width), dtype=np.int32)
    kf = Keyframe(frame_number, label_map)
    if isinstance(value, fo.Segmentation):
        mask = value.get_mask() if hasattr(value, "get_mask") else value.mask
        if mask is None:
            return None
        mask = np.asarray(mask)
        was_rgb = mask.ndim == 3
        if was_rgb:
            mask = _rgb_to_int(mask)
        mask = _resize_nearest(mask.astype(np.int64), height, width)
        for v in np.unique(mask):
            v = int(v)
            if v == 0:
                continue
            name = None
            if mask_targets:
                name = mask_targets.get(v, mask_targets.get(str(v)))
                if name is None and was_rgb:  # RGB hex targets
                    name = mask_targets.get("#%06x" % v)
            info = registry.get(("value", v), name if name is not None else str(v), frame_number, index=v)
            label_map[mask == v] = info.obj_id
            kf.objects.append(info.obj_id)
            kf.labels[info.obj_id] = info.label if name is None else name
    elif isinstance(value, (fo.Detections, fo.Polylines)):
        items = value.detections if isinstance(value, fo.Detections) else value.polylines
        seen: dict[Any, int] = {}
        for item in items:
            if item.index is not None:
                key = ("index", int(item.index))
            else:
                order = seen.get(item.label, 0)
                seen[item.label] = order + 1
                key = ("label", item.label, order)
            info = registry.get(key, item.label, frame_number,
                                index=int(item.index) if item.index is not None else None)
            if isinstance(item, fo.Detection):
                if not item.has_mask:
                    log.warning("frame %s: detection %r has no instance mask; using its box as the mask",
                                frame_number, item.label)
                region = _render_detection(item, height, width)
                if item.has_mask:
                    kf.exact[info.obj_id] = item
            else:
                if not item.filled:
                    log.warning("frame %s: polyline %r is not filled; filling it", frame_number, item.label)
                region = _render_polyline(item, height, width)
            if not region.any():
                log.warning("frame %s: object %r covers no pixel; ignored", frame_number, item.label)
                kf.exact.pop(info.obj_id, None)
                continue
            label_map[region] = info.obj_id  # later objects paint over earlier ones
            if info.obj_id not in kf.objects:
                kf.objects.append(info.obj_id)
            kf.labels[info.obj_id] = item.label
        # an object fully painted over by later ones is not on this keyframe any more
        present = set(np.unique(label_map).tolist())
        kf.objects = [o for o in kf.objects if o in present]
        kf.exact = {o: d for o, d in kf.exact.items() if o in present}
    else:
        raise TypeError(f"frame {frame_number}: unsupported keyframe label type {type(value).__name__}; "
                        "expected Detections, Segmentation or Polylines")
    if not kf.objects:
        return None
    return kf


def mask_to_detections(label_map: np.ndarray, confidences: Mapping[int, float] | None, registry: ObjectRegistry,
                       labels: Mapping[int, str | None], exact: Mapping[int, Any] | None = None,
                       given: set[int] | None = None, exact_confidence: float = 1.0) -> fo.Detections:
    """One ``fo.Detection`` per object present in ``label_map`` (bbox-relative masks).

    ``exact``: obj id -> given detection whose bbox and mask are copied unchanged (keyframes).
    ``confidences``: obj id -> confidence (see :func:`mean_confidences`).
    ``given``: obj ids given on this (key)frame: confidence ``exact_confidence``.
    """
    from scipy import ndimage

    height, width = label_map.shape
    exact = exact or {}
    dets = []
    slices = ndimage.find_objects(label_map.astype(np.int32))
    for obj_id in sorted(registry.by_id):
        info = registry.by_id[obj_id]
        label = labels.get(obj_id, info.label)
        if obj_id in exact:
            src = exact[obj_id]
            dets.append(fo.Detection(label=label, bounding_box=list(src.bounding_box),
                                     mask=np.array(src.get_mask() if hasattr(src, "get_mask") else src.mask),
                                     index=info.index, confidence=exact_confidence))
            continue
        if obj_id > len(slices) or slices[obj_id - 1] is None:
            continue
        ys, xs = slices[obj_id - 1]
        crop = label_map[ys, xs] == obj_id
        if given is not None and obj_id in given:
            confidence = exact_confidence
        elif confidences is not None and obj_id in confidences:
            confidence = confidences[obj_id]
        else:
            confidence = exact_confidence
        bbox = bbox_of(xs, ys, width, height)
        dets.append(fo.Detection(label=label, bounding_box=bbox, mask=crop, index=info.index,
                                 confidence=confidence))
    return fo.Detections(detections=dets)


def mean_confidences(probs, label_map: np.ndarray) -> dict[int, float]:
    """obj id -> mean probability of that object over its pixels in ``label_map``.

    ``probs``: (K+1, H, W) torch tensor (any device; resized bilinearly if its size differs);
    computed on its device with one gather and one scatter, so (K+1, H, W) never leaves it.
    Objects beyond the K channels (new on this frame) get no entry.
    """
    import torch

    if probs is None:
        return {}
    height, width = label_map.shape
    if tuple(probs.shape[-2:]) != (height, width):
        probs = torch.nn.functional.interpolate(probs[None].float(), size=(height, width), mode="bilinear",
                                                align_corners=False)[0]
    channels = probs.shape[0]
    labels = torch.from_numpy(np.ascontiguousarray(label_map, dtype=np.int64)).to(probs.device)
    inside = labels < channels
    picked = probs.float().gather(0, labels.clamp(max=channels - 1)[None])[0] * inside
    size = int(labels.max()) + 1 if labels.numel() else 1
    sums = torch.zeros(size, dtype=torch.float64, device=probs.device).scatter_add_(
        0, labels.flatten(), picked.flatten().double())
    counts = torch.bincount(labels.flatten(), minlength=size)
    return {k: float(sums[k] / counts[k]) for k in range(1, min(size, channels)) if counts[k] > 0}


# A millionth of a pixel added to the top-left corner: FiftyOne's Python renderer truncates
# ``int(W * x)``, and ``W * (x0 / W)`` can land just below ``x0`` in floating point.
_NUDGE = 1e-6


def bbox_of(xs: slice, ys: slice, width: int, height: int) -> list[float]:
    """Relative [x, y, w, h] of the pixel box ``ys, xs`` that renders back to exactly those
    pixels both by rounding (the App) and by truncation (FiftyOne's Python rendering)."""
    return [(xs.start + _NUDGE) / width, (ys.start + _NUDGE) / height,
            (xs.stop - xs.start) / width, (ys.stop - ys.start) / height]


def mask_to_segmentation(label_map: np.ndarray, registry: ObjectRegistry) -> fo.Segmentation:
    """Label map whose pixel values are the objects' output indexes."""
    lut_size = max(registry.by_id, default=0) + 1
    lut = np.zeros(lut_size, dtype=np.int64)
    for obj_id, info in registry.by_id.items():
        lut[obj_id] = info.index
    top = int(lut.max()) if lut.size else 0
    dtype = np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.int32)
    clipped = np.clip(label_map, 0, lut_size - 1)
    return fo.Segmentation(mask=lut[clipped].astype(dtype))
