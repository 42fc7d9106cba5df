"""The plugin installed the way a FiftyOne user installs it, on another FiftyOne version.

* The install metadata agree: ``requirements.txt`` (what ``fiftyone plugins requirements
  --install`` reads) holds loose lower bounds only, never ``fiftyone`` and no test tools, and
  equals ``pyproject.toml``'s dependencies; the pinned dev/test set satisfies it; ``fiftyone.yml``
  has ``type``, ``author``, ``license``, pyproject's ``version``, the README's install ``url`` and a
  ``fiftyone.version`` lower bound that ``make test-oldest`` and pyproject's extra also use.
* End to end: a fresh venv whose FiftyOne is the oldest version ``fiftyone.yml`` accepts (that
  FiftyOne and whatever it needs beyond this suite's environment come from a cached overlay under
  ``.cache/``; the rest of the suite's environment is shared read-only) runs
  ``fiftyone plugins download <archive URL of this checkout>`` (served on 127.0.0.1, as GitHub
  serves a repository archive) and ``fiftyone plugins requirements @deaot/vos --install``; FiftyOne's
  version is unchanged, nothing is installed, and ``@deaot/vos/propagate_masks`` lists and runs
  on a tiny video, with the packages loaded from the downloaded plugin folder.
* The wheel: built from this working tree, installed non-editable into a fresh venv, it
  propagates offline with an empty cache (``propagate`` and the zoo model's ``apply_model``) on the
  demo weights it ships as package data.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import threading
import time
import tomllib
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from packaging.requirements import Requirement

from conftest import synthetic_label_maps, write_video

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
TEST_TOOLS = {"pytest", "hypothesis", "imageio-ffmpeg"}
PROPAGATE_URI = "@deaot/vos/propagate_masks"


def _alternatives(path: Path) -> list[list[Requirement]]:
    """Each line's requirements: FiftyOne reads ``a|b`` as "a, or else b" (it installs ``a``)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [[Requirement(part) for part in line.split("|")] for line in lines if line]


def _requirements(path: Path) -> list[Requirement]:
    """The requirement of each line that FiftyOne installs (of ``a|b``: ``a``)."""
    return [alternatives[0] for alternatives in _alternatives(path)]


def _name(req: Requirement) -> str:
    return re.sub(r"[-_.]+", "-", req.name).lower()


def _plugin_metadata() -> dict:
    return yaml.safe_load((REPO / "fiftyone.yml").read_text())


def _oldest_fiftyone() -> str:
    """The X.Y.Z of fiftyone.yml's ``fiftyone: version: ">=X.Y.Z"``."""
    spec = _plugin_metadata()["fiftyone"]["version"]
    match = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)", spec.strip())
    assert match, f"fiftyone.yml: fiftyone.version must be '>=X.Y.Z' (make test-oldest reads it), got {spec!r}"
    return match.group(1)


# -- metadata ---------------------------------------------------------------------------------

def test_runtime_requirements_are_loose_and_match_pyproject():
    runtime = _requirements(REPO / "requirements.txt")
    names = {_name(r) for r in runtime}
    assert not {n for n in names if n.startswith("fiftyone")}, "requirements.txt must never name fiftyone"
    assert not names & TEST_TOOLS, f"test tools in the runtime requirements: {names & TEST_TOOLS}"
    for req in (r for alternatives in _alternatives(REPO / "requirements.txt") for r in alternatives):
        operators = {spec.operator for spec in req.specifier}
        assert operators == {">="}, f"requirements.txt: {req} is not a plain lower bound"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(map(str, runtime)) == sorted(str(Requirement(d)) for d in project["dependencies"])
    assert project["optional-dependencies"]["fiftyone"] == [f"fiftyone>={_oldest_fiftyone()}"]


