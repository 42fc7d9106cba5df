"""plugin/: keyframe parsing, label conversion, model resolution, and ``deaot_vos.propagate`` on
real (tiny) videos decoded by decord, against a private mongod (see conftest.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from helpers import detection as _det

pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")

REPO = Path(__file__).resolve().parents[1]


def _render(dets, h, w):
    """Label map of rendered detections (value = detection index), FiftyOne's own rendering."""
    out = np.zeros((h, w), dtype=np.int32)
    for d in dets.detections:
        d.to_segmentation(mask=out, target=d.index)
    return out


def _dataset(name):
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    return fo.Dataset(name)


def _video_sample(path, maps, keyframes, kind="detections", label="obj"):
    """A sample whose ``kf`` frame field holds the ground truth of ``keyframes`` (frame numbers)."""
    import fiftyone as fo

    sample = fo.Sample(filepath=path)
    h, w = maps.shape[1:]
    for number in keyframes:
        m = maps[number - 1]
        ids = [int(v) for v in np.unique(m) if v]
        if kind == "detections":
            value = fo.Detections(detections=[_det(label, m == k) for k in ids])
        elif kind == "segmentation":
            value = fo.Segmentation(mask=m.astype(np.uint8))
        else:
            polys = []
            for k in ids:
                ys, xs = np.nonzero(m == k)
                x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
                pts = [(x0 / w, y0 / h), (x1 / w, y0 / h), (x1 / w, y1 / h), (x0 / w, y1 / h)]
                polys.append(fo.Polyline(label=label, points=[pts], closed=True, filled=True))
            value = fo.Polylines(polylines=polys)
        sample.frames[number]["kf"] = value
    return sample


# -- labels ------------------------------------------------------------------------------------

def test_detections_keyframe_parsing_identity_by_index_then_label_order():
    import fiftyone as fo
    from deaot_vos.labels import ObjectRegistry, parse_keyframe

    h, w = 40, 60
    a = np.zeros((h, w), bool); a[5:15, 5:20] = True
    b = np.zeros((h, w), bool); b[20:35, 30:50] = True
    c = np.zeros((h, w), bool); c[2:8, 40:58] = True
    reg = ObjectRegistry()
    k1 = parse_keyframe(fo.Detections(detections=[_det("cat", a), _det("cat", b), _det("dog", c, index=7)]),
                        1, h, w, reg)
    assert k1.objects == [1, 2, 3]
    assert set(np.unique(k1.label_map)) == {0, 1, 2, 3}
    assert (k1.label_map == 1).sum() == a.sum() and np.array_equal(k1.label_map == 2, b)
    # later keyframe: second "cat" by order, "dog" by index, a new "bird"
    k2 = parse_keyframe(fo.Detections(detections=[_det("cat", b), _det("cat", a), _det("bird", c)]), 5, h, w, reg)
    assert k2.objects == [1, 2, 4]
    reg.assign_indexes()
    assert {i.obj_id: i.index for i in reg.by_id.values()} == {1: 1, 2: 2, 3: 7, 4: 3}
    assert set(k2.exact) == {1, 2, 4}


