"""Keyframe labels -> integer label maps, and label maps -> FiftyOne labels.

Keyframes may be ``fo.Detections`` with instance masks (masks relative to their bounding box,
FiftyOne's convention), ``fo.Segmentation`` label maps, or filled ``fo.Polylines``.

Objects are identified across keyframes by their ``index`` when set (for segmentations, by
their pixel value), else by their ``instance`` (a FiftyOne ``Instance``, as the App's annotation
links a drawn object across frames), else by ``label`` plus their order among the keyframe's
objects with that label. Each object gets an internal id 1..K (the tracker's ids, in order of
first appearance) and a stable output ``index`` (its given index, else the smallest unused
integer >= 1).

A detection without a mask (a box) or an ``fo.Keypoints`` keyframe (points) is a prompt: the
propagation turns it into a detection with a mask first (:mod:`deaot_vos.keyframe_prompts`).

Keyframes are validated strictly: a label that cannot be turned into exactly the masks the user
drew (a detection without a mask here, an empty mask, a mask outside the frame or of another aspect
ratio, a ``mask_path`` to a JPEG file (lossy: its noise would become objects; use PNG), two
objects with the same index, an object entirely hidden by later ones) raises
:class:`KeyframeError` naming the frame and the object, never a silent guess.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping

import numpy as np

import fiftyone as fo

log = logging.getLogger(__name__)

KEYFRAME_TYPES = (fo.Detections, fo.Segmentation, fo.Polylines)
PROMPT_TYPES = (fo.Keypoints,)  # keyframes that are prompts only (points): a prompt model makes their masks


class KeyframeError(ValueError):
    """A keyframe label that cannot be used as given.

    The message names the sample, the field and the frame (``sample_id``, ``filepath``,
    ``field``, ``frame_number`` attributes; the sample and field are added by
    :meth:`with_context` once known) and what is wrong with which object (``detail``).
    """

    def __init__(self, detail: str, frame_number: int | None = None, sample_id: str | None = None,
                 filepath: str | None = None, field: str | None = None):
        self.detail = detail
        self.frame_number = frame_number
        self.sample_id, self.filepath, self.field = sample_id, filepath, field
        super().__init__(self._message())

    def with_context(self, sample_id: str | None = None, filepath: str | None = None,
                     field: str | None = None) -> "KeyframeError":
        self.sample_id = sample_id or self.sample_id
        self.filepath = filepath or self.filepath
        self.field = field or self.field
        self.args = (self._message(),)
        return self

    def _message(self) -> str:
        where = []
        if self.sample_id is not None:
            where.append(f"sample {self.sample_id}"
                         + (f" ({os.path.basename(self.filepath)})" if self.filepath else ""))
        if self.field is not None:
            where.append(f"field '{self.field}'")
        if self.frame_number is not None:
            where.append(f"frame {self.frame_number}")
        return (", ".join(where) + ": " if where else "") + self.detail


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
    corrected: set[int] = field(default_factory=set)  # obj ids given by a correction in the output field


class ObjectRegistry:
    """Maps identity keys to tracker ids and output indexes for one video."""

    def __init__(self) -> None:
        self.by_key: dict[Hashable, ObjectInfo] = {}
        self.by_id: dict[int, ObjectInfo] = {}

    def get(self, key: Hashable, label: str | None, frame_number: int,
            index: int | None = None) -> ObjectInfo:
        info = self.by_key.get(key)
        if info is None:
            info = ObjectInfo(obj_id=len(self.by_id) + 1, key=key, label=label, index=index,
                              first_frame=frame_number)
            self.by_key[key] = info
            self.by_id[info.obj_id] = info
        return info

    def assign_indexes(self) -> None:
        """Objects without a given index get the smallest unused integers >= 1."""
        used = {info.index for info in self.by_id.values() if info.index is not None}
        candidate = 1
        for info in sorted(self.by_id.values(), key=lambda i: i.obj_id):
            if info.index is None:
                while candidate in used:
                    candidate += 1
                info.index = candidate
                used.add(candidate)

    def alias_indexes(self) -> None:
        """Make each object's output ``index`` also find it (a label carrying that index is that
        object): for labels read back from an output, whose indexes the run assigned."""
        for info in list(self.by_id.values()):
            if info.index is not None:
                self.by_key.setdefault(("index", info.index), info)

    @property
    def num_objects(self) -> int:
        return len(self.by_id)

    def index_table(self) -> np.ndarray:
        """Object id -> output index as a lookup array (``table[label_map]`` turns a tracker label map
        into an index map; entry 0 = background 0). Call :meth:`assign_indexes` first."""
        table = np.zeros(max(self.by_id, default=0) + 1, dtype=np.int64)
        for obj_id, info in self.by_id.items():
            table[obj_id] = int(info.index)
        return table

    @classmethod
    def for_indexes(cls, indexes, names: Mapping[int, str | None] | None = None) -> tuple["ObjectRegistry", np.ndarray]:
        """A registry of the objects with these output ``indexes`` (labels from ``names``, else the
        index) and the index -> object id lookup array (entry 0 = background 0)."""
        names = names or {}
        indexes = sorted(int(k) for k in indexes if int(k) != 0)
        registry = cls()
        table = np.zeros(max(indexes, default=0) + 1, dtype=np.int32)
        for k in indexes:
            table[k] = registry.get(("value", k), names.get(k) or str(k), 1, index=k).obj_id
        return registry, table


def _rgb_to_int(mask: np.ndarray) -> np.ndarray:
    mask = mask.astype(np.int64)
    return (mask[..., 0] << 16) | (mask[..., 1] << 8) | mask[..., 2]


def _resize_nearest(label_map: np.ndarray, height: int, width: int, frame_number: int | None = None) -> np.ndarray:
    """A segmentation mask of another size than the video is stretched over the frame (FiftyOne's
    convention) when it has the video's aspect ratio (within a pixel); otherwise it belongs to
    something else: refused."""
    if label_map.shape[:2] == (height, width):
        return label_map
    mh, mw = label_map.shape[:2]
    if min(mh, mw) <= 0 or (abs(mh * width / mw - height) > 1.0 and abs(mw * height / mh - width) > 1.0):
        raise KeyframeError(f"segmentation mask is {mw}x{mh} but the video is {width}x{height} (another aspect "
                            f"ratio): a mask of another video, or cropped/padded? Re-export it at the video's "
                            f"size", frame_number)
    import cv2

    log.warning("resizing a %sx%s keyframe mask to the video size %sx%s (nearest)",
                label_map.shape[1], label_map.shape[0], width, height)
    return cv2.resize(label_map.astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST)


def describe_label_item(kind: str, position: int, item) -> str:
    text = f"{kind} #{position}"
    extra = []
    if getattr(item, "label", None) is not None:
        extra.append(f"label {item.label!r}")
    if getattr(item, "index", None) is not None:
        extra.append(f"index {item.index}")
    return text + (f" ({', '.join(extra)})" if extra else "")


_JPEG_MAGIC = b"\xff\xd8\xff"


def _refuse_lossy_mask_file(label, what: str, frame_number: int | None) -> None:
    """A ``mask_path`` (used when ``mask`` is unset) holding a JPEG image, by its content whatever
    its name, raises :class:`KeyframeError`: JPEG is lossy, the compression noise around each edge
    would become spurious object ids (a 2-object colour mask gives ~200) or stray mask pixels."""
    path = getattr(label, "mask_path", None)
    if getattr(label, "mask", None) is not None or not path:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(3)
    except OSError:
        return  # reading the mask reports it
    if head == _JPEG_MAGIC:
        raise KeyframeError(f"{what}: its mask_path {path} is a JPEG image; JPEG is lossy, so the compression noise "
                            f"around every edge would become spurious object ids. Save the mask as a PNG "
                            f"(lossless) and point mask_path at it", frame_number)


def _detection_mask(det: fo.Detection, what: str, frame_number: int | None) -> np.ndarray:
    """The detection's (h, w) instance mask as uint8 0/1, validated (a JPEG ``mask_path`` is refused)."""
    _refuse_lossy_mask_file(det, what, frame_number)
    try:
        mask = det.get_mask() if hasattr(det, "get_mask") else det.mask
    except Exception as err:  # e.g. a mask_path that does not exist
        raise KeyframeError(f"{what}: cannot read its instance mask ({type(err).__name__}: {err})",
                            frame_number) from err
    if mask is None:
        raise KeyframeError(f"{what} has no instance mask (a box: only the propagation turns boxes into masks, "
                            f"see its prompt_model)", frame_number)
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.ndim != 2 or mask.size == 0:
        raise KeyframeError(f"{what} has an instance mask of shape {tuple(mask.shape)}; expected a 2-D mask "
                            f"covering its bounding box", frame_number)
    mask = (mask > 0).astype(np.uint8)
    if not mask.any():
        raise KeyframeError(f"{what} has an empty instance mask (no pixel set)", frame_number)
    return mask


