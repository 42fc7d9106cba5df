"""Box and point keyframes: a detection without a mask (a box) or a keypoint (points) becomes a mask on its
keyframe, which then propagates like a drawn mask, the same through ``propagate``, the CLI, the operator and
``apply_model``; the user's keyframe field is never changed. Boxes without a model go through
``deaot_vos.box_masks``; boxes and points with a prompt model go through a real FiftyOne SAM 2 image model
(random weights, a reduced hiera tiny) loaded by zoo name from a custom zoo manifest. Real database, real
videos, the real DeAOTT with the shipped demo checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import detection
from test_zoo import _frames

pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")

REPO = Path(__file__).resolve().parents[1]
URI = "@deaot/vos/propagate_masks"
SAM2_NAME = "deaot-test-sam2-hiera-tiny-random-image-torch"
# SAM 2.1 hiera tiny, made lighter still (fewer, narrower trunk blocks) so a CPU test runs it in seconds
SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SAM2_OVERRIDES = ["++model.image_encoder.trunk.stages=[1,1,2,1]", "++model.image_encoder.trunk.global_att_blocks=[3]",
                  "++model.image_encoder.trunk.embed_dim=32",
                  "++model.image_encoder.neck.backbone_channel_list=[256,128,64,32]"]


def _box(label: str, region: np.ndarray, index: int | None = None, **kwargs):
    """fo.Detection with the bounding box of ``region`` and no mask: a box keyframe."""
    det = detection(label, region, index=index, **kwargs)
    det.mask = None
    return det


def _box_dataset(make_video, name: str = "boxes", num_frames: int = 10):
    """One video: frame 1 holds the two objects as boxes (red with index 11), frame 7 as masks."""
    import fiftyone as fo

    path, maps = make_video(name, num_frames=num_frames)
    dataset = fo.Dataset()
    sample = fo.Sample(filepath=path)
    sample.frames[1]["kf"] = fo.Detections(detections=[_box("red", maps[0] == 1, 11), _box("green", maps[0] == 2)])
    sample.frames[7]["kf"] = fo.Detections(detections=[detection("red", maps[6] == 1, 11),
                                                       detection("green", maps[6] == 2)])
    dataset.add_sample(sample)
    return dataset, path, maps


def _keyframe_field(dataset, field: str = "kf") -> dict:
    numbers, values = dataset.values(["frames.frame_number", "frames." + field])
    return {n: repr(v) for n, v in zip(numbers[0], values[0]) if v is not None}


def _full_mask(det, height: int, width: int) -> np.ndarray:
    """The detection's mask on the frame (box corners rounded, the App's convention)."""
    x, y, w, h = det.bounding_box
    x0, y0, x1, y1 = (int(round(v)) for v in (x * width, y * height, (x + w) * width, (y + h) * height))
    canvas = np.zeros((height, width), dtype=bool)
    mask = np.asarray(det.mask, dtype=bool)
    assert mask.shape == (y1 - y0, x1 - x0), (mask.shape, (x0, y0, x1, y1))
    canvas[max(y0, 0):y1, max(x0, 0):x1] = mask[max(-y0, 0):, max(-x0, 0):][:height - max(y0, 0), :width - max(x0, 0)]
    return canvas


def _keyframe_outputs(dataset, field: str, number: int) -> dict:
    value = dataset.first().frames[number][field]
    return {d.index: d for d in value.detections}


def _offline_masks(path: str, dataset, number: int) -> dict:
    """index -> full-frame mask that deaot_vos.box_masks makes from the frame's boxes (red: 11, green: 1)."""
    from deaot_vos.box_masks import masks_from_boxes
    from deaot_vos.video_io import open_video

    frame = open_video(path).frame(number)
    height, width = frame.shape[:2]
    dets = dataset.first().frames[number]["kf"].detections
    boxes = []
    for d in dets:
        x, y, w, h = d.bounding_box
        boxes.append([round(x * width), round(y * height), round((x + w) * width), round((y + h) * height)])
    masks = masks_from_boxes(frame, np.array(boxes, dtype=float))
    return {11: masks[0], 1: masks[1]}


def _zoo_model(**options):
    from deaot_vos import PropagationOptions
    from deaot_vos.zoo_model import DeAOTVideoModel

    return DeAOTVideoModel(PropagationOptions(keyframes_field="kf", device="cpu", **options))