def test_segmentation_and_polylines_keyframes():
    import fiftyone as fo
    from deaot_vos.labels import ObjectRegistry, parse_keyframe

    h, w = 30, 40
    m = np.zeros((h, w), np.uint8); m[2:10, 3:12] = 5; m[15:25, 20:35] = 9
    reg = ObjectRegistry()
    kf = parse_keyframe(fo.Segmentation(mask=m), 3, h, w, reg, mask_targets={5: "car", 9: "person"})
    assert [reg.by_id[o].index for o in kf.objects] == [5, 9]
    assert kf.labels == {1: "car", 2: "person"}
    assert np.array_equal(kf.label_map > 0, m > 0)
    # RGB mask: one object per colour
    rgb = np.zeros((h, w, 3), np.uint8); rgb[2:10, 3:12] = (255, 0, 0)
    kf = parse_keyframe(fo.Segmentation(mask=rgb), 4, h, w, ObjectRegistry())
    assert kf.objects == [1] and (kf.label_map == 1).sum() == 8 * 9
    # a filled square polyline covers its pixels
    poly = fo.Polyline(label="p", points=[[(0.25, 0.2), (0.75, 0.2), (0.75, 0.8), (0.25, 0.8)]], closed=True,
                       filled=True)
    kf = parse_keyframe(fo.Polylines(polylines=[poly]), 1, h, w, ObjectRegistry())
    region = kf.label_map == 1
    ys, xs = np.nonzero(region)
    assert (ys.min(), xs.min()) == (6, 10) and region.sum() > 0.9 * (18 * 20)
    # empty keyframes are not keyframes
    assert parse_keyframe(fo.Detections(), 1, h, w, ObjectRegistry()) is None


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 32 - 1))
def test_label_map_to_detections_round_trips_through_fiftyone_rendering(seed):
    import torch
    from deaot_core import mean_confidences
    from deaot_vos.labels import ObjectRegistry, mask_to_detections, mask_to_segmentation

    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(5, 40)), int(rng.integers(5, 40))
    label_map = rng.integers(0, 4, size=(h, w)) * (rng.random((h, w)) < 0.5)
    reg = ObjectRegistry()
    for k in range(1, 4):
        reg.get(("label", "x", k), "x", 1, index=10 * k)
    probs = rng.random((4, h, w)).astype(np.float32)
    dets = mask_to_detections(label_map, mean_confidences(torch.from_numpy(probs), label_map), reg, {})
    assert np.array_equal(_render(dets, h, w), np.where(label_map > 0, label_map * 10, 0))
    for d in dets.detections:
        k = d.index // 10
        assert d.confidence == pytest.approx(float(probs[k][label_map == k].mean()), rel=1e-5)
    seg = mask_to_segmentation(label_map, reg)
    assert np.array_equal(seg.mask, np.where(label_map > 0, label_map * 10, 0))


# -- model resolution ----------------------------------------------------------------------------

def test_model_resolution_order(tmp_path, monkeypatch, tiny_checkpoint):
    from deaot_core import pretrained
    from deaot_vos import weights as models

    monkeypatch.setenv("DEAOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "DEMO_CHECKPOINT", tmp_path / "missing.pth")
    with pytest.raises(models.ModelUnavailableError, match="R50_DeAOTL_PRE_YTB_DAV.pth"):
        models.resolve_checkpoint("R50_DeAOTL")
    assert models.resolve_checkpoint("deaott", allow_random=True).source == "random"
    monkeypatch.setattr(pretrained, "DEMO_CHECKPOINT", Path(tiny_checkpoint))
    assert models.resolve_checkpoint("R50_DeAOTL") == models.ModelChoice("DeAOTT", tiny_checkpoint, "demo")
    cached = tmp_path / "cache" / "DeAOTL_PRE_YTB_DAV.pth"
    cached.parent.mkdir()
    cached.write_bytes(b"x")
    assert models.resolve_checkpoint("DeAOTL") == models.ModelChoice("DeAOTL", str(cached), "cache")
    assert models.resolve_checkpoint("DeAOTL", tiny_checkpoint).source == "explicit"
    with pytest.raises(models.ModelUnavailableError, match="not found"):
        models.resolve_checkpoint("DeAOTT", str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="unknown model"):
        models.resolve_checkpoint("DeAOTX", tiny_checkpoint)
    assert models.resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ValueError):
        models.resolve_device("tpu")


def test_wrong_checkpoint_is_a_clear_error(make_video, tiny_checkpoint):
    import deaot_core
    import deaot_vos

    path, maps = make_video("v", 6)
    ds = _dataset("t_wrong_ckpt")
    ds.add_sample(_video_sample(path, maps, [1]))
    with pytest.raises(deaot_core.CheckpointError, match="DeAOTS"):
        deaot_vos.propagate(ds, "kf", "out", model="DeAOTS", checkpoint=tiny_checkpoint, device="cpu")
    assert "out" not in ds.get_frame_field_schema()


# -- propagation -------------------------------------------------------------------------------