def pixel_box(det: fo.Detection, height: int, width: int, what: str = "detection",
              frame_number: int | None = None) -> tuple[int, int, int, int]:
    """The detection's box in pixels (x0, y0, x1, y1; x1, y1 exclusive; corners rounded, the App's
    convention; not clipped to the frame). :class:`KeyframeError` for a box that is not finite,
    smaller than a pixel or entirely outside the frame."""
    box = det.bounding_box
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise KeyframeError(f"{what} has no valid bounding box (got {box!r})", frame_number) from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise KeyframeError(f"{what} has an invalid bounding box {list(box)} (needs finite [x, y, w, h] with "
                            f"w, h > 0)", frame_number)
    x0, y0 = int(round(x * width)), int(round(y * height))
    x1, y1 = int(round((x + w) * width)), int(round((y + h) * height))
    if x1 <= x0 or y1 <= y0:
        raise KeyframeError(f"{what} has a bounding box {list(box)} smaller than a pixel of the {width}x{height} "
                            f"video", frame_number)
    if min(x1, width) <= max(x0, 0) or min(y1, height) <= max(y0, 0):
        raise KeyframeError(f"{what} lies outside the frame (bounding box {list(box)}, relative coordinates must "
                            f"overlap [0, 1])", frame_number)
    return x0, y0, x1, y1


