"""DAVIS and YouTube-VOS folders to and from FiftyOne video datasets.

Layouts (``<seq>`` = one video):

* DAVIS: ``JPEGImages/<seq>/00000.jpg ...`` (every frame, numbered from 0) and
  ``Annotations/<seq>/00000.png ...`` (palette PNGs, pixel value = object id, 0 = background).
  The official release nests both under a resolution folder (``JPEGImages/480p/<seq>``);
  :func:`import_vos` finds it (``resolution``), :func:`export_vos` writes the flat layout.
* YouTube-VOS: ``JPEGImages/<seq>/*.jpg``, ``Annotations/<seq>/*.png`` (palette PNGs, only the
  annotated frames, named as their JPEG) and ``meta.json``:
  ``{"videos": {<seq>: {"objects": {"<id>": {"category": str, "frames": [names]}}}}}``
  (``frames``: the annotated frames where the object is present).

Export: every frame of each video is decoded with decord and written as JPEG (frame number n ->
``%05d.jpg`` of n - 1); every frame whose label field is set becomes a PNG (an empty label gives
an all-zero PNG), the pixel value being the object's ``index`` (see ``plugin.idmaps``; objects
without an index get the propagation's identity rule). Sequence names: the sample field
``sequence`` when the dataset has it (``import_vos`` sets it), else the video's file name.

Import: each sequence's JPEGs (sorted by name) become an H.264 MP4 (frame i + 1 = i-th JPEG; the
imageio-ffmpeg binary, as the demo), each PNG a frame label on the frame of the JPEG with the same
name: ``fo.Detections`` with instance masks (``index`` = id, ``label`` = the YouTube-VOS category
or the id) or ``fo.Segmentation`` label maps. Export -> import gives identical id maps on every
annotated frame.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

from .idmaps import (check_label_field, describe_sample, frame_size, id_map_to_detections, mask_targets_of,
                     read_id_maps, root_dataset)

log = logging.getLogger(__name__)

LAYOUTS = ("davis", "youtube")
LABEL_TYPES = ("detections", "segmentation")
RESOLUTIONS = ("480p", "Full-Resolution", "1080p")

ProgressCallback = Callable[[float, str], Optional[bool]]  # reports only (no cancel)


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


def read_annotation(path: str | Path) -> np.ndarray:
    """(H, W) uint8 ids of a palette (or grayscale) PNG annotation."""
    from PIL import Image

    with Image.open(path) as image:
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


def _names(ids, paths, sequences) -> list[str]:
    out, seen = [], {}
    for sid, path, seq in zip(ids, paths, sequences):
        base = str(seq) if seq else os.path.splitext(os.path.basename(path))[0]
        base = base.replace(os.sep, "_").strip() or str(sid)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}_{n + 1}")
    return out


def export_vos(sample_collection, export_dir: str | Path, label_field: str, layout: str = "davis",
               overwrite: bool = False, jpeg_quality: int = 95,
               progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Write the videos of ``sample_collection`` and the masks of ``label_field`` (a frame field of
    Detections with instance masks, Segmentation or Polylines) as a DAVIS or YouTube-VOS folder.

    Every label is read (and checked: ids must be 1..255) before anything is written. Existing
    sequence folders are refused unless ``overwrite`` (they are then replaced; ``meta.json`` is
    updated, keeping other sequences).

    Returns ``{"layout", "export_dir", "sequences": {name: {"sample_id", "frames", "annotated",
    "objects"}}}``.
    """
    import cv2

    from .video import open_video

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    dataset = root_dataset(sample_collection)
    label_field, _ = check_label_field(sample_collection, label_field, "label_field")
    targets = mask_targets_of(dataset, label_field)
    export_dir = Path(export_dir)
    has_sequence = "sequence" in dataset.get_field_schema()
    columns = ["id", "filepath", "metadata.total_frame_count"] + (["sequence"] if has_sequence else [])
    values = sample_collection.values(columns)
    ids, paths, counts = values[0], values[1], values[2]
    names = _names(ids, paths, values[3] if has_sequence else [None] * len(ids))

    for name in names:
        for sub in ("JPEGImages", "Annotations"):
            if (export_dir / sub / name).exists() and not overwrite:
                raise FileExistsError(f"{export_dir / sub / name} already exists; pass overwrite=True to replace it")

    # read and check every label first: nothing is written for bad input
    plans = []
    for sid, path, count, name in zip(ids, paths, counts, names):
        reader = open_video(path, count)
        maps = read_id_maps(sample_collection, sid, path, label_field, reader.height, reader.width, targets,
                            require_index=False, what="label_field")
        for number in maps.frames:
            m = maps.maps[number]
            if m.size and (int(m.max()) > 255 or int(m.min()) < 0):
                bad = sorted(int(v) for v in np.unique(m) if v > 255 or v < 0)
                raise ValueError(f"{describe_sample(sid, path)}: frame {number} of '{label_field}' has object "
                                 f"index(es) {bad[:5]}; DAVIS/YouTube-VOS PNGs hold ids 0..255")
        beyond = [n for n in maps.frames if n > reader.num_frames]
        if beyond:
            log.warning("%s: labels on frames %s beyond the video's %d frames are not exported",
                        describe_sample(sid, path), beyond[:5], reader.num_frames)
        plans.append((sid, path, name, reader, maps))

    meta_path = export_dir / "meta.json"
    meta = {"videos": {}}
    if layout == "youtube" and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        meta.setdefault("videos", {})
    summary: dict[str, Any] = dict(layout=layout, export_dir=str(export_dir), sequences={})
    total = len(plans)
    for i, (sid, path, name, reader, maps) in enumerate(plans):
        if progress is not None:
            progress(i / max(total, 1), f"[{i + 1}/{total}] {name}")
        jpeg_dir, ann_dir = export_dir / "JPEGImages" / name, export_dir / "Annotations" / name
        for folder in (jpeg_dir, ann_dir):
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
        for number, frame in reader.forward(1):
            cv2.imwrite(str(jpeg_dir / f"{number - 1:05d}.jpg"), np.ascontiguousarray(frame[:, :, ::-1]),
                        [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        objects: dict[str, dict[str, Any]] = {}
        annotated = [n for n in maps.frames if n <= reader.num_frames]
        for number in annotated:
            m = maps.maps[number]
            stem = f"{number - 1:05d}"
            write_annotation(ann_dir / f"{stem}.png", m)
            for index in (int(v) for v in np.unique(m) if v != 0):
                entry = objects.setdefault(str(index), {"category": maps.labels.get(index) or str(index),
                                                        "frames": []})
                entry["frames"].append(stem)
        if layout == "youtube":
            meta["videos"][name] = {"objects": dict(sorted(objects.items(), key=lambda kv: int(kv[0])))}
        summary["sequences"][name] = dict(sample_id=str(sid), frames=reader.num_frames, annotated=len(annotated),
                                          objects=sorted(int(k) for k in objects))
    if layout == "youtube":
        export_dir.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(meta, indent=1))
    if progress is not None:
        progress(1.0, "done")
    return summary


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
    """H.264 MP4 of the frames at their exact size (yuv420p, App-playable; yuv444p for odd sizes,
    which 4:2:0 cannot hold: decodable, maybe not playable in the browser). Returns the codec."""
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    try:
        import imageio_ffmpeg
    except ImportError:
        from .demo import write_video

        return write_video([first, *frames], path, fps=fps)
    pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
    if pix_fmt != "yuv420p":
        log.warning("%s: odd frame size %dx%d, encoding H.264 4:4:4 (the App's browser may not play it)", path,
                    width, height)
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out=pix_fmt,
        macro_block_size=1, quality=None, ffmpeg_log_level="error",
        output_params=["-crf", "18", "-preset", "fast", "-movflags", "+faststart"])
    writer.send(None)
    for frame in [first, *frames]:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return "h264"


