"""The App's own annotation loop on a video, through a real App server: the user draws masks on
two frames of a field, the run propagates them, the user corrects one object on a later frame of
the OUTPUT field, then on a frame after that, and incremental re-runs take each correction as a
keyframe. Every user edit goes through the App's own write path: a JSON patch
(``application/json-patch+json``, ``If-Match`` version token) to the server's
``PATCH /dataset/<dataset id>/sample/<sample id>``, with exactly the operations the App's
annotation store sends (new labels appended with ``instance`` and ``keyframe``, the App's
follow-up edits of neighbouring frames included); masks as the App encodes them (uint8 ``.npy``,
deflate, base64). Then the server's ``/video-labels/index`` (the App's timeline) must show the
keyframe marks, and headless Chromium opens the video in the App (screenshot in the test's tmp
folder)."""
from __future__ import annotations

import base64
import io
import json
import urllib.request
import zlib

import numpy as np
import pytest
from bson import ObjectId

from browser_app import AppServer, Browser, data_cy, require_chromium, text_is

pytestmark = pytest.mark.usefixtures("fiftyone_db")

DATASET = "t_app_annotation"
T, H, W = 14, 96, 160
A_FRAME, B_FRAME = 2, 6  # the user draws object A ("car") on frame 2, object B ("car") on frame 6
FIRST_FIX, SECOND_FIX = 9, 12  # the user corrects A in the output on these frames
EXTEND = 30  # the App copies a new label to the next 30 frames (keyframe=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory, fiftyone_db):
    """FiftyOne's App server on this session's database, in its own process."""
    folder = tmp_path_factory.mktemp("app_annotation")
    app = AppServer(folder / "app-server.log").launch()
    try:
        yield app, folder
    finally:
        app.stop()


@pytest.fixture
def video_dataset(tmp_path):
    """One H.264 video (what the App's Chromium plays) of two moving rectangles, its ground-truth
    label maps, and an empty Detections frame field ``annotations`` for the user to draw in."""
    import fiftyone as fo
    from conftest import synthetic_label_maps
    from deaot_vos.demo import synthetic_frames
    from deaot_vos.video_io import video_metadata, write_mp4

    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)
    maps = synthetic_label_maps(T, height=H, width=W, objects=2)
    path = tmp_path / "drive.mp4"
    assert write_mp4(synthetic_frames(maps.astype(np.uint8)), path, fps=8) == "h264"
    dataset = fo.Dataset(DATASET)
    dataset.add_sample(fo.Sample(filepath=str(path), metadata=video_metadata(path)))
    dataset.add_frame_field("annotations", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    yield dataset, maps
    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)


# -- the App's write path --------------------------------------------------------------------

def app_mask(mask: np.ndarray) -> str:
    """A mask as the App's mask canvas encodes it: uint8 0/1 ``.npy``, deflate, base64."""
    buffer = io.BytesIO()
    np.save(buffer, (np.asarray(mask) > 0).astype(np.uint8))
    return base64.b64encode(zlib.compress(buffer.getvalue())).decode()


def box_and_mask(region: np.ndarray) -> tuple[list[float], np.ndarray]:
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return [x0 / W, y0 / H, (x1 - x0) / W, (y1 - y0) / H], region[y0:y1, x0:x1]


def app_patch(server: AppServer, dataset, operations: list[dict]) -> dict:
    """Send ``operations`` as the App does (its sample PATCH with the sample's version token);
    returns the server's reply (the saved sample)."""
    sample = dataset.first()
    sample.reload()
    request = urllib.request.Request(
        f"{server.url}/dataset/{dataset._doc.id}/sample/{sample.id}", method="PATCH",
        data=json.dumps(operations).encode(),
        headers={"Content-Type": "application/json-patch+json",
                 "If-Match": f'"{sample.last_modified_at.isoformat()}"'})
    with urllib.request.urlopen(request, timeout=60) as reply:
        assert reply.status == 200
        return json.loads(reply.read())


