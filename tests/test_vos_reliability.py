"""Reliability of the DAVIS / YouTube-VOS import and export (``deaot_vos.formats.vos``) and of mask files
read as id maps (``deaot_vos.labels``), issue 14.

* frame names are ordered by their number (``0.jpg ... 11.jpg``), not as text; the DAVIS layout
  refuses names that are not zero-padded, saying so;
* a sequence name must be a single folder name (export and import);
* a JPEG (lossy) mask is refused wherever an id map is read from a file;
* DAVIS void pixels (255) are not an object.

Folders are real JPEG frames and palette PNGs (``deaot_vos.formats.vos.write_annotation``), datasets live
in the test mongod, the imported MP4s are decoded with decord.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_video
from helpers import detection as _det

pytestmark = pytest.mark.usefixtures("fiftyone_db")

H, W = 48, 64


def video_metadata(path):
    from deaot_vos.video_io import video_metadata as decord_metadata  # decord: no ffprobe needed

    return decord_metadata(path)


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _grey(i: int) -> int:
    return 20 + 15 * i  # frame i is a flat grey of this value (distinct, survives JPEG + H.264)


def _write_sequence(root: Path, name: str, count: int, annotations: dict[int, np.ndarray], stem=str,
                    ann_sub: str = "Annotations") -> None:
    """JPEGImages/<name>/<stem(i)>.jpg for i < count (flat grey frames), palette PNGs of the id maps
    ``annotations`` {i: map} in <ann_sub>/<name>/<stem(i)>.png."""
    import cv2

    from deaot_vos.formats.vos import write_annotation

    jpeg_dir, ann_dir = root / "JPEGImages" / name, root / ann_sub / name
    jpeg_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(jpeg_dir / f"{stem(i)}.jpg"), np.full((H, W, 3), _grey(i), np.uint8))
    for i, m in annotations.items():
        write_annotation(ann_dir / f"{stem(i)}.png", m)


def _box(index: int, y0: int, x0: int, h: int = 10, w: int = 14, base=None) -> np.ndarray:
    m = np.zeros((H, W), np.uint8) if base is None else base.copy()
    m[y0:y0 + h, x0:x0 + w] = index
    return m


def _id_maps(ds, sample, field):
    from deaot_vos.label_frames import read_id_maps

    return read_id_maps(ds, sample.id, sample.filepath, field, H, W, require_index=False)


def _drop(*names):
    import fiftyone as fo

    for name in names:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


# --------------------------------------------------------------------------- 6. frame order


def test_youtube_unpadded_frame_names_are_ordered_by_number(tmp_path):
    """``0.jpg ... 11.jpg``: frame n is the JPEG numbered n - 1 and ``5.png`` lands on frame 6 (text
    order put it on frame 8)."""
    from deaot_vos.video_io import VideoReader
    from deaot_vos.formats.vos import import_vos

    root = tmp_path / "yt"
    first, fifth = _box(1, 4, 4), _box(2, 20, 30)
    _write_sequence(root, "cat", 12, {0: first, 5: fifth})
    (root / "meta.json").write_text(json.dumps({"videos": {"cat": {"objects": {
        "1": {"category": "cat", "frames": ["0"]}, "2": {"category": "toy", "frames": ["5"]}}}}}))
    ds = import_vos(root, "t_vosrel_order", video_dir=tmp_path / "videos")
    try:
        sample = ds.first()
        assert sample.metadata.total_frame_count == 12
        reader = VideoReader(sample.filepath)
        greys = [int(np.median(reader.frame(n))) for n in range(1, 13)]
        assert all(abs(g - _grey(n - 1)) <= 3 for n, g in zip(range(1, 13), greys)), greys
        maps = _id_maps(ds, sample, "ground_truth")
        assert maps.frames == [1, 6]
        assert np.array_equal(maps.maps[1], first) and np.array_equal(maps.maps[6], fifth)
        assert [d.label for d in sample.frames[6]["ground_truth"].detections] == ["toy"]
    finally:
        _drop("t_vosrel_order")


def test_davis_unpadded_frame_names_are_refused_saying_why(tmp_path):
    from deaot_vos.formats.vos import VOSFormatError, import_vos

    root = tmp_path / "davis"
    _write_sequence(root, "cat", 12, {0: _box(1, 4, 4)})
    with pytest.raises(VOSFormatError, match=r"JPEGImages/cat: .*not zero-padded.*\['0\.jpg', '1\.jpg', '2\.jpg'"):
        import_vos(root, "t_vosrel_davis12", video_dir=tmp_path / "videos")
    assert not (tmp_path / "videos").exists() or _tree(tmp_path / "videos") == {}

    # zero-padded to another width than 5 is fine, in number order (the annotation of 0010 on frame 11)
    padded = tmp_path / "davis4"
    _write_sequence(padded, "cat", 12, {0: _box(1, 4, 4), 10: _box(1, 9, 9)}, stem=lambda i: f"{i:04d}")
    ds = import_vos(padded, "t_vosrel_davis4", video_dir=tmp_path / "videos4")
    try:
        maps = _id_maps(ds, ds.first(), "ground_truth")
        assert maps.frames == [1, 11] and np.array_equal(maps.maps[11], _box(1, 9, 9))
    finally:
        _drop("t_vosrel_davis4")


def test_frames_with_the_same_number_are_refused(tmp_path):
    import cv2

    from deaot_vos.formats.vos import VOSFormatError, import_vos

    root = tmp_path / "yt"
    _write_sequence(root, "cat", 6, {0: _box(1, 4, 4)})
    cv2.imwrite(str(root / "JPEGImages" / "cat" / "05.jpg"), np.full((H, W, 3), 9, np.uint8))
    (root / "meta.json").write_text(json.dumps({"videos": {}}))
    with pytest.raises(VOSFormatError, match=r"JPEGImages/cat: .*05\.jpg.*5\.jpg.*same frame number"):
        import_vos(root, "t_vosrel_dup", video_dir=tmp_path / "videos")


# --------------------------------------------------------------------------- 7. sequence names


@pytest.fixture
def one_video(tmp_path, fiftyone_db):
    """A one-sample video dataset with a ``gt`` field and a ``sequence`` field."""
    import fiftyone as fo

    maps = np.stack([_box(1, 4 + t, 4 + 2 * t) for t in range(4)]).astype(np.int64)
    path = write_video(tmp_path / "clip.mp4", maps)
    _drop("t_vosrel_names")
    ds = fo.Dataset("t_vosrel_names")
    sample = fo.Sample(filepath=str(path), sequence="keep", metadata=video_metadata(path))
    for number in range(1, 5):
        sample.frames[number]["gt"] = fo.Detections(detections=[_det("cat", maps[number - 1] == 1, index=1)])
    ds.add_sample(sample)
    yield ds
    _drop("t_vosrel_names")


BAD_NAMES = [".", "..", "a/b", "..\\up", "x\0y", "   "]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=["dot", "dotdot", "slash", "backslash", "nul", "blank"])
def test_export_refuses_an_unsafe_sequence_name_and_keeps_earlier_sequences(one_video, tmp_path, bad):
    from deaot_vos.formats.vos import export_vos

    ds = one_video
    out = tmp_path / "export"
    export_vos(ds, out, "gt")  # an earlier export: sequence "keep"
    files = _tree(out)
    assert "JPEGImages/keep/00000.jpg" in files
    sample = ds.first()
    sample["sequence"] = bad
    sample.save()
    for layout in ("davis", "youtube"):
        with pytest.raises(ValueError, match="sequence name") as err:
            export_vos(ds, out, "gt", layout=layout, overwrite=True)
        message = str(err.value)
        assert repr(bad) in message and sample.id in message and "clip.mp4" in message
        assert "single folder name" in message
        assert _tree(out) == files  # nothing deleted, nothing written


def test_export_names_from_the_file_name_still_work(one_video, tmp_path):
    """An unset (None / empty) ``sequence`` falls back to the video's file name."""
    from deaot_vos.formats.vos import export_vos

    ds = one_video
    sample = ds.first()
    sample["sequence"] = ""
    sample.save()
    summary = export_vos(ds, tmp_path / "out", "gt")
    assert sorted(summary["sequences"]) == ["clip"]