def _cli(dataset, output: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "deaot_vos", "propagate", "--dataset", dataset.name, "--keyframes-field", "kf",
               "--output-field", output, "--device", "cpu", *extra]
    return subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})), capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def test_box_keyframes_give_the_same_output_from_every_entry_point(make_video):
    import fiftyone.operators as foo

    import deaot_vos

    dataset, path, maps = _box_dataset(make_video)
    dataset.persistent = True  # the CLI opens it by name in another process
    try:
        given = _keyframe_field(dataset)
        deaot_vos.propagate(dataset, "kf", "api", device="cpu")
        done = _cli(dataset, "cli")
        assert done.returncode == 0, done.stderr[-3000:]
        result = foo.execute_operator(URI, dict(dataset=dataset, view=dataset.view(),
                                                params=dict(keyframes_field="kf", output_field="op", device="cpu")))
        assert result.result["status"] == "ok", result.result
        dataset.apply_model(_zoo_model(), label_field="zoo", prompt_field="frames.kf")
        dataset.reload()

        api = _frames(dataset, "api")
        assert sorted(api) == list(range(1, 11))
        assert _frames(dataset, "cli") == api and _frames(dataset, "op") == api and _frames(dataset, "zoo") == api
        assert _keyframe_field(dataset) == given, "the keyframe field is unchanged (its boxes have no mask)"
        assert all(d.mask is None for d in dataset.first().frames[1]["kf"].detections)

        height, width = maps.shape[1:]
        expected = _offline_masks(path, dataset, 1)
        out = _keyframe_outputs(dataset, "api", 1)
        assert sorted(out) == [1, 11] and out[11].label == "red" and out[1].label == "green"
        given_boxes = {11: dataset.first().frames[1]["kf"].detections[0].bounding_box,
                       1: dataset.first().frames[1]["kf"].detections[1].bounding_box}
        for index, det in out.items():
            assert det.bounding_box == given_boxes[index], "the keyframe output keeps the given box"
            assert np.array_equal(_full_mask(det, height, width), expected[index]), "and carries the box's mask"
        assert all(sorted(d[1] for d in api[n]) == [1, 11] for n in range(2, 11)), "both objects propagate"
    finally:
        dataset.persistent = False


def test_a_keyframe_may_mix_masks_and_boxes(make_video):
    import fiftyone as fo

    import deaot_vos

    path, maps = make_video("mixed", num_frames=8)
    dataset = fo.Dataset()
    sample = fo.Sample(filepath=path)
    drawn = detection("red", maps[0] == 1, index=3)
    sample.frames[1]["kf"] = fo.Detections(detections=[drawn, _box("green", maps[0] == 2)])
    dataset.add_sample(sample)
    given = _keyframe_field(dataset)
    summary = deaot_vos.propagate(dataset, "kf", "out", device="cpu")
    assert summary["samples"][0]["status"] == "ok" and summary["samples"][0]["objects"] == 2

    out = _keyframe_outputs(dataset, "out", 1)
    assert sorted(out) == [1, 3]
    assert out[3].bounding_box == drawn.bounding_box and np.array_equal(out[3].mask, drawn.mask), "drawn: exact"
    green = _offline_masks(path, dataset, 1)[1]
    assert np.array_equal(_full_mask(out[1], *maps.shape[1:]), green), "the box: its mask from box_masks"
    assert _keyframe_field(dataset) == given
    frames = _frames(dataset, "out")
    assert all(sorted(d[1] for d in frames[n]) == [1, 3] for n in range(2, 9))


