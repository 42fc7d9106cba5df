"""CVAT video XML ``<mask>`` shapes into a FiftyOne dataset: FiftyOne's CVAT video importer reads
boxes, polygons, polylines and points of a track and drops its masks; :func:`import_cvat_masks`
adds them to the already-imported dataset as instance masks.

CVAT's video XML ("CVAT for video 1.1") writes a mask as a track shape::

    <track id="3" label="person" source="manual">
      <mask frame="4" keyframe="1" outside="0" occluded="0" rle="5, 3, 2, ..." left="10" top="20"
            width="30" height="40" z_order="0"/>
      <mask frame="5" keyframe="1" outside="1" ... />   (the track ends: the object is gone)
    </track>

``frame`` is 0-based (FiftyOne's frame numbers are 1-based: frame + 1). ``rle`` holds run
lengths over the ``width`` x ``height`` crop at (``left``, ``top``), read row by row, starting
with a run of background (0 when the crop starts on the object); the runs add up to
``width * height``. CVAT exports each mask as its own track (its keyframe, then an ``outside``
shape) and imports mask tracks as single shapes; every shape that is not ``outside`` is taken
here, with its ``keyframe`` flag.
"""
from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ElementTree
from typing import Any, Optional

import numpy as np

import fiftyone as fo

from ..fields import frame_field_name, frame_size, root_dataset

__all__ = ["CVATMaskError", "CVATMask", "decode_cvat_rle", "read_cvat_masks", "import_cvat_masks"]


class CVATMaskError(ValueError):
    """A ``<mask>`` shape (or the file) that cannot be imported; the message names the file, the
    track and the frame."""


@dataclasses.dataclass
class CVATMask:
    """One ``<mask>`` shape of a track: 0-based ``frame``, its crop (``left``, ``top``) and the
    decoded boolean ``mask`` (height, width) of that crop."""

    track_id: int
    label: str
    frame: int
    left: int
    top: int
    mask: np.ndarray
    keyframe: bool
    occluded: bool
    attributes: dict