def draw(field: str, label: str, region_at, frame: int) -> list[dict]:
    """The App's operations when the user draws a new mask on ``frame``: the label (a new
    ``instance``, ``keyframe=True``), copied to the next frames with ``keyframe=False``."""
    instance = {"_cls": "Instance", "_id": {"$oid": str(ObjectId())}}
    box, mask = box_and_mask(region_at(frame))
    content = {"_cls": "Detection", "label": label, "bounding_box": box, "mask": app_mask(mask),
               "instance": instance}
    return [{"op": "add", "path": f"/frames/{n}/{field}/detections/-",
             "value": {**content, "_id": {"$oid": str(ObjectId())}, "keyframe": n == frame}}
            for n in range(frame, min(frame + EXTEND, T) + 1)]


def correct(dataset, field: str, index: int, frame: int, region: np.ndarray, follow: dict[int, list]) -> list[dict]:
    """The App's operations when the user repaints object ``index`` on ``frame`` of ``field``:
    its box and mask replaced and ``keyframe`` set; ``follow``: frame -> the box the App then
    writes on that frame of the same track (``keyframe=False``): the App copies the new box to the
    frames after a track's last keyframe and interpolates boxes between two keyframes."""
    box, mask = box_and_mask(region)
    ops = []
    for number, new_box in [(frame, box)] + sorted(follow.items()):
        position = _position(dataset, field, number, index)
        base = f"/frames/{number}/{field}/detections/{position}"
        ops += [{"op": "replace", "path": base + "/bounding_box", "value": new_box},
                {"op": "add", "path": base + "/keyframe", "value": number == frame}]
        if number == frame:
            ops.append({"op": "replace", "path": base + "/mask", "value": app_mask(mask)})
    return ops


def _position(dataset, field: str, number: int, index: int) -> int:
    dets = dataset.first().frames[number][field].detections
    return next(i for i, d in enumerate(dets) if d.index == index)


def video_labels_index(server: AppServer, dataset, fields: list[str]) -> dict:
    """What the App's timeline reads: the server's per-track index of ``fields``."""
    body = json.dumps({"dataset": dataset.name, "view": [], "sampleId": dataset.first().id,
                       "fields": fields}).encode()
    request = urllib.request.Request(f"{server.url}/video-labels/index", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())


# -- reading the result ----------------------------------------------------------------------

def frames_of(dataset, field: str, ids: bool = True) -> dict[int, list[tuple]]:
    """frame number -> [(id, label, index, box, mask bytes, keyframe mark)] of ``field`` (the
    label ids left out without ``ids``)."""
    numbers, values = dataset.values(["frames.frame_number", f"frames.{field}"])
    return {n: [(d.id if ids else None, d.label, d.index, list(d.bounding_box), np.asarray(d.mask).tobytes(),
                 d["keyframe"] if d.has_field("keyframe") else None) for d in v.detections]
            for n, v in zip(numbers[0], values[0]) if v is not None}


def label_of(dataset, field: str, frame: int, index: int):
    return next(d for d in dataset.first().frames[frame][field].detections if d.index == index)


def rendered(dataset, field: str, frame: int, index: int) -> np.ndarray:
    from deaot_vos.labels import render_detection

    return render_detection(label_of(dataset, field, frame, index), H, W)


def run(dataset, tiny_checkpoint) -> dict:
    import deaot_vos

    row, = deaot_vos.propagate(dataset, "annotations", "out", model="DeAOTT", checkpoint=tiny_checkpoint,
                               device="cpu", incremental=True)["samples"]
    assert row["status"] == "ok", row
    return row