def _points_dataset(make_video, name: str = "points", num_frames: int = 8):
    """One video whose ``pts`` field holds Keypoints on frame 1: red (index 11) one positive point in it
    and a negative one outside, green one positive point (polarity as FiftyOne's SAM wrappers read it)."""
    import fiftyone as fo

    path, maps = make_video(name, num_frames=num_frames)
    height, width = maps.shape[1:]

    def centre(k):
        ys, xs = np.nonzero(maps[0] == k)
        return ((xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height)

    dataset = fo.Dataset()
    sample = fo.Sample(filepath=path)
    sample.frames[1]["pts"] = fo.Keypoints(keypoints=[
        fo.Keypoint(label="red", index=11, points=[centre(1), (0.95, 0.9)], sam_labels=[1, 0]),
        fo.Keypoint(label="green", points=[centre(2)])])
    dataset.add_sample(sample)
    return dataset, path, maps


def test_point_keyframes_without_a_prompt_model_are_refused(make_video):
    import deaot_vos
    from deaot_vos.labels import KeyframeError

    dataset, _, _ = _points_dataset(make_video, "points_refused")
    given, schema, frames = _keyframe_field(dataset, "pts"), sorted(dataset.get_frame_field_schema()), \
        dataset.count("frames")
    with pytest.raises(KeyframeError) as info:
        deaot_vos.propagate(dataset, "pts", "out", device="cpu")
    message = str(info.value)
    assert dataset.first().id in message and "field 'pts'" in message and "frame 1" in message, message
    assert "keypoint #0 (label 'red', index 11)" in message and "prompt_model" in message, message
    dataset.reload()
    assert (_keyframe_field(dataset, "pts"), sorted(dataset.get_frame_field_schema()), dataset.count("frames")) \
        == (given, schema, frames), "nothing written"


def _older_sam2_wrapper() -> bool:
    """FiftyOne's SAM 2 image model before its prompts went through a GetItem (1.6: it builds the
    network from ``model_cfg`` alone)."""
    import inspect

    import fiftyone.utils.sam2 as fosam2

    return "model_cfg" in inspect.getsource(fosam2.SegmentAnything2ImageModel._load_model)


def _sam2_build_args() -> tuple[list, dict]:
    """(hydra overrides, the manifest's entrypoint_args): the lighter hiera tiny where FiftyOne passes
    the entrypoint arguments to ``build_sam2`` (1.22); older FiftyOne (1.6) passes only ``model_cfg``,
    so the plain hiera tiny."""
    if _older_sam2_wrapper():
        return [], dict(model_cfg=SAM2_CONFIG)
    return SAM2_OVERRIDES, dict(config_file=SAM2_CONFIG, hydra_overrides_extra=SAM2_OVERRIDES)


def test_an_unknown_prompt_model_is_refused_before_any_work(make_video):
    import deaot_vos

    dataset, _, _ = _box_dataset(make_video, "unknown_model", num_frames=8)
    given, schema = _keyframe_field(dataset), sorted(dataset.get_frame_field_schema())
    with pytest.raises(ValueError, match="prompt_model: Model 'no-such-sam' not found in the zoo"):
        deaot_vos.propagate(dataset, "kf", "out", device="cpu", prompt_model="no-such-sam")
    dataset.reload()
    assert (_keyframe_field(dataset), sorted(dataset.get_frame_field_schema())) == (given, schema)


@pytest.fixture(scope="module")
def sam2_zoo(tmp_path_factory):
    """A zoo manifest naming a SAM 2 image model (FiftyOne's ``SegmentAnything2ImageModel``) whose
    checkpoint, saved in the zoo directory, holds random weights: loadable by name with
    ``load_zoo_model`` here and, through the environment, in a subprocess. Yields (env, seconds to build)."""
    import time

    import fiftyone as fo
    import torch
    from sam2.build_sam import build_sam2

    start = time.perf_counter()
    zoo_dir, manifest_dir = tmp_path_factory.mktemp("zoo"), tmp_path_factory.mktemp("manifest")
    overrides, entrypoint_args = _sam2_build_args()
    # random weights give junk masks; with this seed every prompt of these tests gets a non-empty one that
    # differs from its box (another seed may give none for a box: refused, as it should be)
    torch.manual_seed(9)
    model = build_sam2(SAM2_CONFIG, ckpt_path=None, device="cpu", hydra_overrides_extra=overrides)
    torch.save({"model": model.state_dict()}, zoo_dir / "sam2_random.pt")
    entry = dict(base_name=SAM2_NAME, base_filename="sam2_random.pt", version=None, description="random weights",
                 manager=dict(type="fiftyone.core.models.ModelManager", config=dict(url=None)),
                 default_deployment_config_dict=dict(type="fiftyone.utils.sam2.SegmentAnything2ImageModel", config=dict(
                     entrypoint_fcn="sam2.build_sam.build_sam2", device="cpu", entrypoint_args=entrypoint_args)),
                 requirements=dict(packages=["torch", "sam2"]), tags=["segment-anything"], date_added="2026-12-07")
    manifest = manifest_dir / "manifest.json"
    manifest.write_text(json.dumps(dict(models=[entry])))
    saved = fo.config.model_zoo_manifest_paths, fo.config.model_zoo_dir
    fo.config.model_zoo_manifest_paths, fo.config.model_zoo_dir = [str(manifest)], str(zoo_dir)
    try:
        yield dict(FIFTYONE_MODEL_ZOO_MANIFEST_PATHS=str(manifest), FIFTYONE_MODEL_ZOO_DIR=str(zoo_dir)), \
            time.perf_counter() - start
    finally:
        fo.config.model_zoo_manifest_paths, fo.config.model_zoo_dir = saved


def test_point_keyframes_through_a_real_sam2_zoo_model(make_video, sam2_zoo, tmp_path):
    import cv2
    import fiftyone as fo

    import deaot_vos
    from deaot_vos.keyframe_prompts import load_prompt_model
    from deaot_vos.video_io import open_video

    dataset, path, maps = _points_dataset(make_video)
    given = _keyframe_field(dataset, "pts")
    model = load_prompt_model(SAM2_NAME)  # by zoo name; propagate takes the loaded model too
    summary = deaot_vos.propagate(dataset, "pts", "out", device="cpu", prompt_model=model)
    assert summary["samples"][0]["status"] == "ok" and summary["samples"][0]["objects"] == 2
    assert _keyframe_field(dataset, "pts") == given, "the keypoints are unchanged"

    # the keyframe's masks are the ones the model gives through FiftyOne's own apply_model on the frame
    frame_png = tmp_path / "frame1.png"
    cv2.imwrite(str(frame_png), open_video(path).frame(1)[:, :, ::-1])
    prompts = dataset.first().frames[1]["pts"]
    for kp in prompts.keypoints:  # FiftyOne 1.6 reads sam2_labels once sam_labels is set; later ones sam_labels
        if kp.has_field("sam_labels"):
            kp["sam2_labels"] = kp["sam_labels"]
    images = fo.Dataset()
    images.add_sample(fo.Sample(filepath=str(frame_png), pts=prompts))
    images.apply_model(model, label_field="sam", prompt_field="pts")
    by_label = {d.label: d for d in images.first()["sam"].detections}
    height, width = maps.shape[1:]
    out = _keyframe_outputs(dataset, "out", 1)
    assert sorted(out) == [1, 11] and out[11].label == "red" and out[1].label == "green"
    for index, label in ((11, "red"), (1, "green")):
        model_mask = _full_mask_from(by_label[label], height, width)
        assert model_mask.any() and np.array_equal(_full_mask(out[index], height, width), model_mask)
    frames = _frames(dataset, "out")
    assert sorted(frames) == list(range(1, 9)) and all(frames[n] for n in range(2, 9)), "propagation ran"
    images.delete()


def _full_mask_from(det, height: int, width: int) -> np.ndarray:
    """A model's detection as a full-frame mask (FiftyOne's own rendering)."""
    return det.to_segmentation(frame_size=(width, height), target=1).mask.astype(bool)


def test_box_keyframes_through_the_cli_with_a_zoo_model_by_name(make_video, sam2_zoo):
    import deaot_vos

    if _older_sam2_wrapper():
        pytest.skip("FiftyOne 1.6's SAM 2 wrapper fails on box prompts itself (its output parser: 'only "
                    "0-dimensional arrays can be converted'); points work (test above)")
    env, _ = sam2_zoo
    dataset, path, maps = _box_dataset(make_video, "boxes_sam2", num_frames=8)
    dataset.persistent = True
    try:
        given = _keyframe_field(dataset)
        done = _cli(dataset, "cli", "--prompt-model", SAM2_NAME, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        deaot_vos.propagate(dataset, "kf", "api", device="cpu", prompt_model=SAM2_NAME)
        dataset.reload()
        cli = _frames(dataset, "cli")
        assert sorted(cli) == list(range(1, 9)) and cli == _frames(dataset, "api")
        assert _keyframe_field(dataset) == given

        height, width = maps.shape[1:]
        offline = _offline_masks(path, dataset, 1)
        out = _keyframe_outputs(dataset, "cli", 1)
        assert sorted(out) == [1, 11]
        made = {index: _full_mask(det, height, width) for index, det in out.items()}
        assert any(not np.array_equal(made[i], offline[i]) for i in made), "the masks come from the model"
        assert all(made[i].any() and not (made[i] & ~_full_mask(_boxed(out[i]), height, width)).any() for i in made)
    finally:
        dataset.persistent = False


def _boxed(det):
    """``det`` with its mask filled (its whole box)."""
    full = det.copy()
    full.mask = np.ones_like(np.asarray(det.mask), dtype=bool)
    return full


def test_the_operator_form_offers_keypoints_fields_and_the_prompt_model(make_video):
    from fiftyone.operators.executor import ExecutionContext

    from operators.propagate_masks import PropagateMasks

    dataset, _, _ = _points_dataset(make_video, "points_form", num_frames=4)
    dataset.persistent = True  # the context loads it by name
    try:
        ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, view=[], params={}))
        properties = PropagateMasks().resolve_input(ctx).type.properties
        assert list(properties["keyframes_field"].type.values) == ["pts"]
        assert "Prompt model" in properties["prompt_model"].view.label
    finally:
        dataset.persistent = False