@pytest.mark.parametrize("bad", ["../x", "..", ".", "", "a/b", "a\\b", "x\0y"])
def test_import_refuses_an_unsafe_sequence_name(tmp_path, bad):
    """``sequences=["../x"]`` used to follow ``..`` (and write ``videos/../x.mp4``)."""
    import fiftyone as fo

    from deaot_vos.formats.vos import import_vos

    root = tmp_path / "davis" / "inner"
    _write_sequence(root, "a", 3, {0: _box(1, 4, 4)})
    # a real sequence at JPEGImages/../x = Annotations/../x (frames and annotations side by side):
    # the old code imported it
    _write_sequence(root / "tmp", "x", 3, {0: _box(1, 4, 4)})
    (root / "tmp" / "JPEGImages" / "x").rename(root / "x")
    for png in (root / "tmp" / "Annotations" / "x").iterdir():
        png.rename(root / "x" / png.name)
    videos = tmp_path / "videos" / "inner"
    datasets = sorted(fo.list_datasets())
    with pytest.raises(ValueError, match="sequence name") as err:
        import_vos(root, "t_vosrel_import_names", video_dir=videos, sequences=["a", bad])
    assert repr(bad) in str(err.value) and "single folder name" in str(err.value)
    assert sorted(fo.list_datasets()) == datasets
    assert _tree(tmp_path / "videos") == {}