def test_dev_set_is_pinned_and_satisfies_the_runtime_bounds():
    dev = {_name(r): r for r in _requirements(REPO / "requirements-dev.txt")}
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in dev.values()), dev
    assert TEST_TOOLS | {"fiftyone"} <= set(dev)
    for req in _requirements(REPO / "requirements.txt"):
        assert _name(req) in dev, f"{req.name} is not pinned in requirements-dev.txt"
        pinned = next(iter(dev[_name(req)].specifier)).version
        assert req.specifier.contains(pinned), f"requirements-dev.txt pins {req.name}=={pinned} outside {req}"


def test_plugin_metadata_for_fiftyone():
    meta = _plugin_metadata()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "@deaot/vos" and meta["type"] == "plugin" and meta["author"]
    assert meta["version"] == project["version"]
    assert meta["license"] == project["license"]
    assert "BSD 3-Clause" in (REPO / "LICENSE").read_text().splitlines()[0]
    readme = (REPO / "README.md").read_text()
    assert f"fiftyone plugins download {meta['url']}" in readme
    assert "fiftyone plugins requirements @deaot/vos --install" in readme
    assert tuple(map(int, _oldest_fiftyone().split("."))) >= (1, 3, 0)  # custom metrics came in 1.3.0


# -- end to end -------------------------------------------------------------------------------

