"""Datasets, samples and label fields in the words of every FiftyOne-side module: the dataset behind
a view, the one rule for frame-field names, a field's mask targets, a video's frame size,
sequence names and how a sample, a field or a label error is described.

Propagation, evaluation, DAVIS / YouTube-VOS import/export and the training source all use
these, so a name refused (or a message worded) by one is refused (worded) the same by the others.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable

import cv2

import fiftyone as fo

from .labels import KEYFRAME_TYPES, PROMPT_TYPES
from .video_io import VideoError, open_video

__all__ = [
    "FRAME_DEFAULT_FIELDS", "RESERVED_SUFFIXES", "LabelFieldError", "root_dataset", "frame_field_name",
    "reserved_name", "check_label_field", "label_field_names", "keyframe_field_names", "likely_keyframes_field", "mask_targets_for", "frame_size", "describe_sample", "describe_field",
    "label_error", "check_sequence_name", "sequence_names",
]

#: frame fields every frame has: never a label field
FRAME_DEFAULT_FIELDS = frozenset({"id", "_id", "frame_number", "created_at", "last_modified_at", "_sample_id",
                                  "_dataset_id"})
#: name endings of the propagation's temporary fields (``<field>_deaot_tmp``; ``_deaot_old``: older versions)
RESERVED_SUFFIXES = ("_deaot_tmp", "_deaot_old")

# what a field is for, in the words of its caller (the evaluation, the export, the propagation)
FIELD_ROLES = {"pred_field": "predictions", "gt_field": "ground truth", "label_field": "labels",
               "keyframes_field": "keyframes", "output_field": "output", "train_field": "training ground truth"}


class LabelFieldError(ValueError):
    """A label field that cannot be read as object-id maps (the message names field and sample).

    Errors about one frame's label carry ``sample_id``, ``filepath``, ``field``, ``what`` (the
    argument: ``pred_field``, ``gt_field``, ``label_field``), ``frame_number`` and ``detail``."""

    sample_id = filepath = field = what = frame_number = detail = None


def root_dataset(sample_collection, clips: bool = False) -> fo.Dataset:
    """The dataset behind a dataset or view; refuses non-collections and generated views (with
    ``clips``, a clip view is accepted: its clips' videos are samples of the returned dataset)."""
    if not isinstance(sample_collection, fo.core.collections.SampleCollection):
        raise TypeError(f"expected a FiftyOne dataset or view, got {type(sample_collection).__name__}")
    if isinstance(sample_collection, fo.Dataset):
        return sample_collection
    if clips and isinstance(sample_collection, fo.core.clips.ClipsView):
        return sample_collection._root_dataset
    if getattr(sample_collection, "_is_generated", False):
        kinds = "video datasets, their views and clip views, not on frames/patches" if clips else \
            "video datasets or their views, not on clips/frames/patches"
        raise ValueError(f"this runs on {kinds} views; run it on the underlying video dataset")
    return sample_collection._root_dataset


def reserved_name(name: str) -> bool:
    """Whether ``name`` ends like one of the propagation's temporary fields."""
    return any(name.endswith(s) for s in RESERVED_SUFFIXES)


def frame_field_name(name: str | None, what: str = "field") -> str:
    """The one rule for a frame label field's name: ``name`` stripped, without a leading ``frames.``;
    ``ValueError`` naming ``what`` (the argument, e.g. ``gt_field``) when it is missing, nested
    (a ``.``), private (leading ``_``), one FiftyOne cannot store (a ``$`` or a null character), a
    default frame field (``frame_number``...) or ends in a reserved temporary suffix (:data:`RESERVED_SUFFIXES`)."""
    if name is None or str(name).strip() == "":
        raise ValueError(f"{what} is required")
    name = str(name).strip()
    if name.startswith("frames."):
        name = name[len("frames."):]
    if not name or "." in name or name.startswith("_") or name in FRAME_DEFAULT_FIELDS:
        raise ValueError(f"invalid {what} {name!r}: expected a top-level frame field name")
    if "$" in name or "\0" in name:  # refused by FiftyOne (MongoDB operators), only once a field is added
        raise ValueError(f"invalid {what} {name!r}: FiftyOne field names cannot contain '$' or a null character")
    if reserved_name(name):
        raise ValueError(f"invalid {what} {name!r}: names ending in {' or '.join(RESERVED_SUFFIXES)} are reserved "
                         f"for the plugin's temporary fields")
    return name


def check_label_field(sample_collection, name: str, what: str = "field") -> tuple[str, type]:
    """Normalised frame field name (:func:`frame_field_name`) and its label type; raises naming the
    field when it is missing or of another type, or when the collection is not a video collection."""
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


def label_field_names(dataset: fo.Dataset, kinds: tuple = KEYFRAME_TYPES) -> list[str]:
    """Frame fields holding one of ``kinds``; by default those the plugin can read as masks
    (Detections with masks, Segmentation, Polylines)."""
    schema = dataset.get_frame_field_schema() or {}
    return [name for name, field in schema.items() if getattr(field, "document_type", None) in kinds]


def keyframe_field_names(dataset: fo.Dataset) -> list[str]:
    """Frame fields a propagation can start from: the mask fields (:func:`label_field_names`) and
    the Keypoints fields (points, made masks by a prompt model)."""
    return label_field_names(dataset, KEYFRAME_TYPES + PROMPT_TYPES)


#: a field name that says "keyframes": ``keyframes``, ``my_keyframe``, ``kf``, ``kf_masks``...
KEYFRAME_NAME = re.compile(r"key_?frame|(?:^|[^a-z0-9])kfs?(?:[^a-z0-9]|$)", re.IGNORECASE)


#: the per-label flag of CVAT tracks and the App's annotation: True on the annotated frames
KEYFRAME_MARK = "keyframe"


def _marked_frames(name: str, field) -> fo.Sum | None:
    """An aggregation counting the frames where a label of ``name`` is marked ``keyframe=True``
    (a track field's annotated frames); None for a field without per-label marks (Segmentation)."""
    attribute = {fo.Detections: "detections", fo.Polylines: "polylines"}.get(getattr(field, "document_type", None))
    if attribute is None:
        return None
    marked = fo.ViewField(f"{name}.{attribute}").filter(fo.ViewField(KEYFRAME_MARK) == True).length() > 0  # noqa: E712
    return fo.Sum("frames", expr=marked.if_else(1, 0))


#: set by every propagation on each frame of its output (``fo.Detections``): the frame's signature
RUN_SIGNATURE = "deaot_inputs"


def _output_frames(name: str) -> fo.Sum:
    """An aggregation counting the frames where ``name`` holds a propagation's output."""
    return fo.Sum("frames", expr=fo.ViewField(f"{name}.{RUN_SIGNATURE}").exists().if_else(1, 0))


def likely_keyframes_field(dataset: fo.Dataset) -> str | None:
    """The mask field (:func:`label_field_names`) most likely to hold keyframes, or None. A track
    field (CVAT's tracks, the App's annotation: labels on every frame, ``keyframe=True`` on the
    annotated ones) counts only its marked frames; never one otherwise labelled on every frame (a
    ground truth) nor a propagation's output (the App marks corrections made in it); among the
    others, one named like keyframes first (``keyframe`` or ``kf`` in the name), then one with
    labelled frames before an empty one, then the fewest labelled frames, then schema order."""
    fields = label_field_names(dataset)
    if not fields:
        return None
    schema = dataset.get_frame_field_schema()
    marks = {name: agg for name in fields if (agg := _marked_frames(name, schema[name])) is not None}
    counts = dataset.aggregate([fo.Count("frames")] + [fo.Count(f"frames.{name}") for name in fields]
                               + list(marks.values()) + [_output_frames(name) for name in marks])
    total, labelled = counts[0], dict(zip(fields, counts[1:len(fields) + 1]))
    labelled.update({name: marked for name, marked in zip(marks, counts[len(fields) + 1:]) if marked})
    outputs = {name for name, frames in zip(marks, counts[len(fields) + 1 + len(marks):]) if frames}
    candidates = [name for name in fields if not (total and labelled[name] >= total) and name not in outputs]
    if not candidates:
        return None
    return min(candidates, key=lambda name: (not KEYFRAME_NAME.search(name), labelled[name] == 0, labelled[name],
                                             fields.index(name)))


def mask_targets_for(dataset: fo.Dataset, field_name: str, frame_field: bool = True) -> dict | None:
    """The mask targets of a label field (``frames.<name>`` for a frame field), else the dataset's
    default mask targets, else None."""
    key = "frames." + field_name if frame_field else field_name
    return (dataset.mask_targets or {}).get(key) or dataset.default_mask_targets or None


def frame_size(sample_id: str, filepath: str, metadata, media_type: str = "video") -> tuple[int, int]:
    """(height, width) of a video's frames (or an image): FiftyOne's metadata when present, else
    read from the file (decord / OpenCV); ``LabelFieldError`` when neither tells."""
    is_video = media_type == "video"
    h = getattr(metadata, "frame_height" if is_video else "height", None) if metadata is not None else None
    w = getattr(metadata, "frame_width" if is_video else "width", None) if metadata is not None else None
    if h and w:
        return int(h), int(w)
    if not is_video:
        image = cv2.imread(filepath, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise LabelFieldError(f"cannot read the image of {describe_sample(sample_id, filepath)}")
        return image.shape[0], image.shape[1]
    try:
        reader = open_video(filepath)
    except VideoError as err:
        raise LabelFieldError(f"cannot tell the frame size of {describe_sample(sample_id, filepath)}: it has no "
                              f"metadata and its video cannot be opened ({err})") from err
    return reader.height, reader.width


def describe_sample(sample_id: str, filepath: str | None) -> str:
    """``sample <id> (<file name>)``: how every message names a sample."""
    return f"sample {sample_id} ({os.path.basename(filepath)})" if filepath else f"sample {sample_id}"


def describe_field(field_name: str, what: str = "field") -> str:
    """``field '<name>' (<role>, <what>)``: how every message names a label field."""
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


def check_sequence_name(name: Any, where: str = "") -> str:
    """``name`` if it is one safe folder name, else ``ValueError`` naming it (``where`` prefixes the
    message). A sequence name becomes ``JPEGImages/<name>``, ``Annotations/<name>`` and
    ``<name>.mp4``: an empty name, ``.``, ``..``, or one with ``/``, ``\\`` or NUL would point at
    another folder (``.`` with overwrite replaced every sequence of an export)."""
    if not isinstance(name, str):
        problem = f"is a {type(name).__name__}, not a string"
    elif not name.strip():
        problem = "is empty"
    elif name in (".", ".."):
        problem = "is a relative folder reference"
    elif "\0" in name:
        problem = "contains a NUL character"
    elif "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        problem = "contains a path separator"
    else:
        return name
    raise ValueError(f"{where}sequence name {name!r} {problem}: a sequence name must be a single folder name "
                     f"(not empty, '.' or '..', without '/', '\\' or NUL)")


def sequence_names(ids: Iterable[str], filepaths: Iterable[str], names: Iterable[Any] | None = None,
                   folder_safe: bool = False) -> list[str]:
    """The sequence name of each sample: its ``sequence`` field value (``names``, when set), else its
    file name without extension; repeated names get ``_2``, ``_3``... With ``folder_safe`` each
    must be one safe folder name (:func:`check_sequence_name`, ``ValueError`` naming the sample)."""
    ids, filepaths = list(ids), list(filepaths)
    names = list(names) if names is not None else [None] * len(ids)
    out, seen = [], {}
    for sid, path, name in zip(ids, filepaths, names):
        from_field = name is not None and str(name) != ""
        base = str(name) if from_field else os.path.splitext(os.path.basename(path))[0]
        if folder_safe:
            check_sequence_name(base.strip() or base, f"{describe_sample(sid, path)}, from its "
                                + ("'sequence' field: " if from_field else "video file name: "))
            base = base.strip()
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}_{n + 1}")
    return out


def sample_sequence_names(sample_collection, folder_safe: bool = False) -> tuple[list, list, list[str]]:
    """(ids, filepaths, :func:`sequence_names`) of the samples of ``sample_collection`` (the
    ``sequence`` sample field is used when the dataset has one)."""
    has_sequence = "sequence" in root_dataset(sample_collection).get_field_schema()
    values = sample_collection.values(["id", "filepath"] + (["sequence"] if has_sequence else []))
    names = sequence_names(values[0], values[1], values[2] if has_sequence else None, folder_safe)
    return values[0], values[1], names
