"""``python -m deaot_vos demo`` (``make demo``): a persistent FiftyOne video dataset with keyframe
masks, propagated with the default model resolution.

Samples:

- ``synthetic.mp4``: generated here (48 frames, 384x216): four shapes moving over a textured
  background, keyframes on frames 8 (three shapes) and 30 (a fourth shape has entered), and a
  ``ground_truth`` field on every frame. Shows backward filling (frames 1-7) and an object that
  first appears on a later keyframe.
- two real clips from the official AOT/DeAOT demo (YouTube-VOS frames, BSD-3-Clause), downscaled
  from 1920x1080 to 480x270 and stored in ``demo_data/aot-demo/`` as H.264 MP4s with their
  first-frame label maps (44 and 43 objects, labelled ``object <n>`` by their value in the map):
  many-object propagation.

The dataset opens in the App coloured by instance (each object its own colour).

Videos are written as H.264 with the ffmpeg binary of the ``imageio-ffmpeg`` wheel so the App's
browser can play them (OpenCV's mp4v is readable by decord but not playable in Chromium); that
binary is used only here, never on the propagation path. Frames are small so the demo runs in a
few minutes on 2 CPU cores.

Media go to :func:`media_dir` (FiftyOne's default dataset folder, one folder per dataset name and
database), with a plugins folder beside them (:func:`plugins_dir`) for ``FIFTYONE_PLUGINS_DIR``;
the end of the run prints the commands that open the App with the plugin loaded and evaluate
the result (:func:`hints`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from .labels import ObjectRegistry, mask_to_detections
from .propagation import propagate
from .reporting import print_summary, tqdm_progress
from .video_io import video_metadata, write_mp4
from .weights import DEFAULT_MODEL, REPO_ROOT

log = logging.getLogger(__name__)

DEMO_DIR = REPO_ROOT / "demo_data"
AOT_DIR = DEMO_DIR / "aot-demo"
REAL_CLIPS = ("1001_3iEIq5HBY1s", "1007_YCTBBdbKSSg")
KEYFRAMES_FIELD = "keyframes"
OUTPUT_FIELD = "deaot"
SEGMENTATION_FIELD = "deaot_segmentation"
SHAPES = {1: "circle", 2: "square", 3: "triangle", 4: "ellipse"}


# -- encoding ------------------------------------------------------------------------------------

def write_video(frames, path: str | Path, fps: float = 24.0) -> str:
    """Encode (H, W, 3) uint8 RGB frames as an App-playable H.264 MP4 (see ``write_mp4``)."""
    return write_mp4(frames, path, fps=fps)


# -- data ----------------------------------------------------------------------------------------

def prepare_real_clips(source: str | Path, target: str | Path = AOT_DIR, width: int = 480) -> None:
    """Maintainers only: downscale the official demo clips (``source``: the official demo folder,
    with ``images/<clip>/*.jpg`` and ``masks/<clip>/*.png``) into ``target`` as H.264 MP4 +
    label-map PNG (what the repository ships)."""
    from PIL import Image

    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for clip in REAL_CLIPS:
        images = sorted((source / "images" / clip).glob("*.jpg"))
        mask_file = sorted((source / "masks" / clip).glob("*.png"))[0]
        size = Image.open(images[0]).size
        new = (width, int(round(size[1] * width / size[0] / 2)) * 2)

        def frames():
            for image in images:
                yield np.asarray(Image.open(image).convert("RGB").resize(new, Image.BILINEAR))

        write_video(frames(), target / f"{clip}.mp4", fps=24)
        mask = Image.open(mask_file)
        mask.resize(new, Image.NEAREST).save(target / f"{clip}.png")


def synthetic_label_maps(num_frames: int = 48, width: int = 384, height: int = 216) -> np.ndarray:
    """(T, H, W) label maps of four moving shapes (4 enters from the right on frame ~18)."""
    import cv2

    maps = np.zeros((num_frames, height, width), dtype=np.uint8)
    for t in range(num_frames):
        m = maps[t]
        # drawn back to front: later shapes occlude earlier ones
        cx = int(40 + 5.5 * t)
        cv2.circle(m, (cx, int(70 + 25 * np.sin(t / 6))), 26, 1, -1)
        x = int(250 - 2.5 * t)
        y = int(120 + 30 * np.cos(t / 8))
        cv2.rectangle(m, (x, y), (x + 46, y + 46), 2, -1)
        tx, ty = int(60 + 3 * t), int(185 - 1.5 * t)
        cv2.fillPoly(m, [np.array([(tx, ty - 34), (tx - 30, ty + 18), (tx + 30, ty + 18)], np.int32)], 3)
        ex = int(width + 40 - 7 * (t - 14))
        if ex - 36 < width:
            cv2.ellipse(m, (ex, 150), (36, 20), 15, 0, 360, 4, -1)
    return maps


def synthetic_frames(maps: np.ndarray) -> np.ndarray:
    """Render RGB frames for ``maps``: shaded coloured shapes on a textured, drifting background."""
    t, h, w = maps.shape
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(7)
    texture = rng.integers(-18, 18, size=(h, w + t * 2, 3))
    colours = np.array([[0, 0, 0], [220, 60, 50], [60, 190, 80], [70, 90, 230], [235, 200, 40]], np.float32)
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        base = np.stack([90 + 40 * xx / w, 100 + 30 * yy / h, 120 - 30 * xx / w], -1)
        frame = base + texture[:, 2 * i:2 * i + w]
        fg = maps[i] > 0
        shade = (0.85 + 0.15 * np.sin(xx / 9.0 + yy / 13.0))[..., None]
        frame[fg] = (colours[maps[i]] * shade)[fg]
        frames[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def _detections(label_map: np.ndarray, names: dict[int, str], confidence=None):
    registry = ObjectRegistry()
    for k in sorted(int(v) for v in np.unique(label_map) if v):
        registry.get(("value", k), names.get(k, f"object {k}"), 1, index=k)
    return mask_to_detections(label_map.astype(np.int32), None, registry, {}, exact_confidence=confidence)


def database_tag() -> str | None:
    """None for FiftyOne's default database (its own mongod in the default ``database_dir``, the
    default ``database_name``); else a short tag of the database in use, so that demos built on
    two databases of one machine keep their media apart."""
    import fiftyone as fo
    import fiftyone.constants as foc

    same_dir = os.path.realpath(os.path.expanduser(fo.config.database_dir)) == os.path.realpath(foc.DEFAULT_DB_DIR)
    where = (fo.config.database_uri or "", "" if same_dir else str(fo.config.database_dir),
             "" if fo.config.database_name == "fiftyone" else fo.config.database_name)
    if not any(where):
        return None
    return hashlib.sha1("\n".join(where).encode()).hexdigest()[:8]


def media_dir(name: str = "deaot-demo") -> Path:
    """Where the demo dataset ``name`` keeps its videos: ``<fo.config.default_dataset_dir>/<name>``
    (``FIFTYONE_DEFAULT_DATASET_DIR``), ``<name>-db-<tag>`` on a database other than the default
    one (:func:`database_tag`)."""
    import fiftyone as fo

    tag = database_tag()
    return Path(fo.config.default_dataset_dir).expanduser() / (f"{name}-db-{tag}" if tag else name)


def plugins_dir(workdir: str | Path) -> Path:
    """A FiftyOne plugins folder beside the demo's media (``<workdir>/plugins``) holding a link to
    this checkout, for ``FIFTYONE_PLUGINS_DIR``; made (or its link repaired) here."""
    folder = Path(workdir) / "plugins"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "deaot-vos"
    if link.is_symlink() and link.resolve() != REPO_ROOT.resolve():
        link.unlink()
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    return folder


def build_dataset(name: str = "deaot-demo", real_clips: bool = True, workdir: str | Path | None = None):
    """Create (replace) the persistent demo dataset; returns it. Videos go to ``workdir``
    (default: :func:`media_dir`)."""
    import fiftyone as fo
    from PIL import Image

    workdir = Path(workdir) if workdir else media_dir(name)
    workdir.mkdir(parents=True, exist_ok=True)
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name, persistent=True)
    samples = []

    maps = synthetic_label_maps()
    video = workdir / "synthetic.mp4"
    codec = write_video(synthetic_frames(maps), video, fps=12)
    sample = fo.Sample(filepath=str(video), source="synthetic", tags=["synthetic"])
    sample.metadata = video_metadata(video)
    for number in range(1, len(maps) + 1):
        sample.frames[number]["ground_truth"] = _detections(maps[number - 1], SHAPES)
    for number, objects in ((8, (1, 2, 3)), (30, (1, 2, 3, 4))):
        keyframe = np.where(np.isin(maps[number - 1], objects), maps[number - 1], 0)
        sample.frames[number][KEYFRAMES_FIELD] = _detections(keyframe, SHAPES)
    samples.append(sample)

    if real_clips:
        for clip in REAL_CLIPS:
            src = AOT_DIR / f"{clip}.mp4"
            if not src.is_file():
                log.warning("demo clip %s is missing; skipped", src)
                continue
            video = workdir / src.name
            shutil.copyfile(src, video)
            mask = np.array(Image.open(AOT_DIR / f"{clip}.png"))
            sample = fo.Sample(filepath=str(video), source="aot-demo", tags=["aot-demo"])
            sample.metadata = video_metadata(video)
            sample.frames[1][KEYFRAMES_FIELD] = _detections(mask, {})
            samples.append(sample)
    dataset.add_samples(samples)
    dataset.info["description"] = "DeAOT plugin demo: keyframe masks in 'keyframes', propagated into 'deaot'"
    # one colour per object (its index), not one per field: the real clips' 44 masks are told apart
    dataset.app_config.color_scheme = fo.ColorScheme(color_by="instance")
    dataset.save()
    log.info("demo dataset '%s': %s videos in %s (synthetic video codec: %s)", name, len(samples), workdir, codec)
    return dataset


def app_command(name: str, plugins: str | Path, python: str | None = None) -> str:
    """The shell command that opens dataset ``name`` in the App with this plugin loaded
    (``FIFTYONE_PLUGINS_DIR`` = ``plugins``) and *Schedule* (delegated runs) available
    (``FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true``)."""
    code = f"import fiftyone as fo; fo.launch_app(fo.load_dataset({name!r})).wait()"
    return (f"FIFTYONE_PLUGINS_DIR={shlex.quote(str(plugins))} FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true "
            f"{shlex.quote(python or sys.executable)} -c \"{code}\"")


def evaluate_command(name: str, python: str | None = None, plugins: str | Path | None = None) -> str:
    """The documented J&F evaluation of the demo's propagation (the synthetic video's
    ``ground_truth``; the real clips have none and are skipped). ``--extra-objects ignore``: the
    fourth shape enters after the first ground-truth frame, an "extra object" to the official rule.
    With ``plugins`` (the folder for ``FIFTYONE_PLUGINS_DIR``, where FiftyOne finds the J&F metrics)
    it also stores the ``deaot_seg`` run that FiftyOne's Model Evaluation panel shows."""
    command = (f"{_python(python)} -m deaot_vos evaluate --dataset {shlex.quote(name)} "
               f"--pred-field {OUTPUT_FIELD} --gt-field ground_truth --eval-key deaot_eval --extra-objects ignore")
    if plugins is None:
        return command
    return f"FIFTYONE_PLUGINS_DIR={shlex.quote(str(plugins))} {command} --segmentation-key deaot_seg --overwrite"


def _python(python: str | None) -> str:
    return shlex.quote(python or sys.executable)


def next_steps(name: str, plugins: str | Path, python: str | None = None) -> list[tuple[str, str]]:
    """(what it does, the exact shell command) for each thing to try after the demo, in order: each
    command runs as printed once the ones before it ran (the App and the worker keep running)."""
    py, quoted = _python(python), shlex.quote(name)
    export_dir = shlex.quote(str(media_dir(name) / "davis-export"))
    return [
        ("Open it in the App with the plugin loaded (the operator browser, `, lists the DeAOT operators; "
         "*Schedule* runs them in a worker)", app_command(name, plugins, python)),
        ("J&F of the synthetic video against its ground truth, also as a run of FiftyOne's Model Evaluation "
         "panel (key deaot_seg)", evaluate_command(name, python, plugins)),
        ("The J&F summary table of every evaluation run (add runs to compare them)",
         f"{py} -m deaot_vos compare --dataset {quoted}"),
        ("Where to label next: each frame scored by how likely its masks are wrong; the best frames as the "
         "saved view 'deaot_review-top'", f"{py} -m deaot_vos suggest --dataset {quoted} --output-field {OUTPUT_FIELD}"),
        ("After adding or fixing a keyframe in 'keyframes': recompute only the frames that depend on it",
         f"{py} -m deaot_vos propagate --dataset {quoted} --keyframes-field {KEYFRAMES_FIELD} "
         f"--output-field {OUTPUT_FIELD} --write-segmentation {SEGMENTATION_FIELD} --incremental"),
        ("The masks as a DAVIS folder, and back into a new dataset",
         f"{py} -m deaot_vos export-vos --dataset {quoted} --label-field {OUTPUT_FIELD} --export-dir {export_dir} "
         f"--overwrite && {py} -m deaot_vos import-vos --dataset-dir {export_dir} "
         f"--name {shlex.quote(name + '-davis')} --overwrite"),
        ("A worker for the operations scheduled from the App",
         f"FIFTYONE_PLUGINS_DIR={shlex.quote(str(plugins))} "
         f"{shlex.quote(str(Path(python or sys.executable).parent / 'fiftyone'))} delegated launch"),
    ]


def hints(name: str, plugins: str | Path, python: str | None = None) -> str:
    """What the demo prints at the end: the fields it made and :func:`next_steps`."""
    lines = [f"Frame fields: '{KEYFRAMES_FIELD}' = the given keyframes, '{OUTPUT_FIELD}' = propagated instance "
             f"masks, '{SEGMENTATION_FIELD}' = label maps; the synthetic video also has 'ground_truth'. "
             f"{plugins} (made by the demo) links this checkout, for FIFTYONE_PLUGINS_DIR.", "Next steps:"]
    for number, (what, command) in enumerate(next_steps(name, plugins, python), start=1):
        lines += [f"{number}. {what}:", f"    {command}"]
    return "\n".join(lines)


def run_demo(name: str = "deaot-demo", device: str = "auto", real_clips: bool = True, launch: bool = False) -> int:
    import fiftyone as fo

    start = time.time()
    workdir = media_dir(name)
    dataset = build_dataset(name, real_clips=real_clips, workdir=workdir)
    plugins = plugins_dir(workdir)
    print(f"built dataset '{name}' with {len(dataset)} videos in {time.time() - start:.1f}s (media in {workdir}); "
          f"propagating (small videos: 384x216 and 480x270, so this runs in a few minutes on 2 CPU cores)")
    bar, progress = tqdm_progress()
    try:
        summary = propagate(dataset, KEYFRAMES_FIELD, OUTPUT_FIELD, model=DEFAULT_MODEL, device=device,
                            overwrite=True, progress=progress, write_segmentation=SEGMENTATION_FIELD,
                            allow_random_weights=True)
    finally:
        bar.close()
    print_summary(summary)
    if summary["weights"] == "random":
        print("\nWARNING: no checkpoint was found, the masks come from RANDOMLY INITIALISED weights and are "
              "meaningless.\n         Put an official checkpoint in ~/.cache/deaot (or $DEAOT_CACHE) or add "
              "deaot_core/weights/deaot_t_synthetic.pth, then rerun `make demo`.", file=sys.stderr)
    print("\n" + hints(name, plugins))
    if launch:
        os.environ["FIFTYONE_PLUGINS_DIR"] = str(plugins)  # the App server process reads it
        os.environ["FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"] = "true"
        fo.config.plugins_dir, fo.config.allow_legacy_orchestrators = str(plugins), True
        session = fo.launch_app(dataset)
        session.wait()
    return 0