def test_the_apps_annotation_loop_draw_propagate_correct_rerun(server, video_dataset, tiny_checkpoint, tmp_path,
                                                               monkeypatch, torch_threads):
    from deaot_vos.fields import likely_keyframes_field

    app, folder = server
    dataset, maps = video_dataset
    monkeypatch.setenv("DEAOT_CACHE", str(tmp_path / "cache"))
    app.wait_ready()

    # 1. the user draws A on frame 2 and B (same class) on frame 6 of `annotations`
    app_patch(app, dataset, draw("annotations", "car", lambda n: maps[n - 1] == 1, A_FRAME))
    app_patch(app, dataset, draw("annotations", "car", lambda n: maps[n - 1] == 2, B_FRAME))
    drawn = frames_of(dataset, "annotations")
    assert sorted(drawn) == list(range(A_FRAME, T + 1)) and len(drawn[B_FRAME]) == 2

    # 2. propagate: only the marked labels are keyframes, A and B are two objects (by instance)
    first = run(dataset, tiny_checkpoint)
    assert first["keyframes"] == [A_FRAME, B_FRAME] and first["objects"] == 2, first
    a_index = next(d.index for d in dataset.first().frames[A_FRAME]["out"].detections)
    b_index = next(d.index for d in dataset.first().frames[B_FRAME]["out"].detections if d.index != a_index)
    assert np.array_equal(rendered(dataset, "out", A_FRAME, a_index), maps[A_FRAME - 1] == 1)
    assert np.array_equal(rendered(dataset, "out", B_FRAME, b_index), maps[B_FRAME - 1] == 2)
    before = frames_of(dataset, "out")

    # 3. the user repaints A on frame 9 of the output (smaller); the App copies its box onwards
    fix = np.zeros((H, W), bool)
    fix[30:44, 60:80] = True
    box, _ = box_and_mask(fix)
    user_label_id = label_of(dataset, "out", FIRST_FIX, a_index).id
    app_patch(app, dataset, correct(dataset, "out", a_index, FIRST_FIX, fix,
                                    {n: box for n in range(FIRST_FIX + 1, T + 1)}))
    second = run(dataset, tiny_checkpoint)
    assert second["keyframes"] == [A_FRAME, B_FRAME, FIRST_FIX], second
    assert (second["frames_recomputed"], second["frames_reused"]) == (T - FIRST_FIX + 1, FIRST_FIX - 1), second
    after = frames_of(dataset, "out")
    assert all(after[n] == before[n] for n in range(1, FIRST_FIX)), "a frame before the correction changed"
    assert all(after[n] != before[n] for n in range(FIRST_FIX + 1, T + 1)), "a frame after it kept its labels"
    assert all(label_of(dataset, "out", n, a_index).bounding_box != box for n in range(FIRST_FIX + 1, T + 1)), \
        "the App's copied box was kept"
    corrected = label_of(dataset, "out", FIRST_FIX, a_index)
    assert (corrected.id, corrected["keyframe"], corrected.confidence) == (user_label_id, True, 1.0)
    assert np.array_equal(rendered(dataset, "out", FIRST_FIX, a_index), fix)
    assert frames_of(dataset, "annotations") == drawn, "the user's annotations changed"
    assert likely_keyframes_field(dataset) == "annotations", "the form would propose the output (it has marks now)"

    # 4. a second correction of A on frame 12: the App interpolates A's boxes on frames 10-11
    # (between its keyframes 9 and 12) and copies the new box to 13-14
    fix2 = np.zeros((H, W), bool)
    fix2[40:60, 70:96] = True
    box2, _ = box_and_mask(fix2)
    follow = {n: [b + (c - b) * (n - FIRST_FIX) / (SECOND_FIX - FIRST_FIX) for b, c in zip(box, box2)]
              for n in range(FIRST_FIX + 1, SECOND_FIX)}
    follow.update({n: box2 for n in range(SECOND_FIX + 1, T + 1)})
    app_patch(app, dataset, correct(dataset, "out", a_index, SECOND_FIX, fix2, follow))
    third = run(dataset, tiny_checkpoint)
    assert third["keyframes"] == [A_FRAME, B_FRAME, FIRST_FIX, SECOND_FIX], third
    assert (third["frames_recomputed"], third["frames_reused"]) == (T - FIRST_FIX, FIRST_FIX), third
    final, after = frames_of(dataset, "out", ids=False), {n: [(None,) + x[1:] for x in v] for n, v in after.items()}
    assert all(final[n] == after[n] for n in range(1, SECOND_FIX)), \
        "a frame before the second correction differs from the run before it (the App's interpolated boxes kept?)"
    assert np.array_equal(rendered(dataset, "out", SECOND_FIX, a_index), fix2)
    assert np.array_equal(rendered(dataset, "out", FIRST_FIX, a_index), fix), "the first correction was lost"
    assert frames_of(dataset, "annotations") == drawn, "the user's annotations changed"

    # 5. the App's timeline (the server's /video-labels/index) shows the keyframe marks
    index = video_labels_index(app, dataset, ["annotations", "out"])
    drawn_keyframes = sorted(tuple(i["keyframes"]) for i in index["annotations"]["instances"])
    assert drawn_keyframes == [(A_FRAME,), (B_FRAME,)], index["annotations"]
    out_tracks = {i["instanceId"]: i for i in index["out"]["instances"]}
    assert out_tracks[f"track-{a_index}"]["keyframes"] == [FIRST_FIX, SECOND_FIX], out_tracks
    assert out_tracks[f"track-{a_index}"]["segments"] == [[1, T]], out_tracks
    assert out_tracks[f"track-{b_index}"]["segments"] == [[B_FRAME, T]], out_tracks  # B first drawn on 6
    # the App annotates the fields of the dataset's active label schemas (its Annotate tab's "Add schema")
    dataset.set_label_schemas(dataset.generate_label_schemas(["frames.annotations", "frames.out"], scan_samples=False))
    dataset.activate_label_schemas()
    _screenshot_in_the_app(app, folder, dataset)


