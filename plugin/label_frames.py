"""The one reader of a video's label frames, and their parsing into object-id maps.

:func:`read_label_frames` reads the frames of one sample whose label field is set (frames the view
shows, sorted by number); :func:`parse_id_maps` parses them exactly as the propagation parses
keyframes (:func:`deaot_vos.labels.parse_keyframe`: ``fo.Detections`` with instance masks,
``fo.Segmentation`` label maps whose pixel values are the ids, filled ``fo.Polylines``; later
objects paint over earlier ones), then gives each object's pixels its ``index`` (a segmentation's
pixel value). :func:`read_id_maps` does both. Used by the evaluation, the DAVIS / YouTube-VOS
import/export and the training source.

A frame whose field is ``None`` is *not annotated*; a set but empty label (e.g. an empty
``fo.Detections``) is an annotated, all-background frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import fiftyone as fo

from .fields import KEYFRAME_MARK, label_error
from .labels import KeyframeError, ObjectRegistry, describe_label_item, mask_to_detections, parse_keyframe
from .video_io import file_problem

__all__ = ["IdMaps", "KEYFRAME_MARKS", "keep_marked_keyframes", "read_label_frames", "parse_id_maps", "read_id_maps", "renumber_ids", "id_map_to_detections"]

# why the masks matter, in the words of the caller (the ``what`` of its field argument)
_USES = {"pred_field": "J&F compares masks pixel by pixel", "gt_field": "J&F compares masks pixel by pixel",
         "label_field": "the export writes masks", "train_field": "training needs every object's mask"}


@dataclass
class IdMaps:
    """The annotated frames of one video's label field."""

    frames: list[int]  # annotated frame numbers (1-based), sorted
    maps: dict[int, np.ndarray]  # frame number -> (H, W) int64 id map (0 = background)
    labels: dict[int, str | None] = field(default_factory=dict)  # index -> label (first seen)
    field_type: type | None = None  # fo.Detections, fo.Segmentation or fo.Polylines


def read_label_frames(sample_collection, sample_id: str, field_name: str) -> list[tuple[int, Any]]:
    """``[(frame_number, label), ...]`` of one sample: the frames of ``sample_collection`` (as the
    view shows them) whose ``field_name`` is set, sorted by frame number. An image sample's field
    is its frame 1."""
    one = sample_collection.select(sample_id)
    if sample_collection.media_type != fo.core.media.VIDEO:
        values = one.values(field_name)
        return [(1, values[0])] if values and values[0] is not None else []
    all_numbers, all_values = one.values(["frames.frame_number", "frames." + field_name])
    numbers = (all_numbers[0] or []) if all_numbers else []
    values = (all_values[0] or []) if all_values else []
    return sorted(((int(n), v) for n, v in zip(numbers, values) if v is not None), key=lambda item: item[0])


KEYFRAME_MARKS = ("auto", "on", "off")


def _marked_items(value) -> tuple[str, list] | None:
    """(the list attribute, its labels) of a Detections / Polylines / Keypoints label, else None."""
    for attribute in ("detections", "polylines", "keypoints"):
        items = getattr(value, attribute, None)
        if isinstance(value, (fo.Detections, fo.Polylines, fo.Keypoints)) and items is not None:
            return attribute, list(items)
    return None


def _is_marked(item) -> bool:
    return item.has_field(KEYFRAME_MARK) and item[KEYFRAME_MARK] is True


def keep_marked_keyframes(label_frames: list[tuple[int, Any]], keyframe_marks: str = "auto") -> list[tuple[int, Any]]:
    """The keyframes of a track field: with ``keyframe_marks`` "on" (or "auto" when any label
    carries ``keyframe=True``, as CVAT's tracks and the App's annotations do), each frame keeps
    only its labels marked ``keyframe=True`` and frames without one are dropped (the other frames'
    labels are interpolations, not keyframes); "off" (or "auto" without marks) keeps every
    labelled frame. ValueError for "on" on a Segmentation field (no per-object marks)."""
    if keyframe_marks not in KEYFRAME_MARKS:
        raise ValueError(f"keyframe_marks must be one of {', '.join(KEYFRAME_MARKS)}, got {keyframe_marks!r}")
    if keyframe_marks == "off":
        return label_frames
    parts = [(number, value, _marked_items(value)) for number, value in label_frames]
    if keyframe_marks == "auto" and not any(_is_marked(x) for *_, items in parts if items for x in items[1]):
        return label_frames
    kept = []
    for number, value, items in parts:
        if items is None:
            raise ValueError(f"keyframe_marks='on' needs Detections, Polylines or Keypoints (labels with a 'keyframe' "
                             f"attribute); frame {number} holds a {type(value).__name__}")
        marked = [x for x in items[1] if _is_marked(x)]
        if marked:
            kept.append((number, type(value)(**{items[0]: marked})))
    return kept


def _reword(detail: str) -> str:
    """The label parser is shared with the propagation, whose messages speak of keyframes."""
    return (detail.replace("keyframe label", "label").replace("keyframe mask", "mask")
            .replace("keyframes", "labels").replace("keyframe", "label"))