def _site_dir(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def _make_venv(path: Path, site_dirs: list[Path]) -> Path:
    """A venv without pip of its own whose ``sys.path`` continues with ``site_dirs`` (a .pth file:
    their own .pth files, e.g. this checkout's editable install, are not run). Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    (_site_dir(python) / "_deaot_test_base.pth").write_text("".join(f"{d}\n" for d in site_dirs))
    return python


def _fiftyone_overlay(version: str) -> Path:
    """A site dir holding FiftyOne ``version`` and what it needs beyond this environment, built
    once per version and environment under .cache/ (pip reuses everything already satisfied here,
    and leaves this environment alone: it uninstalls nothing outside its own prefix)."""
    key = hashlib.sha256(f"{sys.prefix}\n{(REPO / 'requirements-dev.txt').read_text()}".encode()).hexdigest()[:10]
    home = CACHE / f"fiftyone-{version}-{key}"
    CACHE.mkdir(exist_ok=True)
    with open(CACHE / f"{home.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run building the same overlay waits here
        if not (home / "complete").exists():
            shutil.rmtree(home, ignore_errors=True)
            python = _make_venv(home, [Path(sysconfig.get_paths()["purelib"])])
            done = subprocess.run([str(python), "-m", "pip", "install", "-q", f"fiftyone=={version}"],
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"could not install fiftyone=={version}:\n{done.stderr[-3000:]}"
            (home / "complete").write_text(version)
    return _site_dir(home / "bin" / "python")


def _checkout_archive(folder: Path) -> Path:
    """This working tree (tracked and untracked, not ignored files) as GitHub's archive of a
    branch lays it out: one top folder."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    folder.mkdir()
    archive = folder / "fiftyone-deaot-main.tar"
    with tarfile.open(archive, "w") as tar:
        for rel in sorted(filter(None, listed)):
            if (REPO / rel).is_file():
                tar.add(REPO / rel, arcname=f"fiftyone-deaot-main/{rel}", recursive=False)
    return archive


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serve(archive: Path):
    """Serve ``archive`` on 127.0.0.1; yields its URL."""
    handler = functools.partial(_QuietHandler, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _run(python: Path, env: dict, code: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -c code args`` in ``env``, outside the checkout; must succeed."""
    done = subprocess.run([str(python), "-c", textwrap.dedent(code), *args], cwd=env["FIFTYONE_PLUGINS_DIR"],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


FIFTYONE_CLI = "from fiftyone.core.cli import main; main()"  # the `fiftyone` command
# FiftyOne's version and the file ``import fiftyone`` would load, without importing it (seconds)
VERSION = """
import importlib.metadata, importlib.util
print(importlib.metadata.version("fiftyone"), importlib.util.find_spec("fiftyone").origin)
"""
RUN_OPERATOR = """
import json, sys
import numpy as np
import torch
import importlib.metadata
import fiftyone as fo, fiftyone.operators as foo, fiftyone.plugins as fop

torch.set_num_threads(1)
video, maps_path, checkpoint, uri = sys.argv[1:]
ds = fo.Dataset()
sample = fo.Sample(filepath=video)
sample.frames[1]["kf"] = fo.Segmentation(mask=np.load(maps_path)[0].astype(np.uint8))
ds.add_sample(sample)
params = dict(keyframes_field="kf", output_field="out", model="DeAOTT", checkpoint=checkpoint, device="cpu")
result = foo.execute_operator(uri, dict(dataset=ds, view=ds.view(), params=params)).result
ds.reload()
import deaot_core, deaot_vos
print(json.dumps(dict(
    fiftyone=[importlib.metadata.version("fiftyone"), fo.__file__],
    plugins=[p.name for p in fop.list_plugins()],
    operators=[o.uri for o in foo.list_operators()],
    result={k: result[k] for k in ("status", "propagated", "frames")},
    objects=[f["out"] and sorted(d.index for d in f["out"].detections) for f in ds.first().frames.values()],
    packages=[deaot_core.__file__, deaot_vos.__file__])))
"""


def test_download_and_install_requirements_keep_fiftyone_and_operators_run(fiftyone_db, tmp_path,
                                                                           tiny_checkpoint):
    oldest = _oldest_fiftyone()
    python = _make_venv(tmp_path / "venv", [_fiftyone_overlay(oldest), Path(sysconfig.get_paths()["purelib"])])
    venv_site = _site_dir(python)
    plugins_dir = tmp_path / "plugins"
    plugins_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(FIFTYONE_PLUGINS_DIR=str(plugins_dir), FIFTYONE_DATABASE_NAME=f"deaot-install-{uuid.uuid4().hex[:8]}")

    before = _run(python, env, VERSION).stdout.split()
    assert before[0] == oldest

    with _serve(_checkout_archive(tmp_path / "www")) as url:
        _run(python, env, FIFTYONE_CLI, "plugins", "download", url)
    [metadata] = list(plugins_dir.rglob("fiftyone.yml"))
    plugin_dir = metadata.parent
    assert (plugin_dir / "requirements.txt").read_text() == (REPO / "requirements.txt").read_text()

    installed = _run(python, env, FIFTYONE_CLI, "plugins", "requirements", "@deaot/vos", "--install")
    assert f"requires fiftyone>={oldest}" in installed.stdout + installed.stderr
    assert sorted(p.name for p in venv_site.iterdir()) == ["_deaot_test_base.pth"], "the install installed something"

    maps = synthetic_label_maps(6)
    video = write_video(tmp_path / "clip.mp4", maps)
    np.save(tmp_path / "maps.npy", maps)
    done = _run(python, env, RUN_OPERATOR, str(video), str(tmp_path / "maps.npy"), tiny_checkpoint, PROPAGATE_URI)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["fiftyone"] == before, "installing the requirements changed FiftyOne"
    assert "@deaot/vos" in report["plugins"] and PROPAGATE_URI in report["operators"]
    assert report["result"] == {"status": "ok", "propagated": 1, "frames": 6}
    assert len(report["objects"]) == 6 and report["objects"][0] == [1, 2]  # the keyframe, exactly
    assert all(objects is not None and set(objects) <= {1, 2} for objects in report["objects"]), report["objects"]
    assert all(Path(p).is_relative_to(plugin_dir) for p in report["packages"]), report["packages"]


# -- the wheel ----------------------------------------------------------------------------------

DEMO_FILE = "deaot_core/weights/deaot_t_synthetic.pth"
RUN_FROM_WHEEL = """
import json, shutil, sys
import numpy as np
import torch
import fiftyone as fo, fiftyone.zoo as foz
import deaot_core, deaot_vos
from deaot_core import pretrained

torch.set_num_threads(1)
video, maps_path, zoo_dir = sys.argv[1:]
ds = fo.Dataset()
sample = fo.Sample(filepath=video)
label_map = np.load(maps_path)[0]
sample.frames[1]["kf"] = fo.Segmentation(mask=label_map.astype(np.uint8))
ds.add_sample(sample)
summary = deaot_vos.propagate(ds, "kf", "out", model="DeAOTT", device="cpu")
fo.config.model_zoo_dir = zoo_dir
model = foz.load_zoo_model("deaot/DeAOTT-synthetic-demo", device="cpu", prompt_field="frames.kf")
ds.apply_model(model, label_field="zoo")
frames = ds.first().frames.values()
print(json.dumps(dict(
    packages=[deaot_core.__file__, deaot_vos.__file__], demo=str(pretrained.DEMO_CHECKPOINT),
    summary={k: summary[k] for k in ("weights", "checkpoint", "model")},
    rows=[row["status"] for row in summary["samples"]],
    zoo_checkpoint=model.choice.checkpoint,
    out=[sorted(d.index for d in f["out"].detections) for f in frames],
    same=[[d.mask.tobytes() for d in f["out"].detections] == [d.mask.tobytes() for d in f["zoo"].detections]
          for f in frames])))
"""


def _site_packages_of_this_environment() -> list[Path]:
    """The site-packages directories on this interpreter's path (a layered venv has several)."""
    return [Path(p) for p in sys.path if Path(p).name == "site-packages" and Path(p).is_dir()]


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel of this working tree (tracked and untracked, not ignored files), built from a
    copy so that nothing is written into the checkout; build dependencies come from the registry."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    source = tmp_path / "source"
    for rel in filter(None, listed):
        if (REPO / rel).is_file():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, source / rel)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                           str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    [wheel] = (tmp_path / "dist").glob("fiftyone_deaot_vos-*.whl")
    return wheel


def test_the_wheel_installed_offline_propagates_with_its_shipped_weights(fiftyone_db, tmp_path):
    """Built, installed non-editable into a fresh venv (the rest of this environment shared
    through a .pth line, this checkout's editable install not), then offline with an empty
    cache: ``propagate`` and the zoo model's ``apply_model`` run on the demo weights inside the
    installed package."""
    import zipfile

    started = time.monotonic()
    wheel = _build_wheel(tmp_path)
    print(f"wheel built in {time.monotonic() - started:.1f} s")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.getinfo(DEMO_FILE)
    assert shipped.file_size == (REPO / DEMO_FILE).stat().st_size
    venv = tmp_path / "venv"
    python = _make_venv(venv, _site_packages_of_this_environment())
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                           "--ignore-installed", "--prefix", str(venv), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    maps = synthetic_label_maps(6)
    video = write_video(tmp_path / "clip.mp4", maps)
    np.save(tmp_path / "maps.npy", maps)
    zoo_dir = tmp_path / "model_zoo"
    (zoo_dir / "deaot" / "vos").mkdir(parents=True)
    for name in ("manifest.json", "__init__.py"):  # FiftyOne copies these two files of a source
        shutil.copy(REPO / "zoo" / name, zoo_dir / "deaot" / "vos" / name)
    (tmp_path / "cache").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(DEAOT_OFFLINE="1", DEAOT_CACHE=str(tmp_path / "cache"), FIFTYONE_PLUGINS_DIR=str(tmp_path),
               FIFTYONE_DATABASE_NAME=f"deaot-wheel-{uuid.uuid4().hex[:8]}")
    done = _run(python, env, RUN_FROM_WHEEL, str(video), str(tmp_path / "maps.npy"), str(zoo_dir))
    print(f"wheel built, installed and run in {time.monotonic() - started:.1f} s")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(Path(p).is_relative_to(venv) for p in report["packages"]), report["packages"]
    assert Path(report["demo"]).is_relative_to(venv) and report["demo"].endswith(DEMO_FILE)
    assert report["summary"] == dict(weights="demo", checkpoint=report["demo"], model="DeAOTT")
    assert report["rows"] == ["ok"]
    assert Path(report["zoo_checkpoint"]).is_relative_to(zoo_dir)  # copied there from the package
    assert report["out"][0] == [1, 2] and all(report["out"]), report["out"]
    assert all(report["same"]), report["same"]