def _screenshot_in_the_app(app: AppServer, folder, dataset) -> None:
    """Headless Chromium opens the video in the App: the sidebar counts the labels of both fields,
    the Annotate tab's timeline shows a keyframe on each drawn and each corrected frame (8 fps:
    frame n at (n - 1) / 8 s); the view of the second corrected frame is kept in ``folder``."""
    chromium, chromedriver = require_chromium()
    browser = Browser(chromium, chromedriver, folder, app)
    try:
        with browser.step("open-video"):
            browser.driver.get(f"{app.url}/datasets/{dataset.name}?id={dataset.first().id}")
            browser.visible(data_cy("modal-looker-container"), timeout=90)
            for field, count in (("frames.annotations", 22), ("frames.out", 23)):  # labels in the field
                browser.visible(f"//*[normalize-space()='{field}']/ancestor::*[.//*[normalize-space()='{count}']][1]")
        with browser.step("annotate-timeline"):
            browser.clickable(text_is("Annotate")).click()
            for frame in (A_FRAME, B_FRAME, FIRST_FIX, SECOND_FIX):
                browser.wait(lambda d, f=frame: browser.find_all(f"//*[@title='Keyframe  @ {(f - 1) / 8:.3f}s']"),
                             message=f"no keyframe on frame {frame} in the App's timeline")
            step = browser.clickable("//*[@data-testid='timeline-controls-step-forward']")
            for _ in range(SECOND_FIX - 1):
                step.click()
            browser.clickable("//*[@aria-label='Show tracks']").click()
            browser.wait(lambda d: browser.find_all(f"//*[@data-cy-frame='{SECOND_FIX}']"),
                         message=f"the annotation surface did not reach frame {SECOND_FIX}")
            shot = browser.screenshot("app-annotation-corrected-frame")
        assert shot.stat().st_size > 10_000
    finally:
        browser.close()


