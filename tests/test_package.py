"""The project as an installed package with import names no other plugin uses.

* ``pyproject.toml`` lists every package folder (``deaot_core``, ``deaot_vos`` = ``plugin/``);
* the plugin shell loads without an install, from its own folder, without touching ``sys.path``;
* a second FiftyOne plugin with its own top-level ``plugin`` package runs side by side with ours;
* evaluation runs are stored under the stable class path: a fresh ``python -c`` (no plugin
  loaded, no PYTHONPATH) loads them as ``VOSEvaluationResults``, and ``rename_evaluation`` /
  ``delete_evaluation`` move / remove every field of the run; runs stored by older versions under
  ``plugin.evaluation.*`` are upgraded and then load the same way.

Every check that matters runs in a real subprocess whose working directory is outside the
checkout, so nothing of the checkout is on its ``sys.path``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_label_maps, write_video

REPO = Path(__file__).resolve().parents[1]
EVAL_URI = "@deaot/vos/evaluate_vos"


def _run(code: str, cwd: Path, env: dict | None = None, timeout: int = 240) -> dict:
    """Run ``code`` in a fresh interpreter (cwd outside the checkout); it prints one JSON line last."""
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pyproject_lists_every_package_folder():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = config["package-dir"]
    assert roots == {"deaot_core": "deaot_core", "deaot_vos": "plugin"}
    found = set()
    for name, folder in roots.items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *parts)))
    assert set(config["packages"]) == found


def test_core_never_imports_the_fiftyone_side():
    """``deaot_core`` imports neither fiftyone nor ``deaot_vos``, not even inside a function."""
    offenders = []
    for path in (REPO / "deaot_core").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            words = line.strip().split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1 and \
                    words[1].split(".")[0] in ("fiftyone", "deaot_vos", "plugin", "operators"):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, offenders


_BLOCK_INSTALLED = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):  # as if the package were not installed
    def find_spec(self, name, path=None, target=None):
        if name in ("deaot_vos", "deaot_core"):
            raise ImportError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""


def test_shell_loads_without_an_install_and_leaves_sys_path_alone(tmp_path, fiftyone_db):
    out = _run(_BLOCK_INSTALLED + """
import json, sys
import fiftyone.operators as foo
before = list(sys.path)
op = foo.get_operator("@deaot/vos/propagate_masks")
import deaot_vos, deaot_core
from deaot_vos import evaluation
print(json.dumps(dict(op=op.uri, vos=deaot_vos.__file__, core=deaot_core.__file__, eval=evaluation.__file__,
                      same_path=sys.path == before, plugin="plugin" in sys.modules)))
""", tmp_path)
    assert out["op"] == "@deaot/vos/propagate_masks"
    assert Path(out["vos"]).resolve() == REPO / "plugin" / "__init__.py"
    assert Path(out["eval"]).resolve() == REPO / "plugin" / "evaluation.py"
    assert Path(out["core"]).resolve() == REPO / "deaot_core" / "__init__.py"
    assert out["same_path"] and not out["plugin"]


def _other_plugin(root: Path) -> Path:
    """A FiftyOne plugin written the way ours used to be: its own top-level ``plugin`` package,
    put on ``sys.path`` by its ``__init__.py``."""
    folder = root / "other-plugin"
    (folder / "plugin").mkdir(parents=True)
    (folder / "fiftyone.yml").write_text('name: "@other/plain"\nversion: 0.0.1\noperators:\n  - whoami\n')
    (folder / "plugin" / "__init__.py").write_text("OWNER = 'other'\n")
    (folder / "plugin" / "evaluation.py").write_text("ANSWER = 42\n")
    (folder / "__init__.py").write_text(textwrap.dedent("""
        import os, sys
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import fiftyone.operators as foo
        import plugin
        from plugin.evaluation import ANSWER

        class WhoAmI(foo.Operator):
            @property
            def config(self):
                return foo.OperatorConfig(name="whoami", label="who am I")

            def execute(self, ctx):
                return dict(owner=plugin.OWNER, answer=ANSWER, file=plugin.__file__)

        def register(p):
            p.register(WhoAmI)
    """))
    return folder


@pytest.fixture
def evaluation_dataset(tmp_path, fiftyone_db):
    """A persistent video dataset (subprocesses see it) with ground truth and a prediction that
    differs on a few frames."""
    import fiftyone as fo

    name = "t_package"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    label_maps = synthetic_label_maps(8, objects=2)
    sample = fo.Sample(filepath=str(write_video(tmp_path / "pkg.mp4", label_maps)))
    for number, m in enumerate(label_maps, start=1):
        sample.frames[number]["gt"] = fo.Segmentation(mask=m.astype(np.uint8))
        pred = np.where(np.arange(m.shape[1])[None] < 4 * number, 0, m) if number > 2 else m
        sample.frames[number]["pred"] = fo.Segmentation(mask=pred.astype(np.uint8))
    ds.add_sample(sample)
    yield ds
    fo.delete_dataset(name)


def test_a_plugin_with_its_own_plugin_package_runs_beside_ours(tmp_path, evaluation_dataset):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "deaot-vos").symlink_to(REPO, target_is_directory=True)
    other = _other_plugin(plugins)
    out = _run(f"""
