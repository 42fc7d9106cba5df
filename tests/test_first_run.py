"""What a new user meets first (issue 20): the demo's media folder and printed commands (the App
with the plugin loaded, the evaluation), the propagate form's defaults and notices, the result
dialog, and each interface naming its own overwrite control."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")

REPO = Path(__file__).resolve().parents[1]
URI = "@deaot/vos/propagate_masks"


@pytest.fixture
def demo_dataset():
    """The demo dataset (synthetic video only), built where ``make demo`` builds it."""
    import fiftyone as fo
    from deaot_vos import demo

    name = "t_first_run"
    ds = demo.build_dataset(name, real_clips=False)
    yield ds
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def test_demo_media_go_under_the_default_dataset_dir_per_dataset_and_database(demo_dataset, monkeypatch):
    import fiftyone as fo
    import fiftyone.constants as foc
    from deaot_vos import demo

    root = Path(fo.config.default_dataset_dir)  # FIFTYONE_DEFAULT_DATASET_DIR of conftest.py
    media = demo.media_dir(demo_dataset.name)
    assert media.parent == root and media.name.startswith(demo_dataset.name)
    for path in demo_dataset.values("filepath"):
        assert Path(path).parent == media and Path(path).is_file()
    # the tests' own database is not the default one: a tag keeps two databases' demos apart
    assert media.name == f"{demo_dataset.name}-db-{demo.database_tag()}"
    monkeypatch.setattr(fo.config, "database_uri", "mongodb://otherhost:27017")
    assert demo.media_dir(demo_dataset.name) not in (media, root / demo_dataset.name)
    monkeypatch.setattr(fo.config, "database_uri", None)
    monkeypatch.setattr(fo.config, "database_dir", foc.DEFAULT_DB_DIR)
    monkeypatch.setattr(fo.config, "database_name", "fiftyone")
    assert demo.database_tag() is None and demo.media_dir("deaot-demo") == root / "deaot-demo"


def test_the_printed_app_command_loads_the_plugin(demo_dataset):
    from deaot_vos import demo

    plugins = demo.plugins_dir(demo.media_dir(demo_dataset.name))
    assert (plugins / "deaot-vos").resolve() == REPO.resolve() and plugins.parent == demo.media_dir(demo_dataset.name)
    command = demo.app_command(demo_dataset.name, plugins)
    text = demo.hints(demo_dataset.name, plugins)
    assert command in text and "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true" in command
    assert f"FIFTYONE_PLUGINS_DIR={plugins}" in command
    # what the command's environment gives FiftyOne: our operators in the operator browser
    env = {k: v for k, v in os.environ.items() if k != "FIFTYONE_PLUGINS_DIR"}
    words = shlex.split(command)
    env.update(w.split("=", 1) for w in words[:2])
    listed = subprocess.run([sys.executable, "-c", "import fiftyone as fo, fiftyone.operators as foo; "
                             "print(fo.config.allow_legacy_orchestrators); "
                             "print(' '.join(o.uri for o in foo.list_operators()))"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "True" in listed.stdout and f"{URI} " in listed.stdout + " "
    assert "@deaot/vos/evaluate_vos" in listed.stdout
    assert plugins_dir_is_stable(demo, demo_dataset.name, plugins)


def plugins_dir_is_stable(demo, name, plugins) -> bool:
    """Making the folder again (a second demo run) keeps the one link."""
    return demo.plugins_dir(demo.media_dir(name)) == plugins and [p.name for p in plugins.iterdir()] == ["deaot-vos"]


def test_the_documented_evaluate_command_works_on_the_demo(demo_dataset, tiny_checkpoint):
    import deaot_vos
    from deaot_vos import demo

    deaot_vos.propagate(demo_dataset, demo.KEYFRAMES_FIELD, demo.OUTPUT_FIELD, model="DeAOTT",
                        checkpoint=tiny_checkpoint, device="cpu", max_long_edge=192)
    command = demo.evaluate_command(demo_dataset.name)
    assert "--extra-objects ignore" in command and command in demo.hints(demo_dataset.name, "/p")
    assert "--extra-objects ignore" in (REPO / "docs" / "demo.md").read_text()
    done = subprocess.run(shlex.split(command), cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "J&F-Mean" in done.stdout
    demo_dataset.reload()
    assert "deaot_eval" in demo_dataset.list_evaluations()


def test_likely_keyframes_field(demo_dataset):
    import fiftyone as fo
    from deaot_vos.fields import likely_keyframes_field

    ds = demo_dataset  # 'ground_truth' on all 48 frames (listed first), 'keyframes' on 2
    assert ds.count("frames.ground_truth") == 48 and ds.count("frames.keyframes") == 2
    assert likely_keyframes_field(ds) == "keyframes"
    sample = ds.first()
    sample.frames[5]["sparse"] = sample.frames[8]["keyframes"].copy()  # 1 labelled frame
    sample.save()
    assert likely_keyframes_field(ds) == "keyframes"  # the name wins over fewer frames
    ds.rename_frame_field("keyframes", "masks")
    assert likely_keyframes_field(ds) == "sparse"  # then the fewest labelled frames
    ds.rename_frame_field("masks", "kf_v2")
    assert likely_keyframes_field(ds) == "kf_v2"
    ds.delete_frame_fields(["kf_v2", "sparse"])
    assert likely_keyframes_field(ds) is None  # never a field labelled on every frame
    ds.add_frame_field("empty", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    assert likely_keyframes_field(ds) == "empty"


def test_propagate_form_defaults_and_weights_notice(demo_dataset, tiny_checkpoint, monkeypatch):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext
    from deaot_core import pretrained
    from deaot_vos import weights

    ds = demo_dataset
    op = foo.get_operator(URI)

    def form(params=None, **request):
        ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[], params=params or {}, **request))
        return op.resolve_input(ctx).type.properties

    monkeypatch.setattr(pretrained, "DEMO_CHECKPOINT", Path(tiny_checkpoint))
    props = form()
    assert props["keyframes_field"].default == "keyframes"
    assert props["target_notice"].view.label == "Runs on the only sample of the dataset"
    assert form(selected=ds.values("id"))["target_notice"].view.label == "Runs on 1 selected sample"
    # DEAOT_CACHE is empty: the form says before the run that the demo weights would be used
    notice = props["weights_notice"].view.description
    assert "No R50_DeAOTL weights" in notice and "demo checkpoint (DeAOTT" in notice
    assert weights.weights_notice("R50_DeAOTL") == notice
    assert "instead of" not in weights.weights_notice("DeAOTT")  # the demo model itself: other weights, same model
    assert "No DeAOTT weights" in form(dict(model="DeAOTT"))["weights_notice"].view.description
    assert "weights_notice" not in form(dict(checkpoint=tiny_checkpoint))
    bad = form(dict(checkpoint="/nowhere/x.pth"))["checkpoint"]
    assert bad.invalid and "not found" in bad.error_message


def test_result_dialog_rows():
    from operators.propagate_masks import output_property

    ordinary = output_property(dict(status="ok", failed=0)).type.properties
    assert "operations_queued" not in ordinary and "failures" not in ordinary and "frames" in ordinary
    partial = output_property(dict(status="partial", failed=1)).type.properties
    assert "failures" in partial and "operations_queued" not in partial
    queued = output_property(dict(status="queued")).type.properties
    assert "operations_queued" in queued and "frames" not in queued
    assert "message" in output_property(dict(status="cancelled")).type.properties


def test_overwrite_wording_per_interface():
    import pickle

    from deaot_vos.propagation import OutputExistsError

    err = OutputExistsError("frame field 'out' already exists", field="out", alternative="choose another output field")
    assert str(err) == "frame field 'out' already exists; pass overwrite=True to replace it, or choose another output field"
    assert "pass --overwrite" in err.worded("cli") and "tick the Overwrite checkbox" in err.worded("app")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is OutputExistsError and str(again) == str(err) and again.field == "out"
    assert isinstance(err, ValueError)


def test_every_next_step_the_demo_prints_runs_as_printed(demo_dataset, tiny_checkpoint):
    """The demo's closing text: each printed command (but the App and the worker, which keep
    running: see the tests above and tests/test_workers.py) runs as printed, in order."""
    import fiftyone as fo
    import deaot_vos
    from deaot_vos import demo

    deaot_vos.propagate(demo_dataset, demo.KEYFRAMES_FIELD, demo.OUTPUT_FIELD, model="DeAOTT",
                        checkpoint=tiny_checkpoint, device="cpu", max_long_edge=192,
                        write_segmentation=demo.SEGMENTATION_FIELD)
    plugins = demo.plugins_dir(demo.media_dir(demo_dataset.name))
    steps = demo.next_steps(demo_dataset.name, plugins)
    text = demo.hints(demo_dataset.name, plugins)
    assert all(command in text for _, command in steps)
    runnable = [command for _, command in steps if "launch_app" not in command and "delegated launch" not in command]
    assert len(runnable) == len(steps) - 2
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        for command in runnable:
            done = subprocess.run(command, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        demo_dataset.reload()
        assert {"deaot_eval", "deaot_seg"} <= set(demo_dataset.list_evaluations())
        assert "deaot_review-top" in demo_dataset.list_saved_views()
        copy = fo.load_dataset(demo_dataset.name + "-davis")
        assert len(copy) == len(demo_dataset) and copy.count("frames.ground_truth") > 0
    finally:
        if fo.dataset_exists(demo_dataset.name + "-davis"):
            fo.delete_dataset(demo_dataset.name + "-davis")