def test_a_correction_that_cannot_be_used_is_refused_naming_the_field_and_frame(make_video, tiny_checkpoint):
    """A label marked keyframe=True in the output whose mask is empty: the run refuses before it
    writes, naming the sample, the output field and the frame; the output is unchanged."""
    import fiftyone as fo
    import deaot_vos
    from deaot_vos.labels import KeyframeError
    from helpers import detection, fresh_dataset

    path, maps = make_video("bad_fix", 6)
    dataset = fresh_dataset("t_app_annotation_bad")
    sample = fo.Sample(filepath=path)
    sample.frames[1]["kf"] = fo.Detections(detections=[detection("car", maps[0] == 1)])
    sample.frames[4]["out"] = fo.Detections(detections=[
        fo.Detection(label="car", index=1, bounding_box=[0.1, 0.1, 0.2, 0.2], mask=np.zeros((4, 4), bool),
                     keyframe=True)])
    dataset.add_sample(sample)
    before = dataset.values("frames.out")
    with pytest.raises(KeyframeError) as caught:
        deaot_vos.propagate(dataset, "kf", "out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu",
                            incremental=True)
    message = str(caught.value)
    assert dataset.first().id in message and "frame 4" in message and "output field 'out'" in message, message
    assert "empty instance mask" in message, message
    assert dataset.values("frames.out") == before
    fo.delete_dataset(dataset.name)


def test_a_correction_on_a_keyframe_replaces_that_object_only_and_an_overwrite_run_keeps_it(
        make_video, tiny_checkpoint):
    """Frame 1 is a keyframe of the keyframes field (objects 1 and 2) and holds a correction of
    object 2 in the output: the run (``overwrite``, not incremental) takes object 1 from the
    keyframes field and object 2 from the correction, and writes the user's label back."""
    import fiftyone as fo
    import deaot_vos
    from helpers import detection, fresh_dataset

    path, maps = make_video("fix_on_keyframe", 6, height=H, width=W)
    dataset = fresh_dataset("t_app_annotation_merge")
    sample = fo.Sample(filepath=path)
    sample.frames[1]["kf"] = fo.Detections(detections=[detection("car", maps[0] == k, index=k) for k in (1, 2)])
    fix = np.zeros((H, W), bool)
    fix[60:80, 100:130] = True
    user_label = detection("truck", fix, index=2, keyframe=True, tags=["fixed"])
    sample.frames[1]["out"] = fo.Detections(detections=[user_label])
    dataset.add_sample(sample)
    row, = deaot_vos.propagate(dataset, "kf", "out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu",
                               overwrite=True)["samples"]
    assert row["status"] == "ok" and row["keyframes"] == [1] and row["objects"] == 2, row
    assert np.array_equal(rendered(dataset, "out", 1, 1), maps[0] == 1)
    assert np.array_equal(rendered(dataset, "out", 1, 2), fix)
    kept = label_of(dataset, "out", 1, 2)
    assert (kept.id, kept.label, kept.tags, kept["keyframe"]) == (user_label.id, "truck", ["fixed"], True)
    assert not label_of(dataset, "out", 1, 1).has_field("keyframe")  # the keyframes field's copy is not a correction
    fo.delete_dataset(dataset.name)


def test_renaming_an_object_on_a_propagated_frame_survives_an_incremental_run(make_video, tiny_checkpoint):
    """A class name changed on a propagated frame (the App does not mark such an edit keyframe):
    the frame's geometry is as the run wrote it, so an incremental run keeps the frame, renamed."""
    import fiftyone as fo
    import deaot_vos
    from helpers import detection, fresh_dataset

    path, maps = make_video("rename_on_frame", 6)
    dataset = fresh_dataset("t_app_annotation_rename")
    sample = fo.Sample(filepath=path)
    sample.frames[1]["kf"] = fo.Detections(detections=[detection("car", maps[0] == 1)])
    dataset.add_sample(sample)
    run = dict(model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu")
    deaot_vos.propagate(dataset, "kf", "out", **run)
    frame = dataset.first().frames[4]
    frame["out"].detections[0].label = "truck"
    frame.save()
    row, = deaot_vos.propagate(dataset, "kf", "out", incremental=True, **run)["samples"]
    assert row["status"] == "ok" and row["frames_recomputed"] == 0, row
    assert [d.label for d in dataset.first().frames[4]["out"].detections] == ["truck"]
    fo.delete_dataset(dataset.name)