def render_detection(det: fo.Detection, height: int, width: int, what: str = "detection",
                     frame_number: int | None = None) -> np.ndarray:
    """Boolean (H, W) mask of one detection: its mask stretched (nearest) over its bounding box,
    whose corners are rounded to pixels (the App's convention; FiftyOne's Python renderer
    truncates and can lose a row/column to floating-point error). Parts outside the frame are
    clipped; a detection without a mask, with an empty mask or entirely outside the frame raises
    :class:`KeyframeError`."""
    x0, y0, x1, y1 = pixel_box(det, height, width, what, frame_number)
    box = det.bounding_box
    mask = _detection_mask(det, what, frame_number)
    canvas = np.zeros((height, width), dtype=bool)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if mask.shape != (y1 - y0, x1 - x0):
        import cv2

        mask = cv2.resize(mask, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    canvas[cy0:cy1, cx0:cx1] = mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] > 0
    if not canvas.any():
        raise KeyframeError(f"{what}: the part of its mask inside the frame is empty (bounding box {list(box)})",
                            frame_number)
    return canvas


def _render_polyline(poly: fo.Polyline, height: int, width: int, what: str = "polyline",
                     frame_number: int | None = None) -> np.ndarray:
    shapes = poly.points or []
    if not any(len(shape or []) for shape in shapes):
        raise KeyframeError(f"{what} has no points", frame_number)
    for shape in shapes:
        for point in shape or []:
            try:
                ok = len(point) == 2 and all(math.isfinite(float(v)) for v in point)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise KeyframeError(f"{what} has an invalid point {point!r} (expected finite relative [x, y])",
                                    frame_number)
    if not poly.filled:
        log.warning("frame %s: %s is not filled; filling it", frame_number, what)
    canvas = np.zeros((height, width), dtype=np.uint8)
    filled = poly.copy()
    filled.filled = True
    filled.closed = True
    filled.to_segmentation(mask=canvas, target=1)
    if not canvas.any():
        raise KeyframeError(f"{what} covers no pixel of the {width}x{height} frame (empty polygon, or outside "
                            f"the frame)", frame_number)
    return canvas.astype(bool)