def decode_cvat_rle(counts: list[int], width: int, height: int) -> np.ndarray:
    """CVAT's mask run lengths (background first, row by row) -> boolean (height, width).
    ValueError when they do not cover exactly ``width * height`` pixels or one is negative."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size and counts.min() < 0:
        raise ValueError("a run length is negative")
    if int(counts.sum()) != width * height:
        raise ValueError(f"the run lengths add up to {int(counts.sum())} pixels, not width x height = "
                         f"{width} x {height} = {width * height}")
    values = np.arange(counts.size) % 2 == 1  # runs alternate background, object, background, ...
    return np.repeat(values, counts).reshape(height, width)


def _parse_value(text: Optional[str]) -> Any:
    """An attribute's text as FiftyOne's CVAT importer reads it: int, float, bool, else text."""
    text = text or ""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _int_attribute(element, name: str, where: str) -> int:
    try:
        return int(element.attrib[name])
    except KeyError:
        raise CVATMaskError(f"{where}: the <mask> has no '{name}' attribute") from None
    except ValueError:
        raise CVATMaskError(f"{where}: '{name}' must be an integer, got {element.attrib[name]!r}") from None


def _parse_mask(element, track, path: str) -> Optional[CVATMask]:
    """One ``<mask>`` element of ``track``; None when it is ``outside`` (the object is gone)."""
    track_id = track.attrib.get("id")
    where = f"{path}: track {track_id} ({track.attrib.get('label')!r})"
    frame = _int_attribute(element, "frame", where)
    where += f", frame {frame} (FiftyOne frame {frame + 1})"
    if element.attrib.get("outside", "0") == "1":
        return None
    left, top, width, height = (_int_attribute(element, name, where) for name in ("left", "top", "width", "height"))
    if frame < 0 or left < 0 or top < 0 or width < 1 or height < 1:
        raise CVATMaskError(f"{where}: frame, left and top must be >= 0 and width, height >= 1, got frame={frame}, "
                            f"left={left}, top={top}, width={width}, height={height}")
    try:
        counts = [int(v) for v in element.attrib.get("rle", "").split(",") if v.strip()]
        mask = decode_cvat_rle(counts, width, height)
    except ValueError as err:
        raise CVATMaskError(f"{where}: bad rle: {err}") from None
    attributes = {a.attrib.get("name", ""): _parse_value(a.text) for a in element.findall("attribute")}
    return CVATMask(int(track_id), track.attrib.get("label") or "", frame, left, top, mask,
                    element.attrib.get("keyframe", "0") == "1", element.attrib.get("occluded", "0") == "1",
                    {k: v for k, v in attributes.items() if k})


def read_cvat_masks(xml_path: str) -> list[CVATMask]:
    """Every ``<mask>`` shape of the tracks of a CVAT video XML that is not ``outside``, validated
    (:class:`CVATMaskError` naming the file, track and frame)."""
    path = os.fspath(xml_path)
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as err:
        raise CVATMaskError(f"{path}: cannot read the CVAT XML: {err}") from None
    masks = []
    for track in root.iter("track"):
        try:
            int(track.attrib.get("id", ""))
        except ValueError:
            raise CVATMaskError(f"{path}: a <track> needs an integer id, got {track.attrib.get('id')!r}") from None
        masks.extend(m for m in (_parse_mask(e, track, path) for e in track.findall("mask")) if m is not None)
    return masks


def _check_fits(masks: list[CVATMask], path: str, height: int, width: int, frame_count: Optional[int]) -> None:
    for m in masks:
        where = f"{path}: track {m.track_id} ({m.label!r}), frame {m.frame} (FiftyOne frame {m.frame + 1})"
        h, w = m.mask.shape
        if m.left + w > width or m.top + h > height:
            raise CVATMaskError(f"{where}: the mask (left={m.left}, top={m.top}, width={w}, height={h}) leaves the "
                                f"{width}x{height} video frame")
        if frame_count and m.frame >= frame_count:
            raise CVATMaskError(f"{where}: the video has {frame_count} frames")


def _detection(m: CVATMask, height: int, width: int) -> fo.Detection:
    h, w = m.mask.shape
    detection = fo.Detection(label=m.label, bounding_box=[m.left / width, m.top / height, w / width, h / height],
                             mask=m.mask.copy(), index=m.track_id, keyframe=m.keyframe, **m.attributes)
    if m.occluded:
        detection["occluded"] = True
    return detection


def _xml_files(xml_path: str) -> list[str]:
    """``xml_path`` itself, or the XML files of a folder (its ``labels/`` subfolder when it is a
    FiftyOne ``CVATVideoDataset`` folder)."""
    path = os.fspath(xml_path)
    if not os.path.isdir(path):
        if not os.path.isfile(path):
            raise CVATMaskError(f"{path}: no such file or folder")
        return [path]
    folder = os.path.join(path, "labels") if os.path.isdir(os.path.join(path, "labels")) else path
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(".xml"))
    if not files:
        raise CVATMaskError(f"{folder}: no .xml file in the folder")
    return files


def _sample_for(path: str, rows: list[tuple], sample_id: Optional[str]) -> tuple:
    """The (id, filepath, metadata) row an XML belongs to: ``sample_id``, else the video whose
    file name (without extension) is the XML's, as FiftyOne's CVAT video importer pairs them."""
    if sample_id is not None:
        found = [row for row in rows if row[0] == str(sample_id)]
        if not found:
            raise CVATMaskError(f"{path}: sample {sample_id} is not in the collection")
        return found[0]
    stem = os.path.splitext(os.path.basename(path))[0]
    found = [row for row in rows if os.path.splitext(os.path.basename(row[1]))[0] == stem]
    if len(found) != 1:
        what = "no video" if not found else f"{len(found)} videos"
        raise CVATMaskError(f"{path}: {what} of the collection named '{stem}.*' (pass sample_id to choose one)")
    return found[0]


def _merged(existing: Optional[fo.Detections], new: list[fo.Detection]) -> fo.Detections:
    """``existing`` without the detections whose ``index`` an imported mask has, plus ``new``."""
    replaced = {d.index for d in new}
    kept = [d for d in (existing.detections if existing is not None else []) if d.index not in replaced]
    return fo.Detections(detections=kept + new)


def _check_label_field(dataset: fo.Dataset, label_field: str) -> None:
    field = dataset.get_frame_field_schema().get(label_field)
    kind = getattr(field, "document_type", None)
    if field is not None and kind is not fo.Detections:
        raise CVATMaskError(f"frame field '{label_field}' of dataset '{dataset.name}' holds "
                            f"{getattr(kind, '__name__', type(field).__name__)}, not Detections; choose another field")


def import_cvat_masks(sample_collection, xml_path, label_field: str, sample_id: Optional[str] = None) -> dict:
    """Add the ``<mask>`` track shapes of CVAT video XML(s) to the frames of their videos in
    ``sample_collection`` as ``fo.Detection`` s with bbox-relative instance masks, ``index`` =
    track id, ``label`` = the track's label, ``keyframe`` = the shape's flag (and its
    ``<attribute>`` s), in the frame field ``label_field`` (``fo.Detections``; created if missing;
    a frame's existing detections with the same ``index`` are replaced, the others kept).

    ``xml_path``: one XML, a folder of them, or a ``CVATVideoDataset`` folder (``labels/``);
    each XML goes to the video with its file name (or to ``sample_id``). Everything is read and
    validated first (:class:`CVATMaskError` naming the file, track and frame); then the frames
    are written in one bulk write. Returns ``dict(samples=..., masks=..., frames=...)``.
    """
    dataset = root_dataset(sample_collection)
    if dataset.media_type != "video":
        raise CVATMaskError(f"dataset '{dataset.name}' holds {dataset.media_type}s; CVAT video masks need videos")
    label_field = frame_field_name(label_field, "label_field")
    _check_label_field(dataset, label_field)
    rows = list(zip(*sample_collection.values(["id", "filepath", "metadata"]))) or []
    by_sample: dict[str, dict[int, list]] = {}
    for path in _xml_files(xml_path):
        sid, filepath, metadata = _sample_for(path, rows, sample_id)
        height, width = frame_size(sid, filepath, metadata)
        masks = read_cvat_masks(path)
        _check_fits(masks, path, height, width, getattr(metadata, "total_frame_count", None))
        frames = by_sample.setdefault(sid, {})
        for m in masks:
            frames.setdefault(m.frame + 1, []).append(_detection(m, height, width))
    values = {}
    for sid, frames in by_sample.items():
        numbers, existing = dataset.select(sid).values(["frames.frame_number", f"frames.{label_field}"]) \
            if label_field in dataset.get_frame_field_schema() else ([[]], [[]])
        old = dict(zip(numbers[0] or [], existing[0] or []))
        values[sid] = {n: _merged(old.get(n), new) for n, new in frames.items()}
    if values:
        dataset.set_values(f"frames.{label_field}", values, key_field="id")
    return dict(samples=len(values), masks=sum(len(v) for f in by_sample.values() for v in f.values()),
                frames=sum(len(v) for v in values.values()))