def _read_jpeg(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise VOSFormatError(f"cannot read image {path}")
    return image[:, :, ::-1]


def list_sequences(dataset_dir: str | Path, resolution: str | None = None) -> list[str]:
    root = _image_root(Path(dataset_dir), "JPEGImages", resolution or detect_resolution(dataset_dir))
    if not root.is_dir():
        raise VOSFormatError(f"{root} does not exist: not a DAVIS/YouTube-VOS folder")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.jpg")))


def import_vos(dataset_dir: str | Path, dataset=None, label_field: str = "ground_truth", layout: str = "auto",
               label_type: str = "detections", video_dir: str | Path | None = None, fps: float = 24.0,
               sequences: Iterable[str] | None = None, resolution: str | None = None, overwrite: bool = False,
               persistent: bool = False, progress: ProgressCallback | None = None):
    """Load a DAVIS or YouTube-VOS folder into a FiftyOne video dataset (see the module docstring).

    Args:
        dataset_dir: the folder holding ``JPEGImages``, ``Annotations`` (and ``meta.json``)
        dataset: an existing ``fo.Dataset`` to add to, or the name of a new one (default: the
            folder's name); an existing name is refused unless ``overwrite`` (then replaced)
        label_field: frame field for the masks
        layout: ``auto`` (``meta.json`` -> youtube), ``davis`` or ``youtube``
        label_type: ``detections`` (instance masks) or ``segmentation`` (label maps)
        video_dir: where the MP4s go (default ``<fo default dataset dir>/<name>/videos``)
        fps: frame rate of the MP4s
        sequences: only these sequences (default all, sorted)
        resolution: DAVIS resolution folder (``480p``...), found automatically
        persistent: make a new dataset persistent

    Returns:
        the ``fo.Dataset``; each sample has the field ``sequence``
    """
    import fiftyone as fo

    from .demo import video_metadata
    from .video import VideoReader

    dataset_dir = Path(dataset_dir)
    resolution = resolution or detect_resolution(dataset_dir)
    if layout == "auto":
        layout = detect_layout(dataset_dir)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be auto or one of {LAYOUTS}, got {layout!r}")
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label_type must be one of {LABEL_TYPES}, got {label_type!r}")
    jpeg_root = _image_root(dataset_dir, "JPEGImages", resolution)
    ann_root = _image_root(dataset_dir, "Annotations", resolution)
    names = list(sequences) if sequences is not None else list_sequences(dataset_dir, resolution)
    if not names:
        raise VOSFormatError(f"no sequence (folder of .jpg files) in {jpeg_root}")
    meta: dict[str, Any] = {}
    if layout == "youtube":
        meta_path = dataset_dir / "meta.json"
        if not meta_path.is_file():
            raise VOSFormatError(f"{meta_path} is missing (YouTube-VOS layout)")
        meta = json.loads(meta_path.read_text()).get("videos", {})

    # check the folders before creating anything
    plans = []
    for name in names:
        jpegs = sorted((jpeg_root / name).glob("*.jpg"))
        if not jpegs:
            raise VOSFormatError(f"{jpeg_root / name}: no .jpg frames")
        numbers = {p.stem: i + 1 for i, p in enumerate(jpegs)}
        pngs = sorted((ann_root / name).glob("*.png")) if (ann_root / name).is_dir() else []
        for png in pngs:
            if png.stem not in numbers:
                raise VOSFormatError(f"{png}: no frame {png.stem}.jpg in {jpeg_root / name}")
        if not pngs:
            log.warning("sequence %s has no annotation in %s", name, ann_root / name)
        categories = {}
        for key, obj in ((meta.get(name) or {}).get("objects") or {}).items():
            categories[int(key)] = obj.get("category")
        plans.append((name, jpegs, numbers, pngs, categories))

    if isinstance(dataset, fo.Dataset):
        ds = dataset
        if ds.media_type not in (None, fo.core.media.VIDEO):
            raise ValueError(f"dataset '{ds.name}' is not a video dataset")
        name_for_dir = ds.name
    else:
        name_for_dir = dataset or dataset_dir.resolve().name
        if fo.dataset_exists(name_for_dir):
            if not overwrite:
                raise ValueError(f"dataset '{name_for_dir}' already exists; pass overwrite=True to replace it")
            fo.delete_dataset(name_for_dir)
        ds = None
    video_dir = Path(video_dir) if video_dir else Path(fo.config.default_dataset_dir) / name_for_dir / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)

    samples = []
    total = len(plans)
    for i, (name, jpegs, numbers, pngs, categories) in enumerate(plans):
        if progress is not None:
            progress(i / max(total, 1), f"[{i + 1}/{total}] {name}")
        video = video_dir / f"{name}.mp4"
        first = _read_jpeg(jpegs[0])
        height, width = first.shape[:2]

        def frames(_jpegs=jpegs, _first=first):
            yield _first
            for p in _jpegs[1:]:
                frame = _read_jpeg(p)
                if frame.shape[:2] != (height, width):
                    raise VOSFormatError(f"{p}: {frame.shape[1]}x{frame.shape[0]}, the sequence's first frame is "
                                         f"{width}x{height}")
                yield frame

        _encode_mp4(frames(), video, fps)
        reader = VideoReader(str(video))
        if reader.num_frames != len(jpegs) or (reader.height, reader.width) != (height, width):
            raise VOSFormatError(f"{video}: decodes to {reader.num_frames} frames of {reader.width}x{reader.height}, "
                                 f"expected {len(jpegs)} of {width}x{height}")
        sample = fo.Sample(filepath=str(video), sequence=name)
        sample.metadata = video_metadata(video)
        for png in pngs:
            ids = read_annotation(png)
            if ids.shape != (height, width):
                raise VOSFormatError(f"{png}: {ids.shape[1]}x{ids.shape[0]}, the frames are {width}x{height}")
            number = numbers[png.stem]
            if label_type == "segmentation":
                label = fo.Segmentation(mask=ids)
            else:
                label = id_map_to_detections(ids, {k: categories.get(k) or str(k) for k in np.unique(ids).tolist()})
            sample.frames[number][label_field] = label
        samples.append(sample)
    if ds is None:
        ds = fo.Dataset(name_for_dir, persistent=persistent)
    if samples:
        ds.add_samples(samples)
    ds.info.setdefault("vos_import", []).append(dict(source=str(dataset_dir), layout=layout,
                                                      label_field=label_field, sequences=len(samples)))
    ds.save()
    if progress is not None:
        progress(1.0, "done")
    return ds