# --------------------------------------------------------------------------- JPEG masks


def _jpeg_of(id_map: np.ndarray, path: Path, colour: bool = False) -> Path:
    """A JPEG (quality 75) of an id map scaled to be visible: what a mask saved as .jpg holds."""
    import cv2

    img = (id_map.astype(np.int32) * 100).clip(0, 255).astype(np.uint8)
    if colour:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        img[..., 0] = 255 - img[..., 0]
    assert cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 75])
    return path


def _two_objects() -> np.ndarray:
    return _box(2, 25, 30, 12, 20, base=_box(1, 4, 4, 15, 18))


def test_import_refuses_jpeg_annotations(tmp_path):
    """An ``Annotations/<seq>/00000.jpg`` used to be ignored silently (the sequence imported without
    labels); JPEG data named ``.png`` used to become dozens of objects."""
    import fiftyone as fo

    from deaot_vos.formats.vos import VOSFormatError, import_vos, read_annotation

    root = tmp_path / "davis"
    _write_sequence(root, "a", 4, {}, stem=lambda i: f"{i:05d}")
    jpeg = _jpeg_of(_two_objects(), root / "Annotations" / "a" / "00000.jpg")
    datasets = sorted(fo.list_datasets())
    with pytest.raises(VOSFormatError, match=r"Annotations/a/00000\.jpg: .*JPEG.*lossy.*PNG"):
        import_vos(root, "t_vosrel_jpg", video_dir=tmp_path / "videos")

    # the same JPEG bytes under a .png name
    jpeg.rename(root / "Annotations" / "a" / "00000.png")
    with pytest.raises(VOSFormatError, match=r"Annotations/a/00000\.png: .*JPEG.*lossy.*PNG"):
        import_vos(root, "t_vosrel_jpg", video_dir=tmp_path / "videos")
    with pytest.raises(VOSFormatError, match=r"00000\.png: .*JPEG.*lossy"):
        read_annotation(root / "Annotations" / "a" / "00000.png")
    assert sorted(fo.list_datasets()) == datasets
    assert _tree(tmp_path / "videos") == {}


def test_import_ignores_a_jpeg_preview_next_to_its_png(tmp_path):
    """A JPEG with a PNG of the same name (a preview) is not an annotation: the PNG is used."""
    from deaot_vos.formats.vos import import_vos

    root = tmp_path / "davis"
    ids = _two_objects()
    _write_sequence(root, "a", 4, {0: ids}, stem=lambda i: f"{i:05d}")
    _jpeg_of(ids, root / "Annotations" / "a" / "00000.jpg")
    ds = import_vos(root, "t_vosrel_preview", video_dir=tmp_path / "videos")
    try:
        maps = _id_maps(ds, ds.first(), "ground_truth")
        assert maps.frames == [1] and np.array_equal(maps.maps[1], ids)
    finally:
        _drop("t_vosrel_preview")


