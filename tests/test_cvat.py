"""CVAT both ways, with FiftyOne's own CVAT video importer and exporter: a CVAT video XML written
as CVAT exports it (polygon tracks keyframed on two frames, a ``<mask>`` track) is imported
(FiftyOne + :func:`deaot_vos.formats.cvat.import_cvat_masks`), propagated from the polygon
keyframes with ``write_polylines``, exported as ``CVATVideoDataset`` and imported again (real
video decoded by our reader, real DeAOTT with random weights, real database)."""
from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")

T, H, W = 10, 64, 96
KEYFRAMES = (0, 6)  # CVAT's 0-based frames with keyframe="1"


def _blob() -> tuple[int, int, np.ndarray]:
    """(left, top, mask): an irregular mask (a disc with a hole, and a stray pixel run)."""
    yy, xx = np.mgrid[:21, :17]
    mask = (yy - 10) ** 2 + (xx - 8) ** 2 <= 64
    mask[8:12, 6:10] = False
    mask[0, :5] = True
    return 60, 30, mask


def _cvat_rle(mask: np.ndarray) -> str:
    """CVAT's run lengths of a crop: row by row, background first."""
    flat = mask.ravel().astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return ", ".join(str(v) for v in ([0] + runs if flat[0] else runs))


def _polygon_track(track_id: int, label: str, maps: np.ndarray, value: int, last: int) -> str:
    shapes = []
    for frame in range(last + 1):
        ys, xs = np.nonzero(maps[frame] == value)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        points = ";".join(f"{x:.2f},{y:.2f}" for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1)))
        keyframe = int(frame in KEYFRAMES)
        shapes.append(f'<polygon frame="{frame}" keyframe="{keyframe}" outside="0" occluded="0" points="{points}" '
                      f'z_order="0"></polygon>')
    shapes.append(f'<polygon frame="{last + 1}" keyframe="1" outside="1" occluded="0" points="{points}" '
                  f'z_order="0"></polygon>')
    return f'<track id="{track_id}" label="{label}" source="manual">{"".join(shapes)}</track>'


def _cvat_xml(maps: np.ndarray, rle: str | None = None) -> str:
    """A CVAT for video 1.1 XML: polygon tracks 0 (red) and 1 (green) on frames 0-6, keyframed on
    0 and 6; mask track 2 on frame 3 (CVAT writes a mask as a keyframe and an outside shape)."""
    left, top, mask = _blob()
    h, w = mask.shape
    rle = rle or _cvat_rle(mask)
    masks = "".join(f'<mask frame="{f}" keyframe="1" outside="{o}" occluded="0" rle="{rle}" left="{left}" '
                    f'top="{top}" width="{w}" height="{h}" z_order="0"></mask>' for f, o in ((3, 0), (4, 1)))
    labels = "".join(f"<label><name>{n}</name><type>any</type><attributes></attributes></label>"
                     for n in ("red", "green", "blob"))
    return (f'<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version><meta><task><id>1</id>'
            f"<name>clip</name><size>{T}</size><mode>interpolation</mode><overlap>5</overlap><start_frame>0"
            f"</start_frame><stop_frame>{T - 1}</stop_frame><labels>{labels}</labels><original_size><width>{W}"
            f"</width><height>{H}</height></original_size></task></meta>"
            f"{_polygon_track(0, 'red', maps, 1, 6)}{_polygon_track(1, 'green', maps, 2, 6)}"
            f'<track id="2" label="blob" source="manual">{masks}</track></annotations>')


def _cvat_folder(root, video: str, xml: str) -> str:
    os.makedirs(os.path.join(root, "data"))
    os.makedirs(os.path.join(root, "labels"))
    shutil.copy(video, os.path.join(root, "data", "clip.mp4"))
    with open(os.path.join(root, "labels", "clip.xml"), "w") as f:
        f.write(xml)
    return str(root)