import json, sys
import fiftyone as fo, fiftyone.operators as foo
ds = fo.load_dataset({evaluation_dataset.name!r})
theirs = foo.execute_operator("@other/plain/whoami", dict(dataset=ds, view=ds.view())).result
ours = foo.execute_operator({EVAL_URI!r}, dict(dataset=ds, view=ds.view(), params=dict(
    pred_field="pred", gt_field="gt", eval_key="side")))
ours.raise_exceptions()
theirs_again = foo.execute_operator("@other/plain/whoami", dict(dataset=ds, view=ds.view())).result
import deaot_vos.evaluation
print(json.dumps(dict(theirs=theirs, theirs_again=theirs_again, ours=ours.result["status"],
                      jf=ours.result["summary"]["J&F-Mean"], plugin=sys.modules["plugin"].__file__,
                      vos=deaot_vos.evaluation.__file__)))
""", tmp_path, env=dict(FIFTYONE_PLUGINS_DIR=str(plugins)))
    for answer in (out["theirs"], out["theirs_again"]):
        assert answer["owner"] == "other" and answer["answer"] == 42
        assert Path(answer["file"]).parent == other / "plugin"
    assert Path(out["plugin"]).parent == other / "plugin"
    assert out["ours"] == "ok" and 0 < out["jf"] < 1
    assert Path(out["vos"]).resolve() == REPO / "plugin" / "evaluation.py"


_FRESH_LOAD = """
import json, sys
import fiftyone as fo
ds = fo.load_dataset({name!r})
results = ds.load_evaluation_results({key!r})
out = dict(cls=type(results).__module__ + "." + type(results).__name__, jf=results.summary()["J&F-Mean"],
           loaded_plugin=any(m.startswith("fiftyone.plugins.") or m == "plugin" for m in sys.modules))
ds.rename_evaluation({key!r}, "renamed")
ds.reload()
out["after_rename"] = sorted(ds.get_field_schema()) + ["frames." + f for f in sorted(ds.get_frame_field_schema())]
ds.delete_evaluation("renamed")
ds.reload()
out["after_delete"] = sorted(ds.get_field_schema()) + ["frames." + f for f in sorted(ds.get_frame_field_schema())]
print(json.dumps(out))
"""

_RUN_FIELDS = ("{k}_JF", "{k}_J", "{k}_F", "frames.{k}_J", "frames.{k}_F")


def _assert_fresh_process_handles_the_run(ds, key, tmp_path, expected_jf):
    out = _run(_FRESH_LOAD.format(name=ds.name, key=key), tmp_path)
    assert out["cls"] == "deaot_vos.evaluation.VOSEvaluationResults"
    assert out["jf"] == pytest.approx(expected_jf)
    for field in _RUN_FIELDS:
        assert field.format(k="renamed") in out["after_rename"]
        assert field.format(k=key) not in out["after_rename"]
        assert field.format(k="renamed") not in out["after_delete"]
    untouched = {"gt", "pred"}
    assert untouched <= {f.split(".", 1)[-1] for f in out["after_delete"]}


def test_operator_run_loads_renames_and_deletes_in_a_fresh_process(tmp_path, evaluation_dataset):
    import fiftyone.operators as foo

    ds = evaluation_dataset
    result = foo.execute_operator(EVAL_URI, dict(dataset=ds, view=ds.view(), params=dict(
        pred_field="pred", gt_field="gt", eval_key="fresh")))
    result.raise_exceptions()
    doc = ds._doc.evaluations["fresh"]
    assert doc.config["cls"] == "deaot_vos.evaluation.VOSEvaluationConfig"
    _assert_fresh_process_handles_the_run(ds, "fresh", tmp_path, result.result["summary"]["J&F-Mean"])


def test_runs_of_older_versions_are_upgraded_and_load(tmp_path, evaluation_dataset):
    """A run stored under ``plugin.evaluation.*`` (as versions before the rename did) is upgraded
    by the package's first look at the dataset, then behaves like a new one."""
    from bson import json_util

    from deaot_vos.evaluation import evaluate_vos, list_vos_evaluations, upgrade_legacy_runs

    ds = evaluation_dataset
    jf = evaluate_vos(ds, "pred", "gt", eval_key="old").summary()["J&F-Mean"]
    doc = ds._doc.evaluations["old"]
    doc.results.seek(0)
    stored = json_util.loads(doc.results.read().decode())
    assert stored["cls"] == "deaot_vos.evaluation.VOSEvaluationResults"
    # what an older version wrote: both class paths under the generic package name, run type "vos"
    stored["cls"] = "plugin.evaluation.VOSEvaluationResults"
    doc.results.delete()
    doc.results.put(json_util.dumps(stored).encode(), content_type="application/json")
    doc.config = dict(doc.config, cls="plugin.evaluation.VOSEvaluationConfig", type="vos")
    doc.save()

    stale = _run(f"""
import json, fiftyone as fo
ds = fo.load_dataset({ds.name!r})
print(json.dumps(type(ds.load_evaluation_results("old")).__name__))
""", tmp_path)
    assert stale != "VOSEvaluationResults"  # the reason for the upgrade: FiftyOne cannot load it

    assert list_vos_evaluations(ds) == ["old"]  # upgrades on the way
    assert upgrade_legacy_runs(ds) == []  # idempotent
    _assert_fresh_process_handles_the_run(ds, "old", tmp_path, jf)
