"""The FiftyOne remote zoo model source of this repository (folder ``zoo/``): its manifest and the
``download_model`` / ``load_model`` that ``zoo/__init__.py`` hands over to.

Models: ``deaot/<variant>`` for the 12 official variants (``deaot_core.MODEL_NAMES``; weights:
the released ``<variant>_PRE_YTB_DAV.pth`` of ``deaot_core.WEIGHTS``, downloaded by
``deaot_core.hub``) and :data:`DEMO_ZOO_NAME`, the shipped demo checkpoint (a DeAOTT trained on
synthetic clips; no download). ``python -m deaot_vos.zoo`` rewrites ``zoo/manifest.json`` from
these tables.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import deaot_core
from deaot_core import pretrained
from deaot_core.hub import download, download_timeout

from .weights import DEMO_MODEL, DOWNLOAD_TIMEOUT, OFFLINE_ENV, cache_dir, is_offline, official_checkpoint_name
from .zoo_model import DeAOTVideoModel, build_video_model

log = logging.getLogger(__name__)

SOURCE_NAME = "deaot/vos"  # the manifest's name: FiftyOne keeps the source in <model_zoo_dir>/deaot/vos
PREFIX = "deaot/"
DEMO_ZOO_NAME = PREFIX + "DeAOTT-synthetic-demo"
MANIFEST_PATH = Path(__file__).resolve().parents[1] / "zoo" / "manifest.json"
OFFICIAL_SOURCE = "https://github.com/yoxu515/aot-benchmark"
#: the models' requirements: requirements.txt's lines (tests/test_zoo.py checks), all installable from
#: the registry; the code comes from the installed packages or the @deaot/vos plugin (zoo/__init__.py)
PACKAGES = ["torch>=2.1", "torchvision>=0.16", "numpy>=1.24", "decord2>=2.0|decord>=0.6", "opencv-python-headless>=4.5",
            "tqdm>=4.40"]


def variant_of(model_name: str) -> str:
    """The official variant of zoo model ``model_name`` (``deaot/R50_DeAOTL`` -> ``R50_DeAOTL``; the
    demo -> ``DeAOTT``); ValueError naming the known models otherwise."""
    base = model_name.split("@", 1)[0]
    if base == DEMO_ZOO_NAME:
        return DEMO_MODEL
    variant = base[len(PREFIX):] if base.startswith(PREFIX) else None
    if variant not in deaot_core.MODEL_NAMES:
        raise ValueError(f"unknown DeAOT zoo model {model_name!r}; known: {', '.join(zoo_model_names())}")
    return variant


def zoo_model_names() -> list[str]:
    return [PREFIX + name for name in deaot_core.MODEL_NAMES] + [DEMO_ZOO_NAME]


def _entry(base_name: str, base_filename: str, description: str, tags: list[str],
           author: str = "Zongxin Yang, Yunchao Wei, Yi Yang (AOT / DeAOT)", **extra) -> dict[str, Any]:
    return dict(base_name=base_name, base_filename=base_filename, version=None, description=description,
                author=author, license="BSD-3-Clause", source=OFFICIAL_SOURCE, **extra,
                requirements=dict(packages=PACKAGES, cpu=dict(support=True), gpu=dict(support=True)),
                tags=["segmentation", "video", "tracking", "torch", "deaot", *tags])


def manifest() -> dict[str, Any]:
    """The source's ``manifest.json`` content: one entry per official variant, then the demo."""
    models = []
    for name in deaot_core.MODEL_NAMES:
        file_name = official_checkpoint_name(name)
        models.append(_entry(PREFIX + name, file_name,
                             f"{name} (video object segmentation: propagates keyframe masks to every frame), the "
                             f"released {file_name} weights (YouTube-VOS + DAVIS), downloaded from the official "
                             f"model zoo", ["official"]))
    demo = pretrained.DEMO_CHECKPOINT
    models.append(_entry(DEMO_ZOO_NAME, demo.name,
                         f"{DEMO_MODEL} trained from scratch on synthetic clips by this project (a demo, not the "
                         f"official weights): shipped with the package, works offline", ["demo", "synthetic"],
                         author="the fiftyone-deaot maintainers (architecture: AOT / DeAOT authors)",
                         size_bytes=demo.stat().st_size if demo.is_file() else None))
    return dict(name=SOURCE_NAME, url=None, models=models)


def manifest_text() -> str:
    return json.dumps(manifest(), indent=4) + "\n"


def download_model(model_name: str, model_path: str) -> None:
    """Put ``model_name``'s checkpoint at ``model_path``: the demo is copied from the package; an
    official file is copied from the DeAOT cache dir when there, else downloaded from its official
    URL (refused when ``$DEAOT_OFFLINE`` is set). Errors say where to put the file by hand."""
    variant, target = variant_of(model_name), Path(model_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if model_name.split("@", 1)[0] == DEMO_ZOO_NAME:
        demo = pretrained.DEMO_CHECKPOINT
        if not demo.is_file():
            raise FileNotFoundError(f"the demo checkpoint {demo} is not in this install of deaot_vos "
                                    f"(install the package from a checkout, or copy the file to {target})")
        shutil.copyfile(demo, target)
        return
    cached = cache_dir() / official_checkpoint_name(variant)
    if cached.is_file():
        log.info("zoo: copying %s from the DeAOT cache dir to %s", cached, target)
        shutil.copyfile(cached, target)
        return
    entry = pretrained.OFFICIAL_WEIGHTS[variant]
    if is_offline():
        raise RuntimeError(f"{OFFLINE_ENV} is set: not downloading {entry.url}; put {entry.file_name} at {target} "
                           f"or in {cache_dir()}")
    download(entry.url, entry.sha256, directory=target.parent, filename=target.name,
             timeout=download_timeout(DOWNLOAD_TIMEOUT))


def load_model(model_name: str, model_path: str, **kwargs) -> DeAOTVideoModel:
    """The :class:`DeAOTVideoModel` of ``model_name`` with the checkpoint at ``model_path``;
    ``kwargs``: ``prompt_field``, ``segmentation``, ``polylines``, ``device`` and the engine knobs
    (:func:`deaot_vos.zoo_model.build_video_model`)."""
    if kwargs.get("checkpoint"):
        raise TypeError("a zoo model loads its own checkpoint; for another file use deaot_vos.zoo_model."
                        "build_video_model(model, checkpoint=...)")
    kwargs.pop("checkpoint", None)
    return build_video_model(variant_of(model_name), checkpoint=os.fspath(model_path), **kwargs)


if __name__ == "__main__":  # python -m deaot_vos.zoo [--check]
    text = manifest_text()
    if "--check" in sys.argv[1:]:
        same = MANIFEST_PATH.is_file() and MANIFEST_PATH.read_text() == text
        print(f"{MANIFEST_PATH}: {'up to date' if same else 'differs from deaot_vos.zoo.manifest()'}")
        sys.exit(0 if same else 1)
    MANIFEST_PATH.write_text(text)
    print(f"wrote {MANIFEST_PATH} ({len(manifest()['models'])} models)")
