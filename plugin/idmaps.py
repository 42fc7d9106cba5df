"""A video's frame-level labels as (H, W) object-id maps: pixel value = the object's ``index``.

Shared by the evaluation (``deaot_vos.evaluation``) and the DAVIS / YouTube-VOS import/export
(``deaot_vos.vos_io``). Labels are parsed exactly as the propagation parses keyframes
(:func:`deaot_vos.labels.parse_keyframe`: ``fo.Detections`` with instance masks, ``fo.Segmentation``
label maps whose pixel values are the ids, filled ``fo.Polylines``; later objects paint over
earlier ones), then each object's pixels get its ``index`` (a segmentation's pixel value).

A frame whose field is ``None`` is *not annotated*; a set but empty label (e.g. an empty
``fo.Detections``) is an annotated, all-background frame.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

import fiftyone as fo

from .labels import KEYFRAME_TYPES, KeyframeError, ObjectRegistry, parse_keyframe


class LabelFieldError(ValueError):
    """A label field that cannot be read as object-id maps (the message names field and sample).

    Errors about one frame's label carry ``sample_id``, ``filepath``, ``field``, ``what`` (the
    argument: ``pred_field``, ``gt_field``, ``label_field``), ``frame_number`` and ``detail``."""

    sample_id = filepath = field = what = frame_number = detail = None


# what the field is for, in the words of its caller (the evaluation or the export)
FIELD_ROLES = {"pred_field": "predictions", "gt_field": "ground truth", "label_field": "labels"}
_USES = {"pred_field": "J&F compares masks pixel by pixel", "gt_field": "J&F compares masks pixel by pixel",
         "label_field": "the export writes masks"}


def describe_field(field_name: str, what: str = "field") -> str:
    role = FIELD_ROLES.get(what)
    return f"field '{field_name}' ({role}, {what})" if role else f"field '{field_name}' ({what})"


def label_error(detail: str, sample_id: str, filepath: str | None, field_name: str, what: str,
                frame_number: int | None) -> LabelFieldError:
    """A :class:`LabelFieldError` naming the sample (id and file name), the frame and the field."""
    where = describe_sample(sample_id, filepath)
    at = f"frame {frame_number} of " if frame_number is not None else ""
    err = LabelFieldError(f"{where}: {at}{describe_field(field_name, what)}: {detail}")
    err.sample_id, err.filepath, err.field, err.what = str(sample_id), filepath, field_name, what
    err.frame_number, err.detail = frame_number, detail
    return err


def _reword(detail: str) -> str:
    """The label parser is shared with the propagation, whose messages speak of keyframes."""
    return (detail.replace("keyframe label", "label").replace("keyframe mask", "mask")
            .replace("keyframes", "labels").replace("keyframe", "label"))


def _check_masks(value, what: str) -> str | None:
    """What is wrong with the masks of a frame's label before it is parsed, in the words of this
    reading (the parser's own messages are the propagation's): a Detection without a mask, a
    mask file that is missing or a directory."""
    from .video import file_problem

    use = _USES.get(what, "masks are read pixel by pixel")
    if isinstance(value, fo.Detections):
        from .labels import _describe

        for position, det in enumerate(value.detections or []):
            name = _describe("detection", position, det)
            mask_path = getattr(det, "mask_path", None)
            if det.mask is None and not mask_path:
                return (f"{name} has no instance mask: {use} and a box alone has none; give every object an "
                        f"instance mask (or convert the boxes to masks, e.g. with SAM) first")
            if det.mask is None:
                problem = file_problem(mask_path, "mask")
                if problem:
                    return f"{name}: its mask_path cannot be read: {problem}"
    elif isinstance(value, fo.Segmentation):
        mask_path = getattr(value, "mask_path", None)
        if value.mask is None and mask_path:
            problem = file_problem(mask_path, "mask")
            if problem:
                return f"segmentation mask_path cannot be read: {problem}"
    return None


@dataclass
class IdMaps:
    """The annotated frames of one video's label field."""

    frames: list[int]  # annotated frame numbers (1-based), sorted
    maps: dict[int, np.ndarray]  # frame number -> (H, W) int64 id map (0 = background)
    labels: dict[int, str | None] = field(default_factory=dict)  # index -> label (first seen)
    field_type: type | None = None  # fo.Detections, fo.Segmentation or fo.Polylines


def root_dataset(sample_collection) -> fo.Dataset:
    """The dataset behind a dataset or view; refuses non-collections and generated views."""
    if not isinstance(sample_collection, fo.core.collections.SampleCollection):
        raise TypeError(f"expected a FiftyOne dataset or view, got {type(sample_collection).__name__}")
    if isinstance(sample_collection, fo.Dataset):
        return sample_collection
    if getattr(sample_collection, "_is_generated", False):
        raise ValueError("this runs on video datasets or their views, not on clips/frames/patches views; "
                         "run it on the underlying video dataset")
    return sample_collection._root_dataset


def frame_field_name(name: str | None, what: str = "field") -> str:
    if name is None or str(name).strip() == "":
        raise ValueError(f"{what} is required")
    name = str(name).strip()
    if name.startswith("frames."):
        name = name[len("frames."):]
    if not name or "." in name:
        raise ValueError(f"invalid {what} {name!r}: expected a top-level frame field name")
    return name


