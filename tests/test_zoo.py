"""The remote zoo model source (``zoo/``): registered the way FiftyOne discovers a source under
``fo.config.model_zoo_dir``, loaded with ``foz.load_zoo_model``, applied with ``apply_model``;
its masks equal those of ``deaot_vos.propagate`` on the same video, on a plain view and on a
clip view. Real database, real videos decoded by decord, the real demo checkpoint."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from conftest import REPO
from helpers import detection

DEMO = "deaot/DeAOTT-synthetic-demo"


@pytest.fixture
def zoo(fiftyone_db, tmp_path, monkeypatch):
    """``fiftyone.zoo`` with this repository's source linked into a temporary model zoo dir (its
    two files; downloads land in the temporary dir, not in the checkout)."""
    import fiftyone.zoo as foz

    source = tmp_path / "model_zoo" / "deaot" / "vos"
    source.mkdir(parents=True)
    for name in ("manifest.json", "__init__.py"):
        (source / name).symlink_to(REPO / "zoo" / name)
    monkeypatch.setattr(fiftyone_db.config, "model_zoo_dir", str(tmp_path / "model_zoo"))
    return foz


def _video_dataset(fo, path: str, maps: np.ndarray, keyframes: dict[int, list[int]]):
    """A dataset with the video at ``path``; ``keyframes``: frame number -> object ids given there,
    as Detections with instance masks drawn from the ground-truth ``maps``."""
    dataset = fo.Dataset()
    sample = fo.Sample(filepath=path)
    dataset.add_sample(sample)
    names = {1: "red", 2: "green", 3: "blue"}
    for number, objects in keyframes.items():
        sample.frames[number]["kf"] = fo.Detections(
            detections=[detection(names[k], maps[number - 1] == k) for k in objects])
    sample.save()
    return dataset


def _as_tuples(detections) -> list[tuple]:
    if detections is None:
        return []
    return sorted((d.label, d.index, tuple(d.bounding_box), hashlib.sha1(np.ascontiguousarray(d.mask)).hexdigest(),
                   d.mask.shape, round(d.confidence, 6)) for d in detections.detections)


def _frames(dataset, field: str) -> dict[int, list[tuple]]:
    numbers, values = dataset.values(["frames.frame_number", "frames." + field])
    return {n: _as_tuples(v) for n, v in zip(numbers[0], values[0]) if v is not None}


def test_manifest_lists_the_12_official_variants_and_the_demo():
    import deaot_core
    from deaot_vos import zoo

    manifest = json.loads((REPO / "zoo" / "manifest.json").read_text())
    assert manifest == zoo.manifest(), "zoo/manifest.json is stale: run python -m deaot_vos.zoo"
    entries = {m["base_name"]: m for m in manifest["models"]}
    assert len(entries) == 13
    for name in deaot_core.MODEL_NAMES:
        assert entries["deaot/" + name]["base_filename"] == deaot_core.WEIGHTS[name].file_name
        assert "official" in entries["deaot/" + name]["tags"]
    assert {"demo", "synthetic"} <= set(entries[DEMO]["tags"])


def test_source_is_discovered_and_downloads_go_through_our_weights(zoo, tmp_path, monkeypatch, tiny_checkpoint):
    import deaot_core
    from deaot_vos import weights

    names = set(zoo.list_zoo_models())
    assert {"deaot/" + n for n in deaot_core.MODEL_NAMES} | {DEMO} <= names
    with pytest.raises(RuntimeError, match="DEAOT_OFFLINE is set: not downloading .*AOTT_PRE_YTB_DAV.pth"):
        zoo.download_zoo_model("deaot/AOTT")
    # online: the official entry is fetched by deaot_core.hub from the URL of the weights table
    monkeypatch.delenv("DEAOT_OFFLINE")
    monkeypatch.setitem(weights.OFFICIAL_WEIGHTS, "DeAOTT", deaot_core.PretrainedWeights(
        "DeAOTT_PRE_YTB_DAV.pth", (tmp_path / "missing.pth").as_uri()))
    path = tmp_path / "model_zoo" / "deaot" / "vos" / "DeAOTT_PRE_YTB_DAV.pth"
    with pytest.raises(Exception, match="missing.pth"):
        zoo.download_zoo_model("deaot/DeAOTT")
    assert not path.exists()
    monkeypatch.setitem(weights.OFFICIAL_WEIGHTS, "DeAOTT", deaot_core.PretrainedWeights(
        "DeAOTT_PRE_YTB_DAV.pth", "file://" + tiny_checkpoint))
    model = zoo.load_zoo_model("deaot/DeAOTT", cache=False, device="cpu")
    assert path.read_bytes() == open(tiny_checkpoint, "rb").read()
    assert (model.choice.model, model.choice.checkpoint) == ("DeAOTT", str(path))


def test_apply_model_equals_propagate_on_a_video_without_ffmpeg(zoo, make_video, monkeypatch, torch_threads):
    import eta.core.video as etav
    import fiftyone as fo
    import deaot_vos
    from deaot_vos import weights

    def no_ffmpeg(*args, **kwargs):
        raise AssertionError("apply_model opened the video with ffmpeg/ffprobe")

    monkeypatch.setattr(etav, "FFmpegVideoReader", no_ffmpeg)
    path, maps = make_video("plain", num_frames=12, objects=3)
    dataset = _video_dataset(fo, path, maps, {3: [1, 2], 8: [3]})  # an object first given on a later keyframe
    summary = deaot_vos.propagate(dataset, "kf", "ref", device="cpu", write_segmentation="ref_seg")
    assert summary["weights"] == "demo" and summary["checkpoint"] == str(weights.DEMO_CHECKPOINT)

    # the keyframes field given at load time survives apply_model's reset of needs_fields
    model = zoo.load_zoo_model(DEMO, cache=False, device="cpu", prompt_field="kf")
    assert model.choice.checkpoint.endswith("deaot_t_synthetic.pth")
    dataset.apply_model(model, label_field="zoo")
    reference, got = _frames(dataset, "ref"), _frames(dataset, "zoo")
    assert sorted(got) == list(range(1, 13)) and got == reference
    assert {len(v) for v in got.values()} >= {2, 3}  # objects were propagated, also backward to frames 1-2

    with_maps = zoo.load_zoo_model(DEMO, cache=False, device="cpu", segmentation=True)
    dataset.apply_model(with_maps, label_field={"detections": "zoo_kw", "segmentation": "zoo_seg"},
                        prompt_field="frames.kf")  # the usual call, with a label map per frame too
    assert _frames(dataset, "zoo_kw") == reference
    ref_maps, zoo_maps = dataset.values("frames.ref_seg.mask")[0], dataset.values("frames.zoo_seg.mask")[0]
    assert len(zoo_maps) == 12 and all(np.array_equal(a, b) for a, b in zip(ref_maps, zoo_maps))
    assert {int(v) for m in zoo_maps for v in np.unique(m)} == {0, 1, 2, 3}


def test_apply_model_on_a_clip_view_propagates_within_each_clip(zoo, make_video, torch_threads):
    import fiftyone as fo
    import deaot_vos

    path, maps = make_video("clips", num_frames=14, objects=2)
    dataset = _video_dataset(fo, path, maps, {2: [1, 2], 6: [1], 9: [2]})
    clips = dataset.to_clips([[(4, 11)]])
    model = zoo.load_zoo_model(DEMO, cache=False, device="cpu")
    clips.apply_model(model, label_field="zoo", prompt_field="frames.kf")

    # the clip's keyframes are those inside it (6, 9): the same as the whole video with only those
    reference = _video_dataset(fo, path, maps, {6: [1], 9: [2]})
    deaot_vos.propagate(reference, "kf", "ref", device="cpu")
    expected = {n: v for n, v in _frames(reference, "ref").items() if 4 <= n <= 11}
    got = _frames(dataset, "zoo")
    assert sorted(got) == list(range(4, 12)), "only the clip's frames are written"
    assert got == expected


def test_a_run_that_writes_nothing_says_why(zoo, make_video, tmp_path):
    import fiftyone as fo
    from deaot_vos.zoo_model import NothingWrittenError

    path, maps = make_video("gone", num_frames=4, objects=1)
    dataset = _video_dataset(fo, path, maps, {1: [1]})
    dataset.add_sample(fo.Sample(filepath=str(tmp_path / "missing.mp4")))
    model = zoo.load_zoo_model(DEMO, cache=False, device="cpu")
    with pytest.raises(ValueError, match="no keyframes field: pass prompt_field="):
        dataset.apply_model(model, label_field="out")
    missing = dataset.match(fo.ViewField("filepath").ends_with("missing.mp4"))
    with pytest.raises(NothingWrittenError, match=r"all 1 video\(s\) failed: sample .*missing.mp4.*video file not found"):
        missing.apply_model(model, label_field="out", prompt_field="frames.kf")
    no_keyframes = dataset.to_clips([[(2, 4)]])
    with pytest.raises(NothingWrittenError, match=r"no keyframe with objects in 'frames.kf' \(clip frames 2-4\)"):
        no_keyframes.apply_model(model, label_field="out", prompt_field="frames.kf")
    assert "out" not in dataset.get_frame_field_schema()


# -- install: registry packages only, decord2 or decord; the code from the plugin folder ----------

@pytest.fixture
def distributions(monkeypatch):
    """``set({"decord": "0.6.0"})``: the video reader distributions FiftyOne's requirement checks
    find (importlib.metadata answers for every other package as installed)."""
    import eta.core.utils as etau

    real = etau.metadata.version

    def set_(present: dict[str, str]):
        def version(name):
            if name.lower() in ("decord", "decord2"):
                if name.lower() not in present:
                    raise etau.metadata.PackageNotFoundError(name)
                return present[name.lower()]
            return real(name)
        monkeypatch.setattr(etau.metadata, "version", version)
    return set_


def test_requirements_install_from_the_registry_and_accept_decord2_or_decord(zoo, distributions):
    import fiftyone.core.utils as fou
    from eta.core.utils import PackageError
    from deaot_vos import zoo as source

    lines = [line.split("#", 1)[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert source.PACKAGES == [line for line in lines if line], "the zoo models need what the plugin needs"
    assert not any(p.startswith("fiftyone") for p in source.PACKAGES), "the registry has no fiftyone-deaot-vos"
    for present in ({"decord2": "3.4.0"}, {"decord": "0.6.0"}, {"decord": "0.6.0", "decord2": "2.0.0"}):
        distributions(present)
        # what `fiftyone plugins requirements @deaot/vos --ensure` and load_zoo_model check
        fou.ensure_requirements(str(REPO / "requirements.txt"), error_level=0)
        zoo.get_zoo_model(DEMO).ensure_requirements(error_level=0)
    for absent in ({}, {"decord": "0.5.6"}):
        distributions(absent)
        with pytest.raises(PackageError, match="decord2>=2.0"):
            fou.ensure_requirements(str(REPO / "requirements.txt"), error_level=0)
        with pytest.raises(PackageError):
            zoo.load_zoo_model(DEMO, cache=False, device="cpu")


LOAD_FROM_PLUGIN = r"""
import json, sys
# this checkout is installed editable: take its finder away so that only the plugin folder has the code
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "") + repr(f)]
import fiftyone as fo, fiftyone.zoo as foz
fo.config.model_zoo_dir = sys.argv[1]
model = foz.load_zoo_model("deaot/DeAOTT-synthetic-demo", cache=False, device="cpu", prompt_field="kf")
import deaot_core, deaot_vos
print(json.dumps(dict(packages=[deaot_core.__file__, deaot_vos.__file__], model=model.choice.model)))
"""


def test_the_source_loads_the_code_from_the_plugin_folder(zoo, tmp_path):
    """Without the pip install, the zoo source imports our packages from the @deaot/vos plugin's
    folder, wherever FiftyOne keeps it (here: a plugins dir holding this checkout)."""
    import os
    import subprocess
    import sys
    import fiftyone as fo

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "deaot-vos").symlink_to(REPO)
    env = dict(os.environ, FIFTYONE_PLUGINS_DIR=str(plugins))
    script = tmp_path / "load.py"
    script.write_text(LOAD_FROM_PLUGIN)
    done = subprocess.run([sys.executable, str(script), fo.config.model_zoo_dir], env=env, capture_output=True,
                          text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["model"] == "DeAOTT"
    assert all(p.startswith(str(plugins / "deaot-vos")) for p in report["packages"]), report
    env["FIFTYONE_PLUGINS_DIR"] = str(tmp_path / "no-plugins")
    done = subprocess.run([sys.executable, str(script), fo.config.model_zoo_dir], env=env, capture_output=True,
                          text=True, cwd=tmp_path, timeout=600)
    assert done.returncode != 0 and "need the @deaot/vos plugin" in done.stderr


# -- voxel51's "Apply zoo model" operator ----------------------------------------------------------

def _fill(form, **choices) -> dict:
    """The operator's ``remote_params``: each input's default, or ``choices`` (checked against an
    enum's values), as the App sends them."""
    params = {}
    for name, prop in form.type.properties.items():
        if type(prop.type).__name__ == "Void":  # a notice, not an input
            continue
        value = choices.get(name, prop.default)
        values = getattr(prop.type, "values", None)
        if values is not None and value is not None:
            assert value in values, f"{name}: {value!r} not among {values}"
        params[name] = value
    return params


def test_apply_zoo_model_operator_sequence_equals_propagate(zoo, make_video, torch_threads):
    """What ``@voxel51/zoo/apply_zoo_model`` does with a remote model: the model's
    ``resolve_input`` as its ``remote_params`` form, ``parse_parameters`` on the filled dict,
    ``load_zoo_model(name, **params)``, then ``apply_model`` with its own arguments and no
    prompt field. The masks equal ``deaot_vos.propagate``'s."""
    import fiftyone as fo
    from fiftyone.operators.executor import ExecutionContext
    import deaot_vos

    path, maps = make_video("operator", num_frames=10, objects=2)
    dataset = _video_dataset(fo, path, maps, {2: [1], 6: [2]})
    dataset.add_frame_field("gt", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    deaot_vos.propagate(dataset, "kf", "ref", device="cpu")

    ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, view=[], params={}))
    zoo_model = zoo.get_zoo_model(DEMO)
    form = zoo_model.resolve_input(ctx)
    fields = form.type.properties["keyframes_field"]
    assert sorted(fields.type.values) == ["gt", "kf", "ref"] and fields.default == "kf" and fields.required
    assert not form.invalid and form.type.properties["prompt_model"].default is None
    params = _fill(form, device="cpu")
    zoo_model.parse_parameters(ctx, params)
    assert params["prompt_field"] == "frames.kf" and "keyframes_field" not in params
    model = zoo.load_zoo_model(DEMO, **params)
    dataset.apply_model(model, label_field="zoo", confidence_thresh=None, store_logits=False, batch_size=None,
                        num_workers=0, skip_failures=True, output_dir=None, rel_dir=None)
    got = _frames(dataset, "zoo")
    assert sorted(got) == list(range(1, 11)) and got == _frames(dataset, "ref")

    empty = fo.Dataset()
    empty.add_sample(fo.Sample(filepath=path))
    form = zoo_model.resolve_input(ExecutionContext(request_params=dict(dataset_name=empty.name, view=[], params={})))
    assert form.invalid and "keyframes_field" not in form.type.properties
    with pytest.raises(ValueError, match="choose the keyframes field"):
        zoo_model.parse_parameters(ctx, {"device": "cpu"})