def _given_index(item, what: str, frame_number: int) -> int | None:
    index = item.index
    if index is None:
        return None
    if isinstance(index, (bool, np.bool_)) or not (
            isinstance(index, (int, np.integer)) or (isinstance(index, float) and index.is_integer())):
        raise KeyframeError(f"{what} has index {index!r}; an index must be an integer >= 0", frame_number)
    if int(index) < 0:
        raise KeyframeError(f"{what} has index {index}; an index must be an integer >= 0", frame_number)
    return int(index)


def _segmentation_mask(value: fo.Segmentation, frame_number: int) -> tuple[np.ndarray, bool]:
    """(H, W) int64 values of a segmentation (RGB packed as 0xRRGGBB) and whether it was RGB; a JPEG
    ``mask_path`` is refused (lossy: not an id map)."""
    _refuse_lossy_mask_file(value, "segmentation", frame_number)
    try:
        mask = value.get_mask() if hasattr(value, "get_mask") else value.mask
    except Exception as err:  # e.g. a mask_path that does not exist
        raise KeyframeError(f"cannot read the segmentation mask ({type(err).__name__}: {err})",
                            frame_number) from err
    if mask is None:
        raise KeyframeError("segmentation has no mask (neither mask nor mask_path)", frame_number)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    was_rgb = mask.ndim == 3
    if (was_rgb and mask.shape[2] not in (3, 4)) or mask.ndim not in (2, 3) or mask.size == 0:
        raise KeyframeError(f"segmentation mask has shape {tuple(mask.shape)}; expected (H, W) values or "
                            f"(H, W, 3) RGB", frame_number)
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        if not np.issubdtype(mask.dtype, np.floating) or not np.array_equal(mask, np.round(mask)):
            raise KeyframeError(f"segmentation mask holds {mask.dtype} values that are not integers", frame_number)
    if mask.min() < 0:
        raise KeyframeError("segmentation mask holds negative values", frame_number)
    mask = mask.astype(np.int64)
    if was_rgb:
        mask = _rgb_to_int(mask[..., :3])
    return mask, was_rgb


def parse_keyframe(value: Any, frame_number: int, height: int, width: int,
                   registry: ObjectRegistry, mask_targets: Mapping | None = None) -> Keyframe | None:
    """Turn one frame's keyframe label into a :class:`Keyframe`; None when it holds no object
    (``None``, empty ``Detections`` / ``Polylines``, an all-zero ``Segmentation``).

    Raises :class:`KeyframeError` (naming the frame and the object) for labels that cannot be
    used as given; see the module docstring.
    """
    if value is None:
        return None
    label_map = np.zeros((height, width), dtype=np.int32)
    kf = Keyframe(frame_number, label_map)
    if isinstance(value, fo.Segmentation):
        _parse_segmentation(kf, value, height, width, registry, mask_targets)
    elif isinstance(value, (fo.Detections, fo.Polylines)):
        _parse_instances(kf, value, height, width, registry)
    else:
        raise KeyframeError(f"unsupported keyframe label type {type(value).__name__}; expected Detections, "
                            "Segmentation or Polylines (Keypoints need a prompt model first)", frame_number)
    if not kf.objects:
        return None
    return kf