def test_backward_fill_later_object_and_exact_keyframes(make_video, tiny_checkpoint):
    import fiftyone as fo
    import deaot_vos

    path, maps = make_video("v", 14, objects=2)
    ds = _dataset("t_backward")
    sample = fo.Sample(filepath=path)
    first = maps[4] * (maps[4] == 1)  # frame 5: only object 1
    sample.frames[5]["kf"] = fo.Detections(detections=[_det("red", first == 1)])
    sample.frames[10]["kf"] = fo.Detections(detections=[_det("red", maps[9] == 1), _det("green", maps[9] == 2)])
    ds.add_sample(sample)
    summary = deaot_vos.propagate(ds, "kf", "out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu",
                               write_segmentation="seg")
    row, = summary["samples"]
    assert row["status"] == "ok" and row["frames"] == 14 and row["keyframes"] == [5, 10] and row["objects"] == 2
    sample.reload()
    assert sorted(sample.frames.keys()) == list(range(1, 15))
    for number, frame in sample.frames.items():
        out = frame["out"]
        assert isinstance(out, fo.Detections), number
        assert isinstance(frame["seg"], fo.Segmentation), number
        for d in out.detections:
            assert d.index in (1, 2) and d.label == {1: "red", 2: "green"}[d.index]
            assert 0.0 <= d.confidence <= 1.0
            if number < 10:
                assert d.index == 1, "object 2 exists only from its first keyframe on"
        # the segmentation agrees with the detections
        assert np.array_equal(_render(out, 64, 96), frame["seg"].mask)
    for number, given in ((5, ["red"]), (10, ["red", "green"])):
        out = sample.frames[number]["out"]
        kf = sample.frames[number]["kf"]
        by_label = {d.label: d for d in out.detections}
        for d in kf.detections:
            assert by_label[d.label].bounding_box == d.bounding_box
            assert np.array_equal(by_label[d.label].mask, d.mask)
            assert by_label[d.label].confidence == 1.0
    # the keyframe on frame 10 is authoritative for both objects
    assert np.array_equal(sample.frames[10]["seg"].mask, maps[9].astype(np.uint8))
    assert ds.mask_targets["frames.seg"] == {0: "background", 1: "red", 2: "green"}  # the App names the values
    assert "out_deaot_tmp" not in ds.get_frame_field_schema()


@pytest.mark.parametrize("kind", ["segmentation", "polylines"])
def test_segmentation_and_polyline_keyframes_end_to_end(kind, make_video, tiny_checkpoint):
    import fiftyone as fo
    import deaot_vos

    path, maps = make_video("v", 8)
    ds = _dataset(f"t_{kind}")
    sample = _video_sample(path, maps, [3], kind=kind)
    ds.add_sample(sample)
    if kind == "segmentation":
        ds.mask_targets = {"frames.kf": {1: "red", 2: "green"}}
    deaot_vos.propagate(ds, "kf", "out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu")
    sample.reload()
    assert [n for n, f in sample.frames.items() if isinstance(f["out"], fo.Detections)] == list(range(1, 9))
    key = sample.frames[3]["out"]
    assert sorted(d.index for d in key.detections) == [1, 2]
    if kind == "segmentation":
        assert sorted(d.label for d in key.detections) == ["green", "red"]
        assert np.array_equal(_render(key, 64, 96), maps[2])