@pytest.mark.parametrize("kind", ["segmentation-grey", "segmentation-colour", "detection"])
def test_mask_path_to_a_jpeg_is_refused(tmp_path, kind):
    """A keyframe / label ``fo.Segmentation(mask_path=...jpg)``: the compression noise used to become
    spurious objects (hundreds for a colour JPEG); a Detection's JPEG mask_path, stray mask pixels."""
    import fiftyone as fo

    from deaot_vos.label_frames import read_id_maps
    from deaot_vos.labels import KeyframeError, ObjectRegistry, parse_keyframe

    maps = np.stack([_two_objects()] * 3).astype(np.int64)
    video = write_video(tmp_path / "v.mp4", maps)
    ids = _two_objects()
    _drop("t_vosrel_kf")
    ds = fo.Dataset("t_vosrel_kf")
    try:
        sample = fo.Sample(filepath=str(video), metadata=video_metadata(video))
        if kind == "detection":
            region = ids == 1
            det = _det("cat", region, index=1)
            crop = det.mask.astype(np.uint8)
            path = _jpeg_of(crop * 3, tmp_path / "inst.jpg")
            det.mask, det.mask_path = None, str(path)
            sample.frames[1]["kf"] = fo.Detections(detections=[det])
        else:
            path = _jpeg_of(ids, tmp_path / "mask.jpg", colour=kind.endswith("colour"))
            sample.frames[1]["kf"] = fo.Segmentation(mask_path=str(path))
        ds.add_sample(sample)
        sample = ds.first()
        # the propagation's keyframe parser, and the id-map reading of export / evaluation
        with pytest.raises(KeyframeError, match=r"mask\.jpg|inst\.jpg") as err:
            parse_keyframe(sample.frames[1]["kf"], 1, H, W, ObjectRegistry())
        with pytest.raises(ValueError, match=r"mask\.jpg|inst\.jpg") as err2:
            read_id_maps(ds, sample.id, sample.filepath, "kf", H, W, require_index=False)
        for message in (str(err.value), str(err2.value)):
            assert str(path) in message and "JPEG" in message and "lossy" in message and "PNG" in message
            assert "frame 1" in message

        # the same mask as a PNG is read exactly
        import cv2

        png = tmp_path / "mask.png"
        if kind == "detection":
            cv2.imwrite(str(png), crop)
            det = sample.frames[1]["kf"].detections[0]
            det.mask_path = str(png)
        else:
            cv2.imwrite(str(png), ids)
            sample.frames[1]["kf"] = fo.Segmentation(mask_path=str(png))
        sample.save()
        back = read_id_maps(ds, sample.id, sample.filepath, "kf", H, W, require_index=False)
        want = (ids == 1).astype(np.int64) if kind == "detection" else ids
        assert np.array_equal(back.maps[1], want)
    finally:
        _drop("t_vosrel_kf")


# --------------------------------------------------------------------------- DAVIS void


def _void_folder(root: Path) -> dict[int, np.ndarray]:
    """A DAVIS sequence of 5 frames, every frame annotated: objects 1, 2 and a void (255) band."""
    anns = {}
    for i in range(5):
        m = _box(2, 26, 20 + 3 * i, 12, 16, base=_box(1, 4, 4 + 2 * i, 12, 16))
        m[:, 60:] = 255  # void band on the right border (and around object 2)
        m[24:40, 18 + 3 * i] = 255
        anns[i] = m
    _write_sequence(root, "v", 5, anns, stem=lambda i: f"{i:05d}")
    return anns


@pytest.mark.parametrize("label_type", ["detections", "segmentation"])
def test_davis_void_is_not_an_object(tmp_path, label_type):
    from deaot_vos.evaluation import evaluate_vos
    from deaot_vos.formats.vos import import_vos

    root = tmp_path / "davis"
    anns = _void_folder(root)
    ds = import_vos(root, "t_vosrel_void", video_dir=tmp_path / "videos", label_type=label_type)
    try:
        sample = ds.first()
        for number in range(1, 6):
            label = sample.frames[number]["ground_truth"]
            if label_type == "detections":
                assert sorted(d.index for d in label.detections) == [1, 2]
            else:
                assert 255 not in np.unique(label.mask)
        maps = _id_maps(ds, sample, "ground_truth")
        for i, m in anns.items():
            assert np.array_equal(maps.maps[i + 1], np.where(m == 255, 0, m))
        assert ds.info["vos_import"][-1]["void_frames"] == 5
        # the official semi-supervised protocol scores void as background: 2 objects, perfect J&F
        ds.clone_frame_field("ground_truth", "pred")
        results = evaluate_vos(ds, "pred", "ground_truth")
        assert results.sequences[0]["K"] == 2
        assert results.summary()["J&F-Mean"] == pytest.approx(1.0)
    finally:
        _drop("t_vosrel_void")


