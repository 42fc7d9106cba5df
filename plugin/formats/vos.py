"""DAVIS and YouTube-VOS folders to and from FiftyOne video datasets.

Layouts (``<seq>`` = one video):

* DAVIS: ``JPEGImages/<seq>/00000.jpg ...`` (every frame, numbered from 0, zero-padded to one
  width) and ``Annotations/<seq>/00000.png ...`` (palette PNGs, pixel value = object id,
  0 = background, 255 = void: pixels left out of the ground truth, not an object).
  The official release nests both under a resolution folder (``JPEGImages/480p/<seq>``);
  :func:`import_vos` finds it (``resolution``), :func:`export_vos` writes the flat layout.
* YouTube-VOS: ``JPEGImages/<seq>/*.jpg``, ``Annotations/<seq>/*.png`` (palette PNGs, only the
  annotated frames, named as their JPEG) and ``meta.json``:
  ``{"videos": {<seq>: {"objects": {"<id>": {"category": str, "frames": [names]}}}}}``
  (``frames``: the annotated frames where the object is present).

Export: every frame of each video is decoded with decord and written as JPEG (frame number n ->
``%05d.jpg`` of n - 1); every frame whose label field is set becomes a PNG (an empty label gives
an all-zero PNG), the pixel value being the object's ``index`` (see ``deaot_vos.label_frames``; objects
without an index get the propagation's identity rule). Sequence names: the sample field
``sequence`` when the dataset has it and it is set (``import_vos`` sets it), else the video's file
name. A sequence name must be one safe folder name (not empty, ``.`` or ``..``, no ``/``, ``\\``
or NUL), on export and on import (:func:`check_sequence_name`). In the DAVIS layout the ids are
1..254 (255 would come back as void).

Import: each sequence's JPEGs (in the order of the numbers in their names: ``2.jpg`` before
``10.jpg``, as text otherwise) become an H.264 MP4 (frame i + 1 = i-th JPEG; the
imageio-ffmpeg binary, as the demo), each PNG a frame label on the frame of the JPEG with the same
name: ``fo.Detections`` with instance masks (``index`` = id, ``label`` = the YouTube-VOS category
or the id) or ``fo.Segmentation`` label maps. DAVIS void pixels (255) become background (0),
which is exactly how the official DAVIS 2017 semi-supervised evaluation scores them (it passes no
void mask to J and F); YouTube-VOS has no void label, 255 stays an object there. Annotations
must be lossless: a JPEG annotation (by its content, whatever its name) is refused, since its
compression noise would turn each object edge into dozens of spurious ids. Export -> import gives
identical id maps on every annotated frame.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import cv2
import numpy as np

import fiftyone as fo

from ..consistent_reads import read_consistently
from ..fields import (check_label_field, check_sequence_name, describe_sample, frame_field_name, mask_targets_for,
                      root_dataset, sample_sequence_names)
from ..label_frames import id_map_to_detections, read_id_maps
from ..overwrite import NeedsOverwrite
from ..video_io import VideoReader, open_video, video_metadata, write_mp4

__all__ = ["LAYOUTS", "LABEL_TYPES", "VOSFormatError", "davis_palette", "write_annotation", "read_annotation",
           "check_sequence_name", "export_vos", "import_vos", "detect_layout", "detect_resolution", "list_sequences",
           "frame_order_key"]

log = logging.getLogger(__name__)

LAYOUTS = ("davis", "youtube")
LABEL_TYPES = ("detections", "segmentation")
RESOLUTIONS = ("480p", "Full-Resolution", "1080p")
DAVIS_VOID = 255  # DAVIS annotations: pixels excluded from the ground truth (not an object)
LOSSY_FORMATS = ("JPEG", "MPO")  # PIL formats whose pixels are not exact: never id maps

ProgressCallback = Callable[[float, str], Optional[bool]]  # reports only (no cancel)


class PathExistsError(NeedsOverwrite, FileExistsError):
    """A sequence folder or video to be written exists and ``overwrite`` is False (``.field``: the path)."""


class DatasetExistsError(NeedsOverwrite, ValueError):
    """The dataset to be created exists and ``overwrite`` is False (``.field``: its name)."""


class VOSFormatError(ValueError):
    """A folder that is not a valid DAVIS / YouTube-VOS layout (the message names the file)."""


def davis_palette() -> np.ndarray:
    """The DAVIS / YouTube-VOS palette (PASCAL VOC colour map): (256, 3) uint8."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def write_annotation(path: str | Path, id_map: np.ndarray) -> None:
    """Palette PNG of an (H, W) id map (ids 0..255)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(id_map, dtype=np.uint8), mode="P")
    image.putpalette(davis_palette().tobytes())
    image.save(path)


def _lossy_message(path, what: str = "annotation") -> str:
    return (f"{path}: this {what} is a JPEG image; JPEG is lossy, so the compression noise around every edge "
            f"would become dozens of spurious object ids. Save id maps as PNG (palette or grayscale, pixel "
            f"value = object id)")


def read_annotation(path: str | Path) -> np.ndarray:
    """(H, W) uint8 ids of a palette (or grayscale) PNG annotation.

    A JPEG file (by its content, whatever its name) is refused with :class:`VOSFormatError`: lossy
    compression changes pixel values, so a JPEG cannot hold an id map."""
    from PIL import Image

    with Image.open(path) as image:
        if image.format in LOSSY_FORMATS:
            raise VOSFormatError(_lossy_message(path))
        if image.mode not in ("P", "L", "1", "I;16", "I"):
            raise VOSFormatError(f"{path}: annotation is a {image.mode} image; DAVIS/YouTube-VOS annotations are "
                                 f"palette PNGs whose pixel values are object ids")
        ids = np.array(image)
    if ids.dtype == bool:
        ids = ids.astype(np.uint8)
    if ids.size and int(ids.max()) > 255:
        raise VOSFormatError(f"{path}: ids above 255")
    return ids.astype(np.uint8)


# --------------------------------------------------------------------------- export


def export_vos(sample_collection, export_dir: str | Path, label_field: str, layout: str = "davis",
               overwrite: bool = False, jpeg_quality: int = 95,
               progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Write the videos of ``sample_collection`` and the masks of ``label_field`` (a frame field of
    Detections with instance masks, Segmentation or Polylines) as a DAVIS or YouTube-VOS folder.

    Every label is read and checked (ids 1..255, 1..254 in the DAVIS layout where 255 is void; no
    label beyond the video's last frame; every sequence name a single safe folder name) before
    anything is written. Existing sequence folders are refused unless ``overwrite`` (they are then
    replaced; ``meta.json`` is updated, keeping other sequences). Files are written to a staging
    folder inside ``export_dir`` and moved into place only after every sequence is written, so an
    error or a cancel (an exception from ``progress``) leaves ``export_dir`` as it was. A propagation
    in another process that replaces ``label_field`` while it is read makes the export read it again
    (:mod:`deaot_vos.consistent_reads`): every video is exported from one version of the field.

    Returns ``{"layout", "export_dir", "sequences": {name: {"sample_id", "frames", "annotated",
    "objects"}}}``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    dataset = root_dataset(sample_collection)
    label_field, _ = check_label_field(sample_collection, label_field, "label_field")
    targets = mask_targets_for(dataset, label_field)
    export_dir = Path(export_dir)
    ids, paths, names = sample_sequence_names(sample_collection, folder_safe=True)
    counts = sample_collection.values("metadata.total_frame_count")
    for name in names:
        for sub in ("JPEGImages", "Annotations"):
            if (export_dir / sub / name).exists() and not overwrite:
                raise PathExistsError(f"{export_dir / sub / name} already exists", field=str(export_dir / sub / name))
    # read and check every label first: nothing is written for bad input
    plans = read_consistently(dataset, [label_field], lambda: [
        _plan_export(sample_collection, sid, path, count, name, label_field, targets, layout)
        for sid, path, count, name in zip(ids, paths, counts, names)])
    summary = _write_export(plans, export_dir, layout, jpeg_quality, progress)
    if progress is not None:
        progress(1.0, "done")
    return summary


def _plan_export(sample_collection, sid: str, path: str, count, name: str, label_field: str, targets,
                 layout: str) -> tuple:
    """(sample_id, filepath, name, reader, id maps) of one video, its labels read and checked:
    ids within the layout's range, no label beyond the video's last frame."""
    reader = open_video(path, count)
    maps = read_id_maps(sample_collection, sid, path, label_field, reader.height, reader.width, targets,
                        require_index=False, what="label_field")
    top = DAVIS_VOID - 1 if layout == "davis" else 255
    for number in maps.frames:
        m = maps.maps[number]
        if m.size and (int(m.max()) > top or int(m.min()) < 0):
            bad = sorted(int(v) for v in np.unique(m) if v > top or v < 0)
            why = ("DAVIS PNGs hold ids 0..254 (255 marks void pixels, read back as no object; renumber the "
                   "object or use layout='youtube')" if layout == "davis" and bad[-1] == DAVIS_VOID
                   else f"{layout} PNGs hold ids 0..{top}")
            raise ValueError(f"{describe_sample(sid, path)}: frame {number} of '{label_field}' has object "
                             f"index(es) {bad[:5]}; {why}")
    beyond = [n for n in maps.frames if n > reader.num_frames]
    if beyond:
        raise ValueError(f"{describe_sample(sid, path)}: '{label_field}' is set on frame(s) {beyond[:5]} beyond "
                         f"the video's {reader.num_frames} frames; the export would lose them")
    return sid, path, name, reader, maps


def _write_export(plans: list[tuple], export_dir: Path, layout: str, jpeg_quality: int,
                  progress: ProgressCallback | None) -> dict[str, Any]:
    """Write the planned sequences to a staging folder inside ``export_dir``, then move them into
    place (a decode error or a cancel leaves the export folder as it was); returns the summary."""
    meta_path = export_dir / "meta.json"
    meta = {"videos": {}}
    if layout == "youtube" and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        meta.setdefault("videos", {})
    summary: dict[str, Any] = dict(layout=layout, export_dir=str(export_dir), sequences={})
    total = len(plans)
    export_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".deaot_export_", dir=export_dir))
    try:
        for i, (sid, _, name, reader, maps) in enumerate(plans):
            if progress is not None:
                progress(i / max(total, 1), f"[{i + 1}/{total}] {name}")
            objects = _write_sequence(staging, name, reader, maps, jpeg_quality)
            if layout == "youtube":
                meta["videos"][name] = {"objects": dict(sorted(objects.items(), key=lambda kv: int(kv[0])))}
            summary["sequences"][name] = dict(sample_id=str(sid), frames=reader.num_frames,
                                              annotated=len(maps.frames), objects=sorted(int(k) for k in objects))
        if layout == "youtube":
            (staging / "meta.json").write_text(json.dumps(meta, indent=1))
        _commit_export(staging, export_dir, [plan[2] for plan in plans], layout == "youtube")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _write_sequence(staging: Path, name: str, reader, maps, jpeg_quality: int) -> dict[str, dict[str, Any]]:
    """Every frame as JPEG and every annotated frame as palette PNG under ``staging``; returns the
    YouTube-VOS ``objects`` entry (index -> category and the frames where the object is present)."""
    jpeg_dir, ann_dir = staging / "JPEGImages" / name, staging / "Annotations" / name
    for folder in (jpeg_dir, ann_dir):
        folder.mkdir(parents=True)
    for number, frame in reader.forward(1):
        cv2.imwrite(str(jpeg_dir / f"{number - 1:05d}.jpg"), np.ascontiguousarray(frame[:, :, ::-1]),
                    [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    objects: dict[str, dict[str, Any]] = {}
    for number in maps.frames:
        m = maps.maps[number]
        stem = f"{number - 1:05d}"
        write_annotation(ann_dir / f"{stem}.png", m)
        for index in (int(v) for v in np.unique(m) if v != 0):
            entry = objects.setdefault(str(index), {"category": maps.labels.get(index) or str(index), "frames": []})
            entry["frames"].append(stem)
    return objects


def _commit_export(staging: Path, export_dir: Path, names: list[str], with_meta: bool) -> None:
    """Move the staged sequence folders (and ``meta.json``) into ``export_dir``, replacing old ones."""
    replaced = staging / "replaced"
    for sub in ("JPEGImages", "Annotations"):
        (export_dir / sub).mkdir(parents=True, exist_ok=True)
        (replaced / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            target = export_dir / sub / name
            if target.exists():
                os.replace(target, replaced / sub / name)
            os.replace(staging / sub / name, target)
    if with_meta:
        os.replace(staging / "meta.json", export_dir / "meta.json")


# --------------------------------------------------------------------------- import


def detect_resolution(dataset_dir: str | Path) -> str | None:
    """The resolution folder of an official DAVIS release (``JPEGImages/480p/<seq>/...``), if any."""
    base = Path(dataset_dir) / "JPEGImages"
    for res in RESOLUTIONS:
        if (base / res).is_dir() and any((base / res).glob("*/*.jpg")):
            return res
    return None


def _image_root(root: Path, sub: str, resolution: str | None) -> Path:
    return root / sub / resolution if resolution else root / sub


def detect_layout(dataset_dir: str | Path) -> str:
    """``youtube`` when the folder has a ``meta.json``, else ``davis``."""
    return "youtube" if (Path(dataset_dir) / "meta.json").is_file() else "davis"


def _encode_mp4(frames: Iterable[np.ndarray], path: Path, fps: float) -> str:
    """H.264 MP4 of the frames at their exact size, near-lossless (masks must stay aligned)."""
    return write_mp4(frames, path, fps=fps, crf=18, preset="fast", exact_size=True)


def _read_jpeg(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise VOSFormatError(f"cannot read image {path}")
    return image[:, :, ::-1]


def _image_header(path: Path, where: str = "") -> tuple[str, tuple[int, int], str | None]:
    """(PIL mode, (height, width), PIL format) of an image, from its header only. An image whose
    header declares more pixels than PIL's ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb: a
    small file that would decode to gigabytes) is refused, where PIL would only warn up to twice
    the limit. ``where`` (e.g. ``sequence 'cat', frame 3``) is added to the error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.mode, (image.height, image.width), image.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise VOSFormatError(f"{path}{f' ({where})' if where else ''}: refused, the image declares more pixels than "
                             f"PIL's decompression-bomb limit Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} "
                             f"({err})") from err
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise VOSFormatError(f"{path}: not a readable image ({err})") from err