def _import(folder: str, name: str):
    import fiftyone as fo
    from deaot_vos.video_io import video_metadata

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset.from_dir(dataset_dir=folder, dataset_type=fo.types.CVATVideoDataset, name=name,
                             label_field="cvat")
    for sample in ds:  # FiftyOne's exporter reads metadata with ffprobe, which this machine lacks
        sample.metadata = video_metadata(sample.filepath)
        sample.save()
    return ds


def _full_mask(detection, h: int, w: int) -> np.ndarray:
    x, y, bw, bh = detection.bounding_box
    x0, y0 = int(round(x * w)), int(round(y * h))
    out = np.zeros((h, w), bool)
    mask = detection.mask.astype(bool)
    out[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] = mask
    return out


def _polygon_mask(polyline, h: int, w: int) -> np.ndarray:
    return _full_mask(polyline.to_detection(frame_size=(w, h)), h, w)


@pytest.fixture
def imported(make_video, tmp_path):
    video, maps = make_video("clip", T, objects=2, height=H, width=W)
    folder = _cvat_folder(tmp_path / "cvat_in", video, _cvat_xml(maps))
    return _import(folder, "cvat_round_trip"), folder


def test_cvat_round_trip_keeps_masks_and_keyframes(imported, tiny_checkpoint, tmp_path):
    import deaot_vos
    from deaot_vos.formats.cvat import import_cvat_masks

    ds, folder = imported
    assert ds.count("frames.cvat_polylines.polylines") == 14  # 2 tracks x 7 frames; the <mask> was dropped
    summary = import_cvat_masks(ds, folder, "cvat_masks")
    assert summary == dict(samples=1, masks=1, frames=1)
    blob, = ds.first().frames[4]["cvat_masks"].detections  # CVAT frame 3 is FiftyOne frame 4
    left, top, mask = _blob()
    assert (blob.index, blob.label, blob.keyframe) == (2, "blob", True)
    assert np.array_equal(blob.mask, mask)
    assert np.allclose(blob.bounding_box, [left / W, top / H, mask.shape[1] / W, mask.shape[0] / H])
    assert ds.count("frames.cvat_masks.detections") == 1

    result = deaot_vos.propagate(ds, "cvat_polylines", "deaot", write_polylines="deaot_polygons",
                                 model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu")
    assert result["samples"][0]["status"] == "ok", result
    keyframes = {n: [p.keyframe for p in ds.first().frames[n]["deaot_polygons"].polylines] for n in range(1, T + 1)}
    assert all(flags and all(flags) == (n - 1 in KEYFRAMES) and len(set(flags)) == 1 for n, flags in keyframes.items()), \
        keyframes

    export = str(tmp_path / "cvat_out")
    ds.export(export_dir=export, dataset_type=__import__("fiftyone").types.CVATVideoDataset,
              frame_labels_field="deaot_polygons")
    xml = ElementTree.parse(os.path.join(export, "labels", "clip.xml")).getroot()
    shapes = [(int(t.attrib["id"]), int(p.attrib["frame"]), p.attrib["keyframe"], p.attrib["outside"])
              for t in xml.iter("track") for p in t.iter("polygon")]
    assert {(f, k) for _, f, k, o in shapes if o == "0"} == {(f, str(int(f in KEYFRAMES))) for f in range(T)}

    back = _import(export, "cvat_round_trip_back")
    ious = []
    for ours, theirs in zip(ds.first().frames.values(), back.first().frames.values()):
        polygons = {p.index: p for p in theirs["cvat_polylines"].polylines}
        for detection in ours["deaot"].detections:
            polygon = polygons[detection.index]
            assert bool(polygon.get_field("keyframe") if polygon.has_field("keyframe") else False) == \
                (ours.frame_number - 1 in KEYFRAMES)
            a, b = _full_mask(detection, H, W), _polygon_mask(polygon, H, W)
            ious.append((a & b).sum() / max((a | b).sum(), 1))
    print(f"polygon round trip: {len(ious)} objects, mean IoU {np.mean(ious):.3f}, min {np.min(ious):.3f}")
    assert len(ious) >= 2 * T and np.mean(ious) >= 0.85

    # for CVAT to keep every propagated shape (it keeps only keyframed ones), export a view that
    # marks them all, as docs/propagation.md shows; the dataset keeps its own marks
    every = str(tmp_path / "cvat_every")
    ds.set_field("frames.deaot_polygons.polylines.keyframe", True).export(
        export_dir=every, dataset_type=__import__("fiftyone").types.CVATVideoDataset, frame_labels_field="deaot_polygons")
    xml = ElementTree.parse(os.path.join(every, "labels", "clip.xml")).getroot()
    flags = {(int(p.attrib["frame"]), p.attrib["keyframe"]) for t in xml.iter("track") for p in t.iter("polygon")
             if p.attrib["outside"] == "0"}
    assert flags == {(f, "1") for f in range(T)}, flags
    assert ds.count_values("frames.deaot_polygons.polylines.keyframe") == {True: 2 * len(KEYFRAMES),
                                                                          False: 2 * (T - len(KEYFRAMES))}


def _add_track(folder: str, track: str) -> tuple[str, str]:
    """Append ``track`` to the folder's clip.xml; returns its path and its text before."""
    xml_path = os.path.join(folder, "labels", "clip.xml")
    with open(xml_path) as f:
        before = f.read()
    with open(xml_path, "w") as f:
        f.write(before.replace("</annotations>", track + "</annotations>"))
    return xml_path, before


def _mask_track(track_id: int, frame: int, rle: str, left: int, top: int, width: int, height: int) -> str:
    return (f'<track id="{track_id}" label="bad" source="manual"><mask frame="{frame}" keyframe="1" outside="0" '
            f'occluded="0" rle="{rle}" left="{left}" top="{top}" width="{width}" height="{height}" z_order="0">'
            f"</mask></track>")


@pytest.mark.parametrize("track, problem", [
    (_mask_track(3, 5, "4, 3, 2", 1, 1, 3, 3), None),  # the control: the same track, well-formed, imports
    (_mask_track(3, 5, "4, 3, 3", 1, 1, 3, 3), "add up to 10 pixels, not width x height = 3 x 3 = 9"),
    (_mask_track(3, 5, "4, -3, 8", 1, 1, 3, 3), "a run length is negative"),
    (_mask_track(3, 5, "4, 3, 2", 94, 1, 3, 3), "leaves the 96x64 video frame"),
    (_mask_track(3, 5, "4, x, 2", 1, 1, 3, 3), "bad rle"),
    (_mask_track(3, 5, "4, 3, 2", 1, 1, 3, 3).replace(' left="1"', ""), "has no 'left' attribute"),
    (_mask_track(3, 12, "4, 3, 2", 1, 1, 3, 3), "the video has 10 frames"),
])
def test_a_bad_mask_shape_names_file_track_and_frame_and_writes_nothing(imported, track, problem):
    from deaot_vos.formats.cvat import CVATMaskError, import_cvat_masks

    ds, folder = imported
    _add_track(folder, track)
    if problem is None:
        assert import_cvat_masks(ds, folder, "cvat_masks")["masks"] == 2
        return
    with pytest.raises(CVATMaskError) as err:
        import_cvat_masks(ds, folder, "cvat_masks")
    frame = 12 if "10 frames" in problem else 5
    assert problem in str(err.value) and "clip.xml: track 3 ('bad'), frame " + str(frame) in str(err.value), err.value
    assert "cvat_masks" not in ds.get_frame_field_schema()  # the good track 2 was not written either


def test_masks_go_to_an_existing_detections_field_only(imported):
    import fiftyone as fo
    from deaot_vos.formats.cvat import CVATMaskError, import_cvat_masks

    ds, folder = imported
    with pytest.raises(CVATMaskError, match="'cvat_polylines' .* holds Polylines, not Detections"):
        import_cvat_masks(ds, folder, "cvat_polylines")
    sample = ds.first()
    sample.frames[4]["masks"] = fo.Detections(detections=[fo.Detection(label="other", index=9,
                                                                       bounding_box=[0, 0, .1, .1])])
    sample.save()
    for _ in range(2):  # importing twice replaces the mask (same index), the other label stays
        import_cvat_masks(ds, os.path.join(folder, "labels", "clip.xml"), "masks")
        assert sorted(d.index for d in ds.first().frames[4]["masks"].detections) == [2, 9]
    with pytest.raises(CVATMaskError, match="no video of the collection named 'other.*'"):
        shutil.copy(os.path.join(folder, "labels", "clip.xml"), os.path.join(folder, "labels", "other.xml"))
        import_cvat_masks(ds, folder, "masks2")
    assert "masks2" not in ds.get_frame_field_schema()


def test_an_incremental_run_adds_the_polygons_without_recomputing(imported, tiny_checkpoint):
    import deaot_vos

    ds, _ = imported
    run = dict(model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu", incremental=True)
    first, = deaot_vos.propagate(ds, "cvat_polylines", "deaot", **run)["samples"]
    assert first["frames_recomputed"] == T and "deaot_polygons" not in ds.get_frame_field_schema()
    second, = deaot_vos.propagate(ds, "cvat_polylines", "deaot", write_polylines="deaot_polygons", **run)["samples"]
    assert (second["frames_recomputed"], second["frames_reused"]) == (0, T), second
    for frame in ds.first().frames.values():
        polygons = frame["deaot_polygons"].polylines
        assert sorted(p.index for p in polygons) == sorted(d.index for d in frame["deaot"].detections)
        assert {p.keyframe for p in polygons} == {frame.frame_number - 1 in KEYFRAMES}
    with pytest.raises(ValueError, match="must be different fields"):
        deaot_vos.propagate(ds, "cvat_polylines", "deaot", write_polylines="cvat_polylines", **run)


def _polygons(ds, field):
    return [[(p.index, p.keyframe, p.points) for p in (frame.polylines if frame else [])]
            for frame in ds.values(f"frames.{field}")[0]]


def test_apply_model_returns_the_same_polygons(imported, tiny_checkpoint):
    import deaot_vos
    from deaot_vos.zoo_model import build_video_model

    ds, _ = imported
    deaot_vos.propagate(ds, "cvat_polylines", "deaot", write_polylines="deaot_polygons", model="DeAOTT",
                        checkpoint=tiny_checkpoint, device="cpu")
    model = build_video_model("DeAOTT", checkpoint=tiny_checkpoint, device="cpu", polylines=True)
    with pytest.raises(ValueError, match="must be different fields"):
        ds.apply_model(model, label_field={"detections": "zoo", "polylines": "cvat_polylines"},
                       prompt_field="frames.cvat_polylines")
    ds.apply_model(model, label_field={"detections": "zoo", "polylines": "zoo_polygons"},
                   prompt_field="frames.cvat_polylines")
    expected = _polygons(ds, "deaot_polygons")
    assert len(expected) == T and all(expected) and _polygons(ds, "zoo_polygons") == expected


def test_the_command_line_imports_the_masks_or_names_the_bad_shape(imported, capsys):
    from deaot_vos.cli import main

    ds, folder = imported
    xml_path, good = _add_track(folder, _mask_track(3, 5, "4, 3, 3", 1, 1, 3, 3))
    assert main(["import-cvat-masks", "--dataset", ds.name, "--xml", folder, "--label-field", "m"]) == 1
    assert "clip.xml: track 3 ('bad'), frame 5 (FiftyOne frame 6): bad rle" in capsys.readouterr().err
    assert "m" not in ds.get_frame_field_schema()
    with open(xml_path, "w") as f:
        f.write(good)
    assert main(["import-cvat-masks", "--dataset", ds.name, "--xml", xml_path, "--label-field", "m"]) == 0
    assert "added 1 mask(s) on 1 frame(s) of 1 video(s) to 'm'" in capsys.readouterr().out
    assert ds.count("frames.m.detections") == 1


def test_a_queued_job_writes_the_polygons_and_an_existing_field_needs_overwrite(imported, tiny_checkpoint):
    import fiftyone as fo
    import deaot_vos
    from deaot_vos.propagation import PropagationOptions, queue_propagation, run_task

    ds, _ = imported
    options = dict(write_polylines="deaot_polygons", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu")
    queued = queue_propagation(ds, "cvat_polylines", "deaot", **options)
    summary = run_task(ds, queued["job"], ds.values("id"),
                       options=PropagationOptions(keyframes_field="cvat_polylines", output_field="deaot", **options))
    assert summary["samples"][0]["status"] == "ok", summary
    ds.reload()
    assert not [name for name in ds.get_frame_field_schema() if "deaot_polygons" in name and name != "deaot_polygons"]
    flags = [{p.keyframe for p in frame.polylines} for frame in ds.values("frames.deaot_polygons")[0]]
    assert flags == [{n - 1 in KEYFRAMES} for n in range(1, T + 1)]
    with pytest.raises(deaot_vos.OutputExistsError, match="'deaot_polygons' already exists") as err:
        deaot_vos.propagate(ds, "cvat_polylines", "deaot2", **options)
    assert err.value.field == "deaot_polygons" and "deaot2" not in ds.get_frame_field_schema()
    ds.add_frame_field("not_polygons", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    with pytest.raises(ValueError, match="'not_polygons' exists with type Detections, not Polylines"):
        deaot_vos.propagate(ds, "cvat_polylines", "deaot", **{**options, "write_polylines": "not_polygons"},
                            overwrite=True)


def test_the_operator_imports_the_masks_or_names_the_bad_shape(imported):
    import fiftyone.operators as foo

    ds, folder = imported
    xml_path, good = _add_track(folder, _mask_track(3, 5, "4, 3, 2", 94, 1, 3, 3))
    with pytest.raises(Exception, match=r"track 3 \('bad'\), frame 5 .*leaves the 96x64 video frame"):
        foo.execute_operator("@deaot/vos/import_cvat_masks", dict(dataset=ds, view=ds.view(), params=dict(
            xml_path=folder, label_field="op_masks")))
    assert "op_masks" not in ds.get_frame_field_schema()
    with open(xml_path, "w") as f:
        f.write(good)
    result = foo.execute_operator("@deaot/vos/import_cvat_masks", dict(dataset=ds, view=ds.view(), params=dict(
        xml_path=folder, label_field="op_masks")))
    assert result.result == dict(samples=1, masks=1, frames=1)
    assert ds.first().frames[4]["op_masks"].detections[0].index == 2


def test_the_polygons_field_follows_the_output_rules(imported, tiny_checkpoint):
    import deaot_vos
    from deaot_vos.propagation.journal import TMP_SUFFIX

    ds, _ = imported
    with pytest.raises(ValueError, match="invalid write_polylines 'p_deaot_tmp': .* reserved"):
        deaot_vos.PropagationOptions(keyframes_field="cvat_polylines", output_field="o", write_polylines="p" + TMP_SUFFIX)
    # a cancelled run leaves neither the output nor the polygons, nor a temporary field
    with pytest.raises(deaot_vos.PropagationCancelled):
        deaot_vos.propagate(ds, "cvat_polylines", "deaot", write_polylines="deaot_polygons", model="DeAOTT",
                            checkpoint=tiny_checkpoint, device="cpu", write_every=2,
                            progress=lambda fraction, label: "frame 6/" not in label)
    ds.reload()
    assert not [name for name in ds.get_frame_field_schema() if name.startswith("deaot")]