def _mask_problem(value, what: str) -> str | None:
    """What is wrong with the masks of a frame's label before it is parsed, in the words of this
    reading (the parser's own messages are the propagation's): a Detection without a mask, a
    mask file that is missing or a directory."""
    use = _USES.get(what, "masks are read pixel by pixel")
    if isinstance(value, fo.Detections):
        for position, det in enumerate(value.detections or []):
            name = describe_label_item("detection", position, det)
            mask_path = getattr(det, "mask_path", None)
            if det.mask is None and not mask_path:
                return (f"{name} has no instance mask: {use} and a box alone has none; give every object an "
                        f"instance mask (or convert the boxes to masks, e.g. with SAM) first")
            problem = file_problem(mask_path, "mask") if det.mask is None else None
            if problem:
                return f"{name}: its mask_path cannot be read: {problem}"
    elif isinstance(value, fo.Segmentation):
        mask_path = getattr(value, "mask_path", None)
        problem = file_problem(mask_path, "mask") if value.mask is None and mask_path else None
        if problem:
            return f"segmentation mask_path cannot be read: {problem}"
    return None


def _parse_frame(value, number: int, height: int, width: int, registry: ObjectRegistry, mask_targets,
                 context: tuple, require_index: bool) -> np.ndarray:
    """One frame's label as an object-id map (registry ids); errors as ``label_error`` in ``context``
    = (sample_id, filepath, field_name, what)."""
    problem = _mask_problem(value, context[3])
    if problem:
        raise label_error(problem, *context, number)
    try:
        kf = parse_keyframe(value, number, height, width, registry, mask_targets)
    except KeyframeError as err:
        raise label_error(_reword(err.detail), *context, number) from err
    except (TypeError, ValueError, AttributeError) as err:  # a label the parser does not expect
        raise label_error(f"cannot read this {type(value).__name__} label ({type(err).__name__}: {err})",
                          *context, number) from err
    if kf is None:
        return np.zeros((height, width), dtype=np.int32)
    unindexed = [registry.by_id[i] for i in kf.objects if registry.by_id[i].index is None] if require_index else []
    if unindexed:
        raise label_error(f"an object (label {unindexed[0].label!r}) without an index: objects are matched by "
                          f"their `index` (set it on every Detection/Polyline)", *context, number)
    return kf.label_map


def parse_id_maps(label_frames: list[tuple[int, Any]], height: int, width: int, mask_targets=None,
                  require_index: bool = True, context: tuple = ("?", None, "field", "field")) -> IdMaps:
    """:func:`read_label_frames` output as id maps of size (height, width), pixel value = ``index``.

    ``require_index``: every Detection/Polyline must have an ``index`` (else a ``LabelFieldError``);
    otherwise objects without one get the propagation's identity rule (label + order) and the
    smallest free integers. ``context`` = (sample_id, filepath, field_name, what) for messages."""
    registry = ObjectRegistry()
    parsed: dict[int, np.ndarray] = {}
    for number, value in label_frames:
        parsed[number] = _parse_frame(value, number, height, width, registry, mask_targets, context, require_index)
    registry.assign_indexes()
    table = registry.index_table()
    labels: dict[int, str | None] = {}
    for info in sorted(registry.by_id.values(), key=lambda i: i.obj_id):
        labels.setdefault(int(info.index), info.label)
    field_type = type(label_frames[-1][1]) if label_frames else None
    return IdMaps(frames=sorted(parsed), maps={n: table[m] for n, m in parsed.items()}, labels=labels,
                  field_type=field_type)


def read_id_maps(sample_collection, sample_id: str, filepath: str, field_name: str, height: int, width: int,
                 mask_targets=None, require_index: bool = True, what: str = "field") -> IdMaps:
    """The annotated frames of ``field_name`` of one sample as id maps of size (height, width)
    (:func:`read_label_frames` + :func:`parse_id_maps`; errors name the sample, frame and field)."""
    frames = read_label_frames(sample_collection, sample_id, field_name)
    return parse_id_maps(frames, height, width, mask_targets, require_index,
                         (sample_id, filepath, field_name, what))


def renumber_ids(id_map: np.ndarray, numbering: dict[int, int]) -> tuple[np.ndarray, list[int]]:
    """Renumber an id map's objects (``numbering``: index -> 1..K; 0 stays 0, ids not in it become 0)
    into uint8; returns the map and the ids that are not in ``numbering``."""
    values, inverse = np.unique(id_map, return_inverse=True)
    mapped = np.array([numbering.get(int(v), 0) for v in values], dtype=np.uint8)
    unknown = [int(v) for v in values if v != 0 and int(v) not in numbering]
    return mapped[inverse].reshape(id_map.shape), unknown


def id_map_to_detections(id_map: np.ndarray, names: dict[int, str | None] | None = None) -> fo.Detections:
    """``fo.Detections`` (bbox-relative instance masks, ``index`` = id) that render back to exactly
    ``id_map`` (see :func:`deaot_vos.labels.mask_to_detections`)."""
    registry, table = ObjectRegistry.for_indexes(np.unique(id_map).tolist(), names)
    return mask_to_detections(table[id_map], None, registry, {})