def _load_annotation(path: Path, height: int, width: int) -> np.ndarray:
    """:func:`read_annotation` plus the frame-size check; decoding errors become ``VOSFormatError``."""
    try:
        ids = read_annotation(path)
    except VOSFormatError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        raise VOSFormatError(f"{path}: cannot decode the PNG ({err})") from err
    if ids.shape != (height, width):
        raise VOSFormatError(f"{path}: {ids.shape[1]}x{ids.shape[0]}, the sequence's frames are {width}x{height}")
    return ids


def list_sequences(dataset_dir: str | Path, resolution: str | None = None) -> list[str]:
    """Sorted names of the folders of ``JPEGImages`` that hold ``.jpg`` frames."""
    root = _image_root(Path(dataset_dir), "JPEGImages", resolution or detect_resolution(dataset_dir))
    if not root.is_dir():
        raise VOSFormatError(f"{root} does not exist: not a DAVIS/YouTube-VOS folder")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.jpg")))


def _read_meta(dataset_dir: Path) -> dict[str, Any]:
    """``videos`` of a YouTube-VOS ``meta.json`` (checked)."""
    meta_path = dataset_dir / "meta.json"
    if not meta_path.is_file():
        raise VOSFormatError(f"{meta_path} is missing (YouTube-VOS layout)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VOSFormatError(f"{meta_path}: not valid JSON ({err})") from err
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict):
        raise VOSFormatError(f"{meta_path}: expected {{\"videos\": {{<sequence>: {{\"objects\": ...}}}}}}")
    return videos