def test_refuse_existing_output_overwrite_subset_and_cancel(make_video, tiny_checkpoint):
    import fiftyone as fo
    import deaot_vos

    ds = _dataset("t_fields")
    ids = []
    for name in ("a", "b"):
        path, maps = make_video(name, 6)
        sample = _video_sample(path, maps, [1])
        ds.add_sample(sample)
        ids.append(sample.id)
    run = dict(model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu")
    deaot_vos.propagate(ds, "kf", "out", **run)
    before = ds.values("frames.out")

    with pytest.raises(deaot_vos.OutputExistsError, match="'out' already exists.*pass overwrite=True"):
        deaot_vos.propagate(ds, "kf", "out", **run)
    assert ds.values("frames.out") == before

    # cancelled overwrite: nothing changes, no temporary field remains
    calls = []

    def cancel(fraction, label):
        calls.append(fraction)
        return False if len(calls) == 3 else None

    schema = list(ds.get_frame_field_schema())
    with pytest.raises(deaot_vos.PropagationCancelled):
        deaot_vos.propagate(ds, "kf", "out", overwrite=True, progress=cancel, **run)
    assert list(ds.get_frame_field_schema()) == schema
    assert ds.values("frames.out") == before

    # overwrite on a subset view: the other sample keeps its values
    ds.set_values("frames.out", {ids[1]: {1: fo.Detections(detections=[fo.Detection(label="keep")])}},
                  key_field="id")
    kept = ds.select(ids[1]).values("frames.out")
    summary = deaot_vos.propagate(ds.select(ids[0]), "kf", "out", overwrite=True, **run)
    assert [r["id"] for r in summary["samples"]] == [ids[0]]
    assert ds.select(ids[1]).values("frames.out") == kept
    assert ds.select(ids[0]).values("frames.out") != ds.select(ids[1]).values("frames.out")
    assert list(ds.get_frame_field_schema()) == schema

    # a failure mid-run (unreadable video) leaves the field as it was
    bad = fo.Sample(filepath=str(Path(ds.first().filepath).with_name("missing.mp4")))
    bad.frames[1]["kf"] = ds.first().frames[1]["kf"]
    ds.add_sample(bad)
    current = ds.values("frames.out")
    with pytest.raises(deaot_vos.VideoError):
        deaot_vos.propagate(ds, "kf", "out", overwrite=True, **run)
    assert ds.values("frames.out") == current and list(ds.get_frame_field_schema()) == schema
    summary = deaot_vos.propagate(ds, "kf", "out", overwrite=True, skip_failures=True, **run)
    assert [r["status"][:5] for r in summary["samples"]] == ["ok", "ok", "error"]


def test_frame_count_from_decord_and_metadata(make_video, tiny_checkpoint):
    import fiftyone as fo
    import deaot_vos

    ds = _dataset("t_meta")
    path, maps = make_video("m", 10)
    no_meta = _video_sample(path, maps, [2])
    capped = _video_sample(path, maps, [2])
    capped.metadata = fo.VideoMetadata(total_frame_count=7, frame_width=96, frame_height=64, frame_rate=10.0)
    ds.add_samples([no_meta, capped])
    summary = deaot_vos.propagate(ds, "kf", "out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu")
    assert [r["frames"] for r in summary["samples"]] == [10, 7]
    counts = ds.values(fo.ViewField("frames").filter(fo.ViewField("out") != None).length())  # noqa: E711
    assert counts == [10, 7]


def test_cli_propagate(make_video, tiny_checkpoint):
    import fiftyone as fo

    path, maps = make_video("c", 6)
    ds = _dataset("t_cli")
    ds.persistent = True
    try:
        ds.add_sample(_video_sample(path, maps, [2]))
        cmd = [sys.executable, "-m", "deaot_vos", "propagate", "--dataset", ds.name, "--keyframes-field", "kf",
               "--output-field", "out", "--model", "DeAOTT", "--checkpoint", tiny_checkpoint, "--device", "cpu"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "frames" in done.stdout
        ds.reload()
        assert ds.count("frames.out") == 6
        again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode != 0 and "already exists" in again.stderr
        assert "pass --overwrite to replace it" in again.stderr and "overwrite=True" not in again.stderr
        bad = subprocess.run(cmd + ["--overwrite", "--test-scales", "1.0", "0"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        assert bad.returncode == 1 and "test_scales" in bad.stderr
        ds.reload()
        assert ds.count("frames.out") == 6  # nothing was lost
        tta = subprocess.run(cmd + ["--overwrite", "--test-scales", "0.8", "1.0", "--test-flip"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        assert tta.returncode == 0, tta.stderr[-3000:]
        ds.reload()
        assert ds.count("frames.out") == 6 and ds.count("frames.out.detections") > 0
    finally:
        fo.delete_dataset(ds.name)


def test_demo_dataset_and_synthetic_propagation(tmp_path, tiny_checkpoint):
    import decord
    import fiftyone as fo
    import deaot_vos
    from deaot_vos import demo

    name = "t_demo"
    try:
        ds = demo.build_dataset(name, real_clips=True, workdir=tmp_path)
        assert ds.persistent and len(ds) == 3
        assert ds.values("metadata.total_frame_count") == [48, 45, 44]
        assert ds.values("metadata.frame_width") == [384, 480, 480]
        for path, count in zip(ds.values("filepath"), (48, 45, 44)):
            assert len(decord.VideoReader(path)) == count
        keyframes = ds.values(fo.ViewField("frames").filter(fo.ViewField(demo.KEYFRAMES_FIELD) != None)  # noqa: E711
                              .map(fo.ViewField(demo.KEYFRAMES_FIELD + ".detections").length()))
        assert keyframes == [[3, 4], [44], [43]]
        # the App tells the objects apart: one label each, one colour each (colour by instance)
        for sample in ds.match_tags("aot-demo"):
            labels = [d.label for d in sample.frames[1][demo.KEYFRAMES_FIELD].detections]
            assert len(set(labels)) == len(labels), labels[:5]
        ds.reload()
        assert ds.app_config.color_scheme.color_by == "instance"
        synthetic = ds.match_tags("synthetic")
        summary = deaot_vos.propagate(synthetic, demo.KEYFRAMES_FIELD, demo.OUTPUT_FIELD, model="DeAOTT",
                                   checkpoint=tiny_checkpoint, device="cpu", max_long_edge=192)
        assert summary["samples"][0]["frames_written"] == 48
        assert synthetic.count(f"frames.{demo.OUTPUT_FIELD}") == 48
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_reserved_fields_without_a_journal_are_left_alone(make_video, tiny_checkpoint):
    """An older version's killed swap left ``out_deaot_old`` (and a temporary field): no journal
    owns them, so they are refused with a hint and left untouched (they are never deleted or
    renamed by name alone); the killed runs of this version are settled through their journal
    (tests/test_journal.py)."""
    import fiftyone as fo
    import deaot_vos

    path, maps = make_video("k", 5)
    ds = _dataset("t_killed")
    ds.add_sample(_video_sample(path, maps, [1]))
    run = dict(model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu")
    deaot_vos.propagate(ds, "kf", "out", **run)
    before = ds.values("frames.out")
    ds.rename_frame_field("out", "out_deaot_old")
    with pytest.raises(ValueError, match=r"rename it back: dataset.rename_frame_field\('out_deaot_old', 'out'\)"):
        deaot_vos.propagate(ds, "kf", "out", **run)
    ds.add_frame_field("out_deaot_tmp", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    with pytest.raises(ValueError, match="'out_deaot_tmp' that no run of this plugin owns"):
        deaot_vos.propagate(ds, "kf", "out", **run)
    schema = ds.get_frame_field_schema()
    assert "out_deaot_old" in schema and "out_deaot_tmp" in schema and "out" not in schema
    assert ds.values("frames.out_deaot_old") == before


def test_every_frame_number_gets_its_own_frame(make_video, tiny_checkpoint):
    """The colour-segmenting scripted tracker (tests/fakes.py) labels each frame from the frame
    itself: every output frame must be the frame of that number, forward and backward."""
    import fiftyone as fo
    import deaot_vos
    from fakes import Script

    path, maps = make_video("o", 40)  # longer than a backward decoding chunk
    ds = _dataset("t_oracle")
    sample = _video_sample(path, maps, [23], label="obj")
    ds.add_sample(sample)
    deaot_vos.propagate(ds, "kf", "out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu",
                        tracker_factory=Script())
    sample.reload()
    for number in range(1, 41):
        rendered = _render(sample.frames[number]["out"], 64, 96)
        for k in (1, 2):
            gt, pred = maps[number - 1] == k, rendered == k
            iou = (gt & pred).sum() / max((gt | pred).sum(), 1)
            assert iou > 0.9, (number, k, iou)


def test_prefetch_keeps_order_raises_in_place_and_stops_when_closed():
    import threading

    from deaot_vos.video_io import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ValueError("frame 3 is broken")

    got = []
    with pytest.raises(ValueError, match="frame 3"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [1, 2]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    stream = prefetch(endless(), depth=2)
    assert [next(stream) for _ in range(5)] == list(range(5))
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "deaot-decode"]
    assert len(produced) <= 5 + 2 + 2  # the producer ran at most the queue depth ahead


def test_background_writer_runs_in_order_and_reports_errors():
    from deaot_vos.propagation import BackgroundWriter

    done = []
    writer = BackgroundWriter()
    for i in range(5):
        writer.submit(done.append, i)
    writer.close()
    assert done == list(range(5))

    def broken(_):
        raise OSError("database went away")

    writer = BackgroundWriter()
    writer.submit(broken, 1)
    with pytest.raises(OSError, match="went away"):
        writer.submit(done.append, 99)  # the error surfaces at the next write
    writer.submit(broken, 2)
    writer.close(raise_errors=False)  # already failing: the caller's error wins
