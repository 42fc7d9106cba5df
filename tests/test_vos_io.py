"""DAVIS / YouTube-VOS export and import (``deaot_vos.formats.vos``, the ``export_vos`` / ``import_vos``
operators and CLI subcommands).

The source dataset has three real videos (written to tmp, decoded by decord): objects with
non-contiguous ids (1, 2, 3, 7, 200), an object appearing on a later frame, sparse annotations
with an annotated but empty frame, and a sequence annotated on its first frame only. Masks and
object ids must come back identical after export -> import; bad folders and bad labels are
refused with an error naming the file, and change nothing.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import write_video
from helpers import detection as _det

pytestmark = pytest.mark.usefixtures("fiftyone_db")

H, W = 64, 96
LABELS = {1: "cat", 2: "dog", 3: "bird", 7: "car", 200: "person"}
# name -> (frames, annotated frames (None: all), {id: first frame})
VIDEOS = {
    "walk": (10, None, {1: 1, 2: 1, 3: 5}),
    "jump": (8, (1, 4, 8), {7: 1, 200: 1}),
    "slide": (6, (1,), {1: 1}),
}
EMPTY = {"jump": (4,)}  # annotated, all-background frames


def _label_maps(count: int, first_frames: dict[int, int], seed: int) -> np.ndarray:
    """(T, H, W) id maps: one moving rectangle per id, each in its own band of rows (no overlap)."""
    maps = np.zeros((count, H, W), dtype=np.int64)
    for band, (obj, start) in enumerate(sorted(first_frames.items())):
        for t in range(start - 1, count):
            y0 = 3 + band * 20 + (t + seed) % 3
            x0 = 5 + 3 * t + 7 * band
            maps[t, y0:y0 + 12 + band, x0:x0 + 18] = obj
    return maps


def _detections(id_map):
    import fiftyone as fo

    return fo.Detections(detections=[_det(LABELS[k], id_map == k, index=k)
                                     for k in np.unique(id_map).tolist() if k != 0])


@pytest.fixture(scope="module")
def source(tmp_path_factory, fiftyone_db):
    """The source dataset: field ``gt`` (Detections with ``index``), ``seg`` (Segmentation)."""
    import fiftyone as fo

    tmp = tmp_path_factory.mktemp("vos_src")
    name = "t_vosio_src"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    truth = {}
    for seed, (video, (count, annotated, first_frames)) in enumerate(VIDEOS.items()):
        maps = _label_maps(count, first_frames, seed)
        path = write_video(tmp / f"{video}.mp4", maps)
        sample = fo.Sample(filepath=str(path))
        frames = annotated or range(1, count + 1)
        kept = {}
        for number in frames:
            m = maps[number - 1] * (0 if number in EMPTY.get(video, ()) else 1)
            sample.frames[number]["gt"] = _detections(m)
            sample.frames[number]["seg"] = fo.Segmentation(mask=m.astype(np.uint8))
            kept[number] = m
        sample.frames[2]["other"] = fo.Classification(label="x")
        ds.add_sample(sample)
        truth[video] = dict(id=sample.id, count=count, maps=kept)
    ds.compute_metadata()
    yield dict(ds=ds, truth=truth)
    fo.delete_dataset(name)


def _id_maps(ds, sid, field):
    from deaot_vos.label_frames import read_id_maps

    return read_id_maps(ds, sid, ds[sid].filepath, field, H, W, require_index=False)


def _by_sequence(ds) -> dict[str, str]:
    return dict(zip(ds.values("sequence"), ds.values("id")))


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative path -> (size, mtime_ns)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_same_masks(back, truth, field="gt", categories=None):
    """Every annotated frame of ``truth`` comes back with the same id map (and nothing else)."""
    import fiftyone as fo

    ids = _by_sequence(back)
    assert sorted(ids) == sorted(truth)
    for video, t in truth.items():
        sample = back[ids[video]]
        assert sample.metadata.total_frame_count == t["count"]
        assert (sample.metadata.frame_width, sample.metadata.frame_height) == (W, H)
        maps = _id_maps(back, ids[video], field)
        assert maps.frames == sorted(t["maps"]), video
        for number, expected in t["maps"].items():
            assert np.array_equal(maps.maps[number], expected), (video, number)
            label = sample.frames[number][field]
            if isinstance(label, fo.Detections):
                dets = {d.index: d for d in label.detections}
                assert sorted(dets) == sorted(k for k in np.unique(expected).tolist() if k != 0)
                for k, det in dets.items():
                    want = _det("", expected == k)
                    assert det.bounding_box == pytest.approx(want.bounding_box)
                    assert np.array_equal(np.asarray(det.mask, bool), want.mask)
                    assert det.label == (categories[k] if categories else str(k))


def test_davis_export_layout_and_round_trip(source, tmp_path):
    from PIL import Image

    import fiftyone as fo

    from deaot_vos.formats.vos import davis_palette, export_vos, import_vos

    ds, truth = source["ds"], source["truth"]
    out = tmp_path / "davis"
    summary = export_vos(ds, out, "gt")
    assert summary["layout"] == "davis" and sorted(summary["sequences"]) == sorted(VIDEOS)
    assert summary["sequences"]["walk"]["objects"] == [1, 2, 3]
    assert summary["sequences"]["jump"]["objects"] == [7, 200]
    assert not (out / "meta.json").exists()
    palette = davis_palette().flatten().tolist()
    for video, t in truth.items():
        jpegs = sorted(p.name for p in (out / "JPEGImages" / video).iterdir())
        assert jpegs == [f"{i:05d}.jpg" for i in range(t["count"])]
        pngs = sorted(p.name for p in (out / "Annotations" / video).iterdir())
        assert pngs == [f"{n - 1:05d}.png" for n in sorted(t["maps"])]
        assert summary["sequences"][video]["annotated"] == len(pngs)
        for number, expected in t["maps"].items():
            with Image.open(out / "Annotations" / video / f"{number - 1:05d}.png") as image:
                assert image.mode == "P" and image.getpalette()[:768] == palette
                assert np.array_equal(np.array(image), expected)

    back = import_vos(out, "t_vosio_back")
    try:
        assert back.media_type == "video" and len(back) == 3 and not back.persistent
        assert "gt" not in back.get_frame_field_schema() and "ground_truth" in back.get_frame_field_schema()
        _check_same_masks(back, truth, "ground_truth")
        assert back.info["vos_import"][-1]["layout"] == "davis"
        # the videos are H.264 MP4s in the dataset folder, decodable frame for frame
        for sample in back:
            assert Path(sample.filepath).parent == Path(fo.config.default_dataset_dir) / "t_vosio_back" / "videos"
        assert not [p for p in Path(back.first().filepath).parent.iterdir() if p.name.startswith(".import")]

        # second trip: export the imported dataset (names from its `sequence` field): identical PNGs
        again = tmp_path / "davis2"
        export_vos(back, again, "ground_truth")
        for video in VIDEOS:
            first = sorted((out / "Annotations" / video).iterdir())
            second = sorted((again / "Annotations" / video).iterdir())
            assert [p.name for p in first] == [p.name for p in second]
            assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))
    finally:
        fo.delete_dataset("t_vosio_back")


def test_segmentation_field_and_label_type(source, tmp_path):
    import fiftyone as fo

    from deaot_vos.formats.vos import export_vos, import_vos

    ds, truth = source["ds"], source["truth"]
    out = tmp_path / "davis_seg"
    export_vos(ds.select(truth["walk"]["id"]), out, "seg")  # a view: only this video
    assert sorted(p.name for p in (out / "JPEGImages").iterdir()) == ["walk"]
    back = import_vos(out, "t_vosio_seg", label_field="masks", label_type="segmentation")
    try:
        assert back.get_frame_field_schema()["masks"].document_type is fo.Segmentation
        _check_same_masks(back, {"walk": truth["walk"]}, "masks")
    finally:
        fo.delete_dataset("t_vosio_seg")


def test_youtube_round_trip_with_meta(source, tmp_path):
    import fiftyone as fo

    from deaot_vos.formats.vos import export_vos, import_vos

    ds, truth = source["ds"], source["truth"]
    out = tmp_path / "ytvos"
    export_vos(ds, out, "gt", layout="youtube")
    meta = json.loads((out / "meta.json").read_text())
    assert sorted(meta["videos"]) == sorted(VIDEOS)
    walk = meta["videos"]["walk"]["objects"]
    assert list(walk) == ["1", "2", "3"]
    assert {k: v["category"] for k, v in walk.items()} == {"1": "cat", "2": "dog", "3": "bird"}
    assert walk["3"]["frames"] == [f"{n:05d}" for n in range(4, 10)]  # appears on frame 5
    jump = meta["videos"]["jump"]["objects"]
    assert list(jump) == ["7", "200"] and jump["200"]["frames"] == ["00000", "00007"]  # frame 4 is empty

    # re-export one sequence with overwrite: meta.json keeps the others
    export_vos(ds.select(truth["slide"]["id"]), out, "gt", layout="youtube", overwrite=True)
    assert json.loads((out / "meta.json").read_text()) == meta

    back = import_vos(out, "t_vosio_yt")  # layout auto: meta.json -> youtube
    try:
        assert back.info["vos_import"][-1]["layout"] == "youtube"
        _check_same_masks(back, truth, "ground_truth", categories=LABELS)
    finally:
        fo.delete_dataset("t_vosio_yt")

    # YouTube-VOS frame names need not be consecutive (every 5th frame in the training set)
    sparse = tmp_path / "yt_sparse"
    shutil.copytree(out, sparse)
    seq = sparse / "JPEGImages" / "slide"
    for i, p in reversed(list(enumerate(sorted(seq.glob("*.jpg"))))):
        p.rename(seq / f"{5 * i:05d}.jpg")
    back = import_vos(sparse, "t_vosio_yt5", sequences=["slide"])
    try:
        assert len(back) == 1 and back.first().metadata.total_frame_count == 6
        _check_same_masks(back, {"slide": truth["slide"]}, "ground_truth", categories=LABELS)
    finally:
        fo.delete_dataset("t_vosio_yt5")


def _write_folder(root: Path, sequences: dict[str, np.ndarray], resolution: str = "", annotated=(0,)) -> None:
    """A hand-made DAVIS folder: JPEG frames drawn from the id maps, palette PNGs on ``annotated``."""
    import cv2

    from deaot_vos.formats.vos import write_annotation

    for name, maps in sequences.items():
        jpeg_dir = root / "JPEGImages" / resolution / name
        ann_dir = root / "Annotations" / resolution / name
        jpeg_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        for i, m in enumerate(maps):
            frame = np.full((*m.shape, 3), 60, np.uint8)
            frame[m > 0] = (40 * m[m > 0, None] % 255).astype(np.uint8)
            cv2.imwrite(str(jpeg_dir / f"{i:05d}.jpg"), frame)
            if i in annotated:
                write_annotation(ann_dir / f"{i:05d}.png", m)


def test_official_resolution_folder_import_then_export(tmp_path):
    """DAVIS release layout (``JPEGImages/480p/<seq>``), first frame annotated only."""
    import fiftyone as fo

    from deaot_vos.formats.vos import export_vos, import_vos, read_annotation

    maps = _label_maps(5, {1: 1, 2: 1}, 0)
    src = tmp_path / "DAVIS"
    _write_folder(src, {"bear": maps}, resolution="480p", annotated=(0, 3))
    ds = import_vos(src, "t_vosio_480p", label_field="gt")
    try:
        assert ds.first().sequence == "bear" and ds.first().metadata.total_frame_count == 5
        assert ds.count("frames.gt") == 2
        out = tmp_path / "out"
        export_vos(ds, out, "gt")
        assert sorted(p.name for p in (out / "Annotations" / "bear").iterdir()) == ["00000.png", "00003.png"]
        for i in (0, 3):
            assert np.array_equal(read_annotation(out / "Annotations" / "bear" / f"{i:05d}.png"), maps[i])
    finally:
        fo.delete_dataset("t_vosio_480p")


def test_operators(source, tmp_path):
    import fiftyone as fo
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ds, truth = source["ds"], source["truth"]
    out = tmp_path / "op"
    result = foo.execute_operator("@deaot/vos/export_vos", dict(dataset=ds, view=ds.view(), params=dict(
        label_field="gt", export_dir=str(out), layout="davis")))
    assert result.result == dict(export_dir=str(out), layout="davis", sequences=3,
                                 annotated=sum(len(t["maps"]) for t in truth.values()))
    # selected samples only
    sel = tmp_path / "op_sel"
    foo.execute_operator("@deaot/vos/export_vos", dict(dataset=ds, view=ds.view(), selected=[truth["jump"]["id"]],
                                                       params=dict(label_field="gt", export_dir=str(sel))))
    assert sorted(p.name for p in (sel / "JPEGImages").iterdir()) == ["jump"]

    name = "t_vosio_op"
    try:
        result = foo.execute_operator("@deaot/vos/import_vos", dict(dataset=ds, view=ds.view(), params=dict(
            dataset_dir=str(out), name=name, label_field="gt_back")))
        assert result.result == dict(dataset=name, samples=3)
        back = fo.load_dataset(name)
        assert back.persistent
        _check_same_masks(back, truth, "gt_back")
        # the form flags an existing name; the operator refuses it without overwrite
        op = foo.get_operator("@deaot/vos/import_vos")
        ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[], params=dict(
            dataset_dir=str(out), name=name)))
        props = op.resolve_input(ctx).type.properties
        assert props["name"].invalid and "already exists" in props["name"].error_message
        assert "tick the Overwrite checkbox" in props["name"].error_message
        with pytest.raises(Exception, match="already exists; tick the Overwrite checkbox"):
            foo.execute_operator("@deaot/vos/import_vos", dict(dataset=ds, view=ds.view(), params=dict(
                dataset_dir=str(out), name=name)))
        assert len(fo.load_dataset(name)) == 3
        # export form: mask fields only
        op = foo.get_operator("@deaot/vos/export_vos")
        ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[], params={}))
        props = op.resolve_input(ctx).type.properties
        assert props["label_field"].type.values == ["gt", "seg"] and props["layout"].default == "davis"
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_cli(source, tmp_path, capsys):
    import fiftyone as fo

    from deaot_vos.cli import main

    ds, truth = source["ds"], source["truth"]
    out = tmp_path / "cli"
    assert main(["export-vos", "--dataset", ds.name, "--label-field", "gt", "--export-dir", str(out),
                 "--layout", "youtube"]) == 0
    assert "wrote 3 sequence(s)" in capsys.readouterr().out
    assert main(["export-vos", "--dataset", ds.name, "--label-field", "gt", "--export-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "already exists; pass --overwrite to replace it" in err and "overwrite=True" not in err
    try:
        assert main(["import-vos", "--dataset-dir", str(out), "--name", "t_vosio_cli", "--sequence", "walk"]) == 0
        assert "1 videos" in capsys.readouterr().out
        back = fo.load_dataset("t_vosio_cli")
        _check_same_masks(back, {"walk": truth["walk"]}, "ground_truth", categories=LABELS)
        assert main(["import-vos", "--dataset-dir", str(tmp_path / "nope"), "--name", "t_vosio_cli2"]) == 1
        assert "is not a folder" in capsys.readouterr().err
    finally:
        for name in ("t_vosio_cli", "t_vosio_cli2"):
            if fo.dataset_exists(name):
                fo.delete_dataset(name)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def good_folder(tmp_path):
    """A valid DAVIS folder with two sequences (every frame annotated)."""
    root = tmp_path / "good"
    _write_folder(root, {"a": _label_maps(5, {1: 1, 2: 3}, 0), "b": _label_maps(4, {3: 1}, 1)},
                  annotated=range(5))
    return root


def _break(root: Path, how: str) -> None:
    from PIL import Image

    ann, jpg = root / "Annotations" / "b", root / "JPEGImages" / "b"
    if how == "no_jpegimages":
        shutil.rmtree(root / "JPEGImages")
    elif how == "no_annotations":
        shutil.rmtree(root / "Annotations")
    elif how == "no_sequence_annotations":
        shutil.rmtree(ann)
    elif how == "missing_frame":
        (jpg / "00002.jpg").unlink()
    elif how == "extra_png":
        shutil.copy(ann / "00003.png", ann / "00004.png")
    elif how == "rgb_png":
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(ann / "00001.png")
    elif how == "png_size":
        Image.fromarray(np.zeros((H, W + 2), np.uint8), mode="L").save(ann / "00002.png")
    elif how == "png_garbage":
        (ann / "00001.png").write_bytes(b"not a png at all")
    elif how == "png_truncated":
        data = (ann / "00003.png").read_bytes()
        idat = data.index(b"IDAT")  # header and palette intact, pixel data cut in half
        (ann / "00003.png").write_bytes(data[: idat + 4 + int.from_bytes(data[idat - 4:idat], "big") // 2])
    elif how == "jpeg_size":
        import cv2

        cv2.imwrite(str(jpg / "00002.jpg"), np.zeros((H + 2, W, 3), np.uint8))
    elif how == "bad_meta":
        (root / "meta.json").write_text("{videos: ")
    elif how == "meta_shape":
        (root / "meta.json").write_text(json.dumps({"videos": []}))


BAD_FOLDERS = [
    ("no_jpegimages", {}, "JPEGImages does not exist"),
    ("no_annotations", {}, "Annotations does not exist"),
    ("no_sequence_annotations", {}, "sequence 'b': annotation folder .*Annotations/b does not exist"),
    ("none", dict(sequences=["a", "zebra"]), "no sequence 'zebra'"),
    ("missing_frame", {}, r"JPEGImages/b: 3 frames numbered 00000..00003, missing \['00002.jpg'\]"),
    ("extra_png", {}, r"Annotations/b/00004.png: no frame 00004.jpg .*5 PNGs, 4 JPEGs"),
    ("rgb_png", {}, r"Annotations/b/00001.png: annotation is a RGB image.*palette PNGs"),
    ("png_size", {}, r"Annotations/b/00002.png: 98x64, the sequence's frames are 96x64"),
    ("png_garbage", {}, r"Annotations/b/00001.png: not a readable image"),
    ("png_truncated", {}, r"Annotations/b/00003.png: cannot decode the PNG"),
    ("jpeg_size", {}, r"JPEGImages/b/00002.jpg: 96x66, the sequence's first frame is 96x64"),
    ("none", dict(layout="youtube"), "meta.json is missing"),
    ("bad_meta", {}, "meta.json: not valid JSON"),
    ("meta_shape", {}, "meta.json: expected"),
]


@pytest.mark.parametrize("how,kwargs,match", BAD_FOLDERS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_FOLDERS)])
def test_bad_folders_are_refused_and_change_nothing(good_folder, tmp_path, how, kwargs, match):
    import fiftyone as fo

    from deaot_vos.formats.vos import VOSFormatError, import_vos

    _break(good_folder, how)
    # an existing dataset of the same name, to be replaced: it survives the failed import
    keep = fo.Dataset("t_vosio_keep")
    keep.add_sample(fo.Sample(filepath=str(tmp_path / "keep.mp4")))
    videos = tmp_path / "videos"
    datasets = sorted(fo.list_datasets())
    files = _tree(good_folder)
    try:
        with pytest.raises(VOSFormatError, match=match):
            import_vos(good_folder, "t_vosio_keep", video_dir=videos, overwrite=True, **kwargs)
        assert sorted(fo.list_datasets()) == datasets
        assert len(fo.load_dataset("t_vosio_keep")) == 1
        assert _tree(videos) == {}  # no video, no staging folder left behind
        assert _tree(good_folder) == files
    finally:
        fo.delete_dataset("t_vosio_keep")


def test_import_refusals(good_folder, tmp_path):
    import fiftyone as fo

    from deaot_vos.formats.vos import import_vos

    videos = tmp_path / "videos"
    ds = import_vos(good_folder, "t_vosio_ok", video_dir=videos)
    try:
        _check_same_masks(ds, {"a": dict(count=5, maps={n: _label_maps(5, {1: 1, 2: 3}, 0)[n - 1] for n in range(1, 6)}),
                               "b": dict(count=4, maps={n: _label_maps(4, {3: 1}, 1)[n - 1] for n in range(1, 5)})},
                          "ground_truth")
        before = (_tree(videos), len(ds), ds.count("frames.ground_truth"))
        with pytest.raises(ValueError, match="'t_vosio_ok' already exists; pass overwrite=True"):
            import_vos(good_folder, "t_vosio_ok", video_dir=videos)
        with pytest.raises(FileExistsError, match="a.mp4 already exists"):  # another dataset, same videos
            import_vos(good_folder, "t_vosio_other", video_dir=videos)
        with pytest.raises(ValueError, match="another type"):  # adding to a dataset: field type clash
            import_vos(good_folder, ds, video_dir=tmp_path / "v2", label_type="segmentation")
        with pytest.raises(ValueError, match="layout must be"):
            import_vos(good_folder, "t_vosio_other", layout="coco")
        with pytest.raises(ValueError, match="label_type must be"):
            import_vos(good_folder, "t_vosio_other", label_type="polylines")
        assert (_tree(videos), len(ds), ds.count("frames.ground_truth")) == before
        assert not fo.dataset_exists("t_vosio_other") and not (tmp_path / "v2").exists()
        # overwrite replaces the dataset and its videos
        again = import_vos(good_folder, "t_vosio_ok", video_dir=videos, overwrite=True, sequences=["b"])
        assert len(again) == 1 and again.first().sequence == "b"
    finally:
        fo.delete_dataset("t_vosio_ok")


def test_bad_export_is_refused_and_writes_nothing(source, tmp_path):
    import fiftyone as fo

    from deaot_vos.fields import LabelFieldError
    from deaot_vos.formats.vos import export_vos

    ds, truth = source["ds"], source["truth"]
    out = tmp_path / "bad"
    export_vos(ds.select(truth["slide"]["id"]), out, "gt")
    files = _tree(out)
    walk = truth["walk"]["id"]
    big = {1: fo.Detections(detections=[_det("x", truth["walk"]["maps"][1] == 1, index=300)])}
    ds.set_values("frames.gt_big", {walk: big}, key_field="id")
    late = {1: _detections(truth["walk"]["maps"][1]), 12: _detections(truth["walk"]["maps"][1])}
    ds.set_values("frames.gt_late", {walk: late}, key_field="id")
    try:
        only_walk = ds.select(walk)  # no name clash with the exported "slide"
        cases = [
            (dict(label_field="missing"), LabelFieldError, "no frame field 'missing'"),
            (dict(label_field="other"), LabelFieldError, "'other'.*Classification"),
            (dict(label_field="gt_big"), ValueError, r"walk.mp4\): frame 1 of 'gt_big' has object index\(es\) \[300\]"),
            (dict(label_field="gt_late"), ValueError, r"walk.mp4\): 'gt_late' is set on frame\(s\) \[12\] beyond the "
                                                      r"video's 10 frames"),
            (dict(label_field="gt", layout="coco"), ValueError, "layout must be"),
            (dict(label_field="gt", view=ds), FileExistsError, "slide already exists"),  # exported before
        ]
        for kwargs, error, match in cases:
            view = kwargs.pop("view", only_walk)
            with pytest.raises(error, match=match):
                export_vos(view, out, **kwargs)
            assert _tree(out) == files, kwargs
        with pytest.raises(ValueError, match="clips"):
            export_vos(ds.to_clips("frames.gt"), tmp_path / "clips", "gt")
        assert not (tmp_path / "clips").exists()
    finally:
        ds.delete_frame_fields(["gt_big", "gt_late"])


def test_export_stopped_midway_leaves_the_folder_as_it_was(source, tmp_path):
    """A cancel (or a decode error) after the first sequence: the earlier export stays whole."""
    from deaot_vos.formats.vos import export_vos

    ds = source["ds"]
    out = tmp_path / "yt"
    export_vos(ds, out, "gt", layout="youtube")
    files = _tree(out)
    meta = (out / "meta.json").read_text()

    class Cancelled(Exception):
        pass

    def cancel_on_second(fraction, message):
        if message.startswith("[2/"):
            raise Cancelled(message)

    with pytest.raises(Cancelled):
        export_vos(ds, out, "seg", layout="youtube", overwrite=True, progress=cancel_on_second)
    assert _tree(out) == files
    assert (out / "meta.json").read_text() == meta
    assert sorted(p.name for p in out.iterdir()) == ["Annotations", "JPEGImages", "meta.json"]  # no staging left

    # the same export run to the end replaces the sequences in place
    export_vos(ds, out, "seg", layout="youtube", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["Annotations", "JPEGImages", "meta.json"]
    assert sorted(p.name for p in (out / "Annotations").iterdir()) == sorted(VIDEOS)