def test_youtube_keeps_255_as_an_object(tmp_path):
    """255 is void only in the DAVIS layout."""
    from deaot_vos.formats.vos import import_vos

    root = tmp_path / "yt"
    ids = _box(255, 4, 4)
    _write_sequence(root, "y", 3, {0: ids}, stem=lambda i: f"{i:05d}")
    (root / "meta.json").write_text(json.dumps({"videos": {}}))
    ds = import_vos(root, "t_vosrel_yt255", video_dir=tmp_path / "videos")
    try:
        assert [d.index for d in ds.first().frames[1]["ground_truth"].detections] == [255]
    finally:
        _drop("t_vosrel_yt255")


def test_davis_export_refuses_object_255(one_video, tmp_path):
    """Index 255 written to a DAVIS PNG would come back as void (no object): refused; YouTube-VOS
    keeps it."""
    import fiftyone as fo

    from deaot_vos.formats.vos import export_vos, read_annotation

    ds = one_video
    sample = ds.first()
    for number in range(1, 5):
        dets = sample.frames[number]["gt"]
        sample.frames[number]["gt"] = fo.Detections(detections=[d.copy() for d in dets.detections])
        for d in sample.frames[number]["gt"].detections:
            d.index = 255
    sample.save()
    out = tmp_path / "davis"
    with pytest.raises(ValueError, match=r"clip\.mp4\): frame 1 of 'gt' has object index\(es\) \[255\].*void"):
        export_vos(ds, out, "gt")
    assert not (out / "JPEGImages").exists()
    export_vos(ds, tmp_path / "yt", "gt", layout="youtube")
    assert 255 in np.unique(read_annotation(tmp_path / "yt" / "Annotations" / "keep" / "00000.png"))


# --------------------------------------------------------------------------- decompression bombs


def _png_bomb(path: Path, width: int, height: int) -> Path:
    """A real palette PNG whose header is rewritten to declare ``width`` x ``height`` (CRC fixed):
    a file of a few hundred bytes that PIL would decode to ``width * height`` bytes."""
    import struct
    import zlib

    from deaot_vos.formats.vos import write_annotation

    write_annotation(path, _box(1, 4, 4))
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def _jpeg_bomb(path: Path, width: int, height: int) -> Path:
    """A real JPEG frame whose SOF0 header is rewritten to declare ``width`` x ``height``."""
    import struct

    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


BOMBS = {  # case -> (file under the DAVIS root, frame number in the message, make(path))
    "annotation": ("Annotations/b/00002.png", "annotation of frame 3", lambda p: _png_bomb(p, 20000, 20000)),
    # between PIL's limit and twice it, PIL only warns (and would decode 100 M pixels)
    "annotation_warning_range": ("Annotations/b/00002.png", "annotation of frame 3",
                                 lambda p: _png_bomb(p, 10000, 10000)),
    "frame": ("JPEGImages/b/00003.jpg", "frame 4", lambda p: _jpeg_bomb(p, 65000, 65000)),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_import_refuses_a_decompression_bomb_naming_the_file(tmp_path, case):
    """A small image declaring a huge size: ``VOSFormatError`` naming the file, the sequence and the
    frame (PIL raised its own error naming nothing, or only warned); nothing imported."""
    import fiftyone as fo

    from deaot_vos.formats.vos import VOSFormatError, import_vos

    root = tmp_path / "davis"
    _write_sequence(root, "a", 4, {0: _box(1, 4, 4)}, stem=lambda i: f"{i:05d}")
    _write_sequence(root, "b", 5, {0: _box(1, 4, 4), 2: _box(2, 9, 9)}, stem=lambda i: f"{i:05d}")
    relative, frame, make = BOMBS[case]
    bomb = make(root / relative)
    assert bomb.stat().st_size < 2000
    existing = import_vos(root, "t_vosrel_bomb_existing", sequences=["a"], video_dir=tmp_path / "old")
    try:
        before = (sorted(fo.list_datasets()), len(existing), _tree(tmp_path / "old"))
        pattern = rf"{relative.replace('.', '[.]')} \(sequence 'b', {frame}\): refused.*decompression-bomb"
        with pytest.raises(VOSFormatError, match=pattern):
            import_vos(root, "t_vosrel_bomb", video_dir=tmp_path / "videos")
        with pytest.raises(VOSFormatError, match=pattern):
            import_vos(root, existing, video_dir=tmp_path / "old")
        existing.reload()
        assert (sorted(fo.list_datasets()), len(existing), _tree(tmp_path / "old")) == before
        assert _tree(tmp_path / "videos") == {}
    finally:
        _drop("t_vosrel_bomb_existing", "t_vosrel_bomb")