def _categories(meta: dict[str, Any], name: str, meta_path: Path) -> dict[int, str | None]:
    objects = (meta.get(name) or {}).get("objects") or {}
    if not isinstance(objects, dict):
        raise VOSFormatError(f"{meta_path}: videos.{name}.objects must be a mapping of object ids")
    out = {}
    for key, obj in objects.items():
        try:
            index = int(key)
        except ValueError as err:
            raise VOSFormatError(f"{meta_path}: videos.{name}.objects has the key {key!r}, not an object id") from err
        out[index] = obj.get("category") if isinstance(obj, dict) else None
    return out


def frame_order_key(stem: str) -> tuple:
    """Sort key of a frame name: the numbers in it compare as numbers (``2`` before ``10``, ``00005``
    beside ``5``), the rest as text; ties are broken by the name itself."""
    parts = re.split(r"(\d+)", stem)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), stem


def _check_frame_names(folder: Path, stems: list[str], layout: str) -> None:
    """Frame names (``stems``, in frame order) that cannot be ordered or, in the DAVIS layout, are
    not consecutive zero-padded numbers: ``VOSFormatError`` naming a few of them."""
    if not all(s.isdigit() for s in stems):
        return
    by_number: dict[int, list[str]] = {}
    for s in stems:
        by_number.setdefault(int(s), []).append(f"{s}.jpg")
    same = [names for names in by_number.values() if len(names) > 1]
    if same:
        raise VOSFormatError(f"{folder}: {same[0]} have the same frame number (their order is ambiguous); "
                             f"{len(same)} such group(s); keep one file per frame")
    if layout != "davis":
        return
    width = max(len(s) for s in stems)
    short = [f"{s}.jpg" for s in stems if len(s) != width]
    if short:
        example = short[min(5, len(short) - 1)]
        raise VOSFormatError(
            f"{folder}: the frame names are not zero-padded to one width: {len(short)} of {len(stems)} have "
            f"fewer than {width} digits ({short[:5]}{' ...' if len(short) > 5 else ''}). DAVIS frames are "
            f"consecutive numbers of one width (00000.jpg, 00001.jpg, ...); rename them (e.g. {example} -> "
            f"{int(example[:-4]):0{width}d}.jpg, and the PNGs alike), or import with layout='youtube' (a "
            f"meta.json, e.g. {{\"videos\": {{}}}}), which orders frames by the number in their names")
    first, last = int(stems[0]), int(stems[-1])
    if last - first + 1 != len(stems):
        present = set(by_number)
        missing = [f"{n:0{width}d}.jpg" for n in range(first, last + 1) if n not in present]
        raise VOSFormatError(f"{folder}: {len(stems)} frames numbered {stems[0]}..{stems[-1]}, missing "
                             f"{missing[:5]}{' ...' if len(missing) > 5 else ''} (DAVIS sequences hold every "
                             f"frame)")