def _parse_segmentation(kf: Keyframe, value: fo.Segmentation, height: int, width: int, registry: ObjectRegistry,
                        mask_targets: Mapping | None) -> None:
    """Fill ``kf`` from a label map: each non-zero value one object (``index`` = the value, label
    from the mask targets)."""
    frame_number, label_map = kf.frame_number, kf.label_map
    mask, was_rgb = _segmentation_mask(value, frame_number)
    mask = _resize_nearest(mask, height, width, frame_number)
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


def instance_key(item) -> tuple | None:
    """("instance", id) of a label linked to a FiftyOne ``Instance`` (the App's annotation gives
    every object it draws one, and no ``index``), else None."""
    instance = getattr(item, "instance", None) if item.has_field("instance") else None
    instance_id = getattr(instance, "id", None) if instance is not None else None
    return ("instance", str(instance_id)) if instance_id else None


def _parse_instances(kf: Keyframe, value, height: int, width: int, registry: ObjectRegistry) -> None:
    """Fill ``kf`` from Detections (instance masks) or filled Polylines: objects by ``index``, else by
    ``instance``, else by label and order; later objects paint over earlier ones, an object painted
    over entirely is refused."""
    frame_number, label_map = kf.frame_number, kf.label_map
    is_det = isinstance(value, fo.Detections)
    items = value.detections if is_det else value.polylines
    kind = "detection" if is_det else "polyline"
    seen: dict[Any, int] = {}
    by_index: dict[int, str] = {}
    names: dict[int, str] = {}
    for position, item in enumerate(items or []):
        what = describe_label_item(kind, position, item)
        given_index = _given_index(item, what, frame_number)
        if given_index is not None:
            if given_index in by_index:
                raise KeyframeError(f"{by_index[given_index]} and {what} have the same index {given_index}: "
                                    f"an index identifies one object, two objects on a frame cannot share it",
                                    frame_number)
            by_index[given_index] = what
            key = ("index", given_index)
        else:
            key = instance_key(item)
            if key is None:
                order = seen.get(item.label, 0)
                seen[item.label] = order + 1
                key = ("label", item.label, order)
        if is_det:
            region = render_detection(item, height, width, what, frame_number)
        else:
            region = _render_polyline(item, height, width, what, frame_number)
        info = registry.get(key, item.label, frame_number, index=given_index)
        label_map[region] = info.obj_id  # later objects paint over earlier ones
        if is_det:
            kf.exact[info.obj_id] = item
        if info.obj_id not in kf.objects:
            kf.objects.append(info.obj_id)
        kf.labels[info.obj_id] = item.label
        names[info.obj_id] = what
    # an object entirely painted over by later ones would silently vanish from its own keyframe
    present = set(np.unique(label_map).tolist())
    hidden = [o for o in kf.objects if o not in present]
    if hidden:
        raise KeyframeError(f"{names[hidden[0]]} is entirely covered by objects listed after it (later objects "
                            f"are drawn on top); list it after them or fix the masks", frame_number)


def mask_to_detections(label_map: np.ndarray, confidences: Mapping[int, float] | None, registry: ObjectRegistry,
                       labels: Mapping[int, str | None], exact: Mapping[int, Any] | None = None,
                       given: set[int] | None = None, exact_confidence: float = 1.0) -> fo.Detections:
    """One ``fo.Detection`` per object present in ``label_map`` (bbox-relative masks).

    ``exact``: obj id -> given detection whose bbox and mask are copied unchanged (keyframes).
    ``confidences``: obj id -> confidence (see :func:`deaot_core.propagation.mean_confidences`).
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
    lut = registry.index_table()
    lut_size = len(lut)
    top = int(lut.max()) if lut.size else 0
    dtype = np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.int32)
    clipped = np.clip(label_map, 0, lut_size - 1)
    return fo.Segmentation(mask=lut[clipped].astype(dtype))