def check_label_field(sample_collection, name: str, what: str = "field") -> tuple[str, type]:
    """Normalised frame field name and its label type; raises naming the field when it is missing or
    of another type, or when the collection is not a video collection."""
    dataset = root_dataset(sample_collection)
    if sample_collection.media_type != fo.core.media.VIDEO:
        raise ValueError(f"'{dataset.name}' is not a video collection (media type {sample_collection.media_type!r})")
    name = frame_field_name(name, what)
    schema = dataset.get_frame_field_schema() or {}
    if name not in schema:
        raise LabelFieldError(f"dataset '{dataset.name}' has no frame field '{name}' ({what}); frame fields: "
                              f"{sorted(schema)}")
    kind = getattr(schema[name], "document_type", None)
    if kind not in KEYFRAME_TYPES:
        raise LabelFieldError(f"frame field '{name}' ({what}) must hold Detections (instance masks), Segmentation "
                              f"or Polylines, not {getattr(kind, '__name__', type(schema[name]).__name__)}")
    return name, kind


def describe_sample(sample_id: str, filepath: str | None) -> str:
    return f"sample {sample_id} ({os.path.basename(filepath)})" if filepath else f"sample {sample_id}"


def frame_size(sample_id: str, filepath: str, metadata) -> tuple[int, int]:
    """(height, width) of a video: FiftyOne's metadata when present, else decoded with decord."""
    h = getattr(metadata, "frame_height", None) if metadata is not None else None
    w = getattr(metadata, "frame_width", None) if metadata is not None else None
    if h and w:
        return int(h), int(w)
    from .video import VideoError, open_video

    try:
        reader = open_video(filepath)
    except VideoError as err:
        raise LabelFieldError(f"cannot tell the frame size of {describe_sample(sample_id, filepath)}: it has no "
                              f"metadata and its video cannot be opened ({err})") from err
    return reader.height, reader.width


def read_id_maps(sample_collection, sample_id: str, filepath: str, field_name: str, height: int, width: int,
                 mask_targets=None, require_index: bool = True, what: str = "field") -> IdMaps:
    """The annotated frames of ``field_name`` of one sample as id maps of size (height, width).

    ``require_index``: every Detection/Polyline must have an ``index`` (else a ``LabelFieldError``
    naming the sample, frame and field); otherwise objects without one get the propagation's
    identity rule (label + order) and the smallest free integers.
    """
    one = sample_collection.select(sample_id)
    all_numbers, all_values = one.values(["frames.frame_number", "frames." + field_name])
    numbers = (all_numbers[0] or []) if all_numbers else []
    values = (all_values[0] or []) if all_values else []
    registry = ObjectRegistry()
    parsed: dict[int, np.ndarray] = {}
    field_type = None
    for number, value in sorted(zip(numbers, values), key=lambda x: x[0]):
        if value is None:
            continue
        field_type = type(value)
        problem = _check_masks(value, what)
        if problem:
            raise label_error(problem, sample_id, filepath, field_name, what, int(number))
        try:
            kf = parse_keyframe(value, int(number), height, width, registry, mask_targets)
        except KeyframeError as err:
            raise label_error(_reword(err.detail), sample_id, filepath, field_name, what, int(number)) from err
        except (TypeError, ValueError, AttributeError) as err:  # a label the parser does not expect
            raise label_error(f"cannot read this {type(value).__name__} label ({type(err).__name__}: {err})",
                              sample_id, filepath, field_name, what, int(number)) from err
        if kf is None:
            parsed[int(number)] = np.zeros((height, width), dtype=np.int32)
            continue
        if require_index:
            for obj_id in kf.objects:
                info = registry.by_id[obj_id]
                if info.index is None:
                    raise label_error(
                        f"an object (label {info.label!r}) without an index: objects are matched by their `index` "
                        f"(set it on every Detection/Polyline)", sample_id, filepath, field_name, what, int(number))
        parsed[int(number)] = kf.label_map
    registry.assign_indexes()
    lut = np.zeros(max(registry.by_id, default=0) + 1, dtype=np.int64)
    for obj_id, info in registry.by_id.items():
        lut[obj_id] = int(info.index)
    maps = {n: lut[m] for n, m in parsed.items()}
    labels: dict[int, str | None] = {}
    for info in sorted(registry.by_id.values(), key=lambda i: i.obj_id):
        labels.setdefault(int(info.index), info.label)
    return IdMaps(frames=sorted(maps), maps=maps, labels=labels, field_type=field_type)


def mask_targets_of(dataset: fo.Dataset, field_name: str):
    return (dataset.mask_targets or {}).get("frames." + field_name) or dataset.default_mask_targets or None


def id_map_to_detections(id_map: np.ndarray, names: dict[int, str | None] | None = None) -> fo.Detections:
    """``fo.Detections`` (bbox-relative instance masks, ``index`` = id) that render back to exactly
    ``id_map`` (see :func:`deaot_vos.labels.mask_to_detections`)."""
    from .labels import mask_to_detections

    names = names or {}
    ids = [int(v) for v in np.unique(id_map) if v != 0]
    registry = ObjectRegistry()
    lut = np.zeros(int(max(ids, default=0)) + 1, dtype=np.int32)
    for k in ids:
        info = registry.get(("value", k), names.get(k, str(k)), 1, index=k)
        lut[k] = info.obj_id
    return mask_to_detections(lut[id_map], None, registry, {})