def _plan_sequence(name: str, jpeg_root: Path, ann_root: Path, layout: str) -> tuple[list[Path], dict[str, int],
                                                                                     list[Path], tuple[int, int]]:
    """Check one sequence's folders and image headers; (jpegs, stem -> frame number, pngs, (H, W))."""
    folder = jpeg_root / name
    if not folder.is_dir():
        raise VOSFormatError(f"no sequence '{name}': {folder} does not exist")
    jpegs = sorted(folder.glob("*.jpg"), key=lambda p: frame_order_key(p.stem))
    if not jpegs:
        raise VOSFormatError(f"{folder}: no .jpg frames")
    stems = [p.stem for p in jpegs]
    _check_frame_names(folder, stems, layout)
    numbers = {stem: i + 1 for i, stem in enumerate(stems)}
    ann_folder = ann_root / name
    if not ann_folder.is_dir():
        raise VOSFormatError(f"sequence '{name}': annotation folder {ann_folder} does not exist")
    pngs = sorted(ann_folder.glob("*.png"), key=lambda p: frame_order_key(p.stem))
    # a JPEG annotation is lossy (refused); one beside its PNG is a preview (ignored)
    png_stems = {p.stem for p in pngs}
    lossy = sorted((p for p in ann_folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file()),
                   key=lambda p: frame_order_key(p.stem))
    alone = [p for p in lossy if p.stem not in png_stems]
    if alone:
        raise VOSFormatError(_lossy_message(alone[0]) + f" ({len(alone)} JPEG annotation(s) without a PNG in "
                                                        f"{ann_folder})")
    if lossy:
        log.warning("sequence %s: ignoring %d JPEG file(s) beside the PNG annotations of the same name in %s",
                    name, len(lossy), ann_folder)
    if not pngs:
        log.warning("sequence %s has no annotation in %s", name, ann_folder)
    mode, size, _ = _image_header(jpegs[0], f"sequence '{name}', frame 1")
    for path in jpegs[1:]:
        _, other, _ = _image_header(path, f"sequence '{name}', frame {numbers[path.stem]}")
        if other != size:
            raise VOSFormatError(f"{path}: {other[1]}x{other[0]}, the sequence's first frame is {size[1]}x{size[0]}")
    for png in pngs:
        if png.stem not in numbers:
            raise VOSFormatError(f"{png}: no frame {png.stem}.jpg in {folder} (annotations and frames do not match: "
                                 f"{len(pngs)} PNGs, {len(jpegs)} JPEGs)")
        mode, other, fmt = _image_header(png, f"sequence '{name}', annotation of frame {numbers[png.stem]}")
        if fmt in LOSSY_FORMATS:
            raise VOSFormatError(_lossy_message(png))
        if mode not in ("P", "L", "1", "I;16", "I"):
            raise VOSFormatError(f"{png}: annotation is a {mode} image; DAVIS/YouTube-VOS annotations are palette "
                                 f"PNGs whose pixel values are object ids")
        if other != size:
            raise VOSFormatError(f"{png}: {other[1]}x{other[0]}, the sequence's frames are {size[1]}x{size[0]}")
    return jpegs, numbers, pngs, size


def import_vos(dataset_dir: str | Path, dataset=None, label_field: str = "ground_truth", layout: str = "auto",
               label_type: str = "detections", video_dir: str | Path | None = None, fps: float = 24.0,
               sequences: Iterable[str] | None = None, resolution: str | None = None, overwrite: bool = False,
               persistent: bool = False, progress: ProgressCallback | None = None):
    """Load a DAVIS or YouTube-VOS folder into a FiftyOne video dataset (see the module docstring).

    Every folder, image header and annotation is checked, and the MP4s are written to a staging
    folder, before anything visible changes: on any error (``VOSFormatError`` naming the file)
    no dataset is created or replaced and no video is left behind.

    Frames are ordered by the number in their names (``0.jpg, 1.jpg, ..., 10.jpg``); the DAVIS
    layout also requires consecutive names zero-padded to one width (``00000.jpg``...). A JPEG
    annotation (lossy: its noise would become spurious objects) is refused; PNGs only. So is an
    image whose header declares more pixels than PIL's ``Image.MAX_IMAGE_PIXELS`` (a decompression
    bomb), naming the file, the sequence and the frame. DAVIS void pixels (255) are imported as
    background, not as an object (the official semi-supervised evaluation scores them so);
    ``info["vos_import"][-1]["void_frames"]`` counts the annotations that had some.

    Args:
        dataset_dir: the folder holding ``JPEGImages``, ``Annotations`` (and ``meta.json``)
        dataset: an existing ``fo.Dataset`` to add to, or the name of a new one (default: the
            folder's name); an existing name is refused unless ``overwrite`` (then replaced)
        label_field: frame field for the masks
        layout: ``auto`` (``meta.json`` -> youtube), ``davis`` or ``youtube``
        label_type: ``detections`` (instance masks) or ``segmentation`` (label maps)
        video_dir: where the MP4s go (default ``<fo default dataset dir>/<name>/videos``); an
            existing ``<seq>.mp4`` there is refused unless ``overwrite``
        fps: frame rate of the MP4s
        sequences: only these sequences (default all, sorted); each must be a single folder name
            (``ValueError`` for ``..``, ``a/b``...: see :func:`check_sequence_name`)
        resolution: DAVIS resolution folder (``480p``...), found automatically
        persistent: make a new dataset persistent

    Returns:
        the ``fo.Dataset``; each sample has the field ``sequence``
    """
    dataset_dir = Path(dataset_dir)
    label_field = _check_import_arguments(dataset_dir, label_field, layout, label_type)
    layout, plans = _plan_import(dataset_dir, layout, sequences, resolution)
    wanted = fo.Detections if label_type == "detections" else fo.Segmentation
    target, name_for_dir = _import_target(dataset, dataset_dir, label_field, wanted, overwrite)
    video_dir = Path(video_dir) if video_dir else Path(fo.config.default_dataset_dir) / name_for_dir / "videos"
    taken = [str(video_dir / f"{p[0]}.mp4") for p in plans if (video_dir / f"{p[0]}.mp4").exists()]
    if taken and not overwrite:
        raise PathExistsError(f"{taken[0]} already exists ({len(taken)} video(s))", field=taken[0])
    # encode the videos into a staging folder and read every annotation, then publish
    video_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-vos-", dir=video_dir))
    samples, void_frames = [], 0
    try:
        for i, plan in enumerate(plans):
            if progress is not None:
                progress(i / max(len(plans), 1), f"[{i + 1}/{len(plans)}] {plan[0]}")
            sample, voids = _stage_sequence(plan, staging, video_dir, layout, label_type, label_field, fps)
            samples.append(sample)
            void_frames += voids
        target = _publish_import(target, name_for_dir, persistent, samples, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if samples:
        target.add_samples(samples)
    if void_frames:
        log.info("%d annotation(s) have DAVIS void pixels (255): imported as background", void_frames)
    target.info.setdefault("vos_import", []).append(dict(source=str(dataset_dir), layout=layout,
                                                          label_field=label_field, sequences=len(samples),
                                                          void_frames=void_frames))
    target.save()
    if progress is not None:
        progress(1.0, "done")
    return target


def _check_import_arguments(dataset_dir: Path, label_field: str, layout: str, label_type: str) -> str:
    """Refuse a missing folder or an unknown layout / label type; returns the normalised label field."""
    if not dataset_dir.is_dir():
        raise VOSFormatError(f"{dataset_dir} is not a folder")
    if layout not in ("auto", *LAYOUTS):
        raise ValueError(f"layout must be auto or one of {LAYOUTS}, got {layout!r}")
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label_type must be one of {LABEL_TYPES}, got {label_type!r}")
    return frame_field_name(label_field, "label_field")


def _plan_import(dataset_dir: Path, layout: str, sequences: Iterable[str] | None, resolution: str | None
                 ) -> tuple[str, list[tuple]]:
    """(layout, one plan per sequence: (name, jpegs, stem -> frame number, pngs, (H, W), categories)),
    every folder and image header checked."""
    resolution = resolution or detect_resolution(dataset_dir)
    if layout == "auto":
        layout = detect_layout(dataset_dir)
    jpeg_root = _image_root(dataset_dir, "JPEGImages", resolution)
    ann_root = _image_root(dataset_dir, "Annotations", resolution)
    if not ann_root.is_dir():
        raise VOSFormatError(f"{ann_root} does not exist: a DAVIS/YouTube-VOS folder has JPEGImages/ and Annotations/")
    names = list(sequences) if sequences is not None else list_sequences(dataset_dir, resolution)
    for name in names:
        check_sequence_name(name, f"{dataset_dir}: ")
    if not names:
        raise VOSFormatError(f"no sequence (folder of .jpg files) in {jpeg_root}")
    if len(set(names)) != len(names):
        raise ValueError(f"sequences listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    meta = _read_meta(dataset_dir) if layout == "youtube" else {}
    meta_path = dataset_dir / "meta.json"
    plans = []
    for name in names:
        jpegs, numbers, pngs, size = _plan_sequence(name, jpeg_root, ann_root, layout)
        plans.append((name, jpegs, numbers, pngs, size, _categories(meta, name, meta_path)))
    return layout, plans


def _import_target(dataset, dataset_dir: Path, label_field: str, wanted: type, overwrite: bool):
    """(the existing ``fo.Dataset`` to add to, or None for a new one; the dataset's name), refusing
    a non-video dataset, a label field of another type or an existing name without ``overwrite``."""
    if isinstance(dataset, fo.Dataset):
        if dataset.media_type not in (None, fo.core.media.VIDEO):
            raise ValueError(f"dataset '{dataset.name}' is not a video dataset")
        existing = (dataset.get_frame_field_schema() or {}).get(label_field) if dataset.media_type else None
        if existing is not None and getattr(existing, "document_type", None) is not wanted:
            raise ValueError(f"dataset '{dataset.name}' already has a frame field '{label_field}' of another type; "
                             f"choose another label_field or label_type")
        return dataset, dataset.name
    name = dataset or dataset_dir.resolve().name
    if fo.dataset_exists(name) and not overwrite:
        raise DatasetExistsError(f"dataset '{name}' already exists", field=name)
    return None, name


def _annotation_labels(pngs: list[Path], numbers: dict[str, int], size: tuple[int, int], categories: dict,
                       layout: str, label_type: str) -> tuple[dict[int, Any], int]:
    """(frame number -> label, number of annotations with DAVIS void pixels) of one sequence."""
    labels, void_frames = {}, 0
    for png in pngs:
        ids = _load_annotation(png, *size)
        if layout == "davis":
            void = ids == DAVIS_VOID
            if void.any():  # not an object: background, as the official evaluation scores it
                ids = np.where(void, 0, ids).astype(np.uint8)
                void_frames += 1
        if label_type == "segmentation":
            labels[numbers[png.stem]] = fo.Segmentation(mask=ids)
        else:
            names_of = {k: categories.get(k) or str(k) for k in np.unique(ids).tolist()}
            labels[numbers[png.stem]] = id_map_to_detections(ids, names_of)
    return labels, void_frames


def _checked_frames(jpegs: list[Path], height: int, width: int) -> Iterator[np.ndarray]:
    for path in jpegs:
        frame = _read_jpeg(path)
        if frame.shape[:2] != (height, width):
            raise VOSFormatError(f"{path}: {frame.shape[1]}x{frame.shape[0]}, the sequence's first frame "
                                 f"is {width}x{height}")
        yield frame


def _stage_sequence(plan: tuple, staging: Path, video_dir: Path, layout: str, label_type: str, label_field: str,
                    fps: float) -> tuple[Any, int]:
    """(the ``fo.Sample`` of one planned sequence, its MP4 encoded into ``staging`` and checked,
    its labels set; the number of its annotations with void pixels)."""
    name, jpegs, numbers, pngs, (height, width), categories = plan
    labels, void_frames = _annotation_labels(pngs, numbers, (height, width), categories, layout, label_type)
    staged = staging / f"{name}.mp4"
    _encode_mp4(_checked_frames(jpegs, height, width), staged, fps)
    reader = VideoReader(str(staged))
    if reader.num_frames != len(jpegs) or (reader.height, reader.width) != (height, width):
        raise VOSFormatError(f"{name}: the MP4 decodes to {reader.num_frames} frames of "
                             f"{reader.width}x{reader.height}, expected {len(jpegs)} of {width}x{height}")
    sample = fo.Sample(filepath=str(video_dir / f"{name}.mp4"), sequence=name)
    sample.metadata = video_metadata(staged)
    for number, label in labels.items():
        sample.frames[number][label_field] = label
    return sample, void_frames


def _publish_import(target, name: str, persistent: bool, samples: list, staging: Path):
    """Replace the old dataset (when ``target`` is None) and move the staged videos into place;
    returns the dataset to add the samples to."""
    if target is None:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
        target = fo.Dataset(name, persistent=persistent)
    for sample in samples:
        os.replace(staging / os.path.basename(sample.filepath), sample.filepath)
    return target
