"""The README's App screenshot (``docs/app_propagated.jpg``): the demo's real clip propagated with a
checkpoint, shown in FiftyOne's App in headless Chromium, saved as a JPEG.

    .venv/bin/python bench/app_screenshot.py --out docs/app_propagated.jpg \\
        [--checkpoint deaot_core/weights/deaot_t_synthetic.pth] [--frame 40]

What it does, all in a temporary folder removed at the end (the user's FiftyOne database, config,
plugins and model cache are never touched):

1. starts its own mongod (FiftyOne's bundled binary) on a free port and points
   ``FIFTYONE_DATABASE_URI`` at it before FiftyOne is imported, as ``tests/conftest.py`` does;
2. builds the demo dataset with the demo's own code (``deaot_vos.demo.build_dataset``) and
   propagates its ``keyframes`` into ``deaot`` as ``make demo`` does, but only on the real clip
   ``1001_3iEIq5HBY1s`` (the other videos are built, not propagated), with ``--checkpoint``
   (default: the shipped demo checkpoint, which ``make demo`` runs when no official weights are
   cached; ``--model`` must match the checkpoint's architecture);
3. starts FiftyOne's App server and headless Chromium (``tests/browser_app.py``), opens a clip
   view of frames ``--frame`` .. ``--frame``+5 (at most the last) of that clip (a saved view) in the sample modal,
   with only ``frames.deaot`` active and colours by instance, waits until the modal's picture
   is drawn and stops changing, and saves it as a JPEG (quality 85, lowered while over 300 KB).

Needs Debian's chromium and chromium-driver (``make browser``); without them it exits with 2
before any work. On a failure the browser's screenshot, page HTML and the server's log stay in
``tests/artifacts/app_screenshot/``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # browser_app: the App server and Chromium of tests/test_browser.py

from browser_app import AppServer, Browser, data_cy, require_chromium, text_is  # noqa: E402
from bench_speed import PrivateMongo  # noqa: E402  (this folder is on sys.path: a script here)

CLIP = "1001_3iEIq5HBY1s"
DATASET = "deaot-demo"
SAVED_VIEW = "app-screenshot"
ARTIFACTS = REPO / "tests" / "artifacts" / "app_screenshot"  # gitignored: evidence of a failed run
DEFAULT_CHECKPOINT = REPO / "deaot_core" / "weights" / "deaot_t_synthetic.pth"
MAX_BYTES = 300_000


# -- a private database ------------------------------------------------------------------------

def isolate_fiftyone(mongo: PrivateMongo, tmp: Path) -> None:
    """Point FiftyOne (this process and its children) at ``mongo`` and at a config, dataset folder
    and plugins folder inside ``tmp``. Must run before fiftyone is imported."""
    if "fiftyone" in sys.modules:
        raise RuntimeError("fiftyone was imported before its database could be isolated")
    (tmp / "plugins").mkdir()
    os.environ.update(
        mongo.env(),  # the database, no tracking, no user config, datasets in mongo's folder
        FIFTYONE_PLUGINS_DIR=str(tmp / "plugins"),  # empty: the user's plugins stay out of the App
        FIFTYONE_DEFAULT_DATASET_DIR=str(tmp / "datasets"),  # the demo's media go here
        DEAOT_CACHE=str(tmp / "deaot-cache"),  # the weights are always the explicit --checkpoint
        DEAOT_OFFLINE="1",
    )


def stop_mongod(mongo: PrivateMongo) -> None:
    with contextlib.suppress(Exception):
        import fiftyone.core.odm.database as fodb

        fodb._disconnect()
    mongo.close()


# -- the demo's propagation --------------------------------------------------------------------

def propagate_clip(model: str, checkpoint: str, threads: int | None):
    """Build the demo dataset and propagate its keyframes on :data:`CLIP` only; returns the
    dataset and the clip's sample."""
    from fiftyone import ViewField as F
    from deaot_vos import propagate
    from deaot_vos.demo import KEYFRAMES_FIELD, OUTPUT_FIELD, build_dataset
    from deaot_vos.reporting import print_summary, tqdm_progress

    start = time.monotonic()
    dataset = build_dataset(DATASET)
    clip_view = dataset.match(F("filepath").ends_with(f"/{CLIP}.mp4"))
    if len(clip_view) != 1:
        raise RuntimeError(f"the demo dataset has no video {CLIP}.mp4 (demo_data/aot-demo/ is incomplete)")
    print(f"demo dataset built in {time.monotonic() - start:.1f} s ({len(dataset)} videos); "
          f"propagating '{KEYFRAMES_FIELD}' -> '{OUTPUT_FIELD}' on {CLIP} only")
    bar, progress = tqdm_progress()
    try:
        summary = propagate(clip_view, KEYFRAMES_FIELD, OUTPUT_FIELD, model=model, checkpoint=checkpoint,
                            device="cpu", overwrite=True, progress=progress, threads=threads)
    finally:
        bar.close()
    print_summary(summary)
    return dataset, clip_view.first()


def save_screenshot_view(dataset, sample, frame: int) -> int:
    """Save the clip view of frames ``frame``..``frame``+5 of ``sample`` as :data:`SAVED_VIEW`,
    with ``frames.deaot`` the only active field and colours by instance; returns the number of
    masks on ``frame``."""
    import fiftyone as fo
    from deaot_vos.demo import OUTPUT_FIELD

    total = sample.metadata.total_frame_count
    if not 1 <= frame <= total:
        raise ValueError(f"--frame {frame}: {CLIP} has frames 1..{total}")
    view = dataset.select(sample.id).to_clips([[(frame, min(frame + 5, total))]])
    dataset.save_view(SAVED_VIEW, view, overwrite=True)
    dataset.app_config.active_fields = fo.ActiveFields(paths=[f"frames.{OUTPUT_FIELD}"])
    dataset.app_config.color_scheme = fo.ColorScheme(color_by="instance")
    dataset.save()
    labels = sample.frames[frame][OUTPUT_FIELD]
    return len(labels.detections) if labels is not None else 0


# -- the App in Chromium -----------------------------------------------------------------------

def colour_share(png: bytes, box: tuple[int, int, int, int] | None = None) -> float:
    """Share of strongly saturated pixels (HSV saturation > 150 of 255) in ``box`` of an image:
    the App's mask overlays raise it well above the video frame's own."""
    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    if box is not None:
        image = image.crop(box)
    return float((np.asarray(image.convert("HSV"))[..., 1] > 150).mean())


def raw_frame_colour_share(video: str, frame: int) -> float:
    """:func:`colour_share` of frame ``frame`` (1-based) of ``video`` as decoded, without labels."""
    import decord
    from PIL import Image

    rgb = decord.VideoReader(video, num_threads=1)[frame - 1].asnumpy()
    with io.BytesIO() as buffer:
        Image.fromarray(rgb).save(buffer, format="PNG")
        return colour_share(buffer.getvalue())


def open_modal(browser: Browser, server: AppServer, size: tuple[int, int]) -> object:
    """Open the saved view in the App, dismiss the one-time Enterprise popover, open the clip in
    the sample modal; returns the modal's looker canvas once it has drawn."""
    from selenium.common.exceptions import TimeoutException

    browser.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False})  # viewport = size
    server.wait_ready()
    browser.driver.get(f"{server.url}/datasets/{DATASET}?view={SAVED_VIEW}")
    browser.visible(f"{data_cy('fo-grid')}{data_cy('looker')}", timeout=120)
    with contextlib.suppress(TimeoutException):  # a FiftyOne without the popover costs this wait only
        dismiss = browser.clickable(text_is("Dismiss", "button"), timeout=5)
        browser.driver.execute_script("arguments[0].click()", dismiss)
        browser.gone(text_is("Dismiss", "button"))
    browser.clickable(f"{data_cy('fo-grid')}{data_cy('looker')}").click()
    return browser.visible(f"{data_cy('modal-looker-container')}//canvas[@canvas-loaded='true']", timeout=120)


def wait_for_masks(browser: Browser, canvas, raw_share: float, expect_masks: bool,
                   settle: float = 2.0, patience: float = 30.0, timeout: float = 120.0) -> tuple[bytes, float]:
    """Poll screenshots until the modal's picture has not changed for ``settle`` s and, when masks
    are expected, its saturated share exceeds the raw frame's by 0.03 (given up after
    ``patience`` s of a steady picture: a checkpoint may keep few small masks). Returns the last
    screenshot (PNG) and the looker's saturated share."""
    rect = browser.driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]", canvas)
    box = tuple(int(round(v)) for v in rect)
    start = time.monotonic()
    last, steady_since = None, None
    while time.monotonic() - start < timeout:
        png = browser.driver.get_screenshot_as_png()
        share = colour_share(png, box)
        crop = _crop_bytes(png, box)
        now = time.monotonic()
        steady_since = steady_since if crop == last else now
        last = crop
        steady = now - steady_since >= settle
        if steady and (not expect_masks or share > raw_share + 0.03):
            return png, share
        if steady and now - steady_since >= patience:
            print(f"WARNING: the picture is steady but barely more coloured than the raw frame "
                  f"({share:.2f} vs {raw_share:.2f}): are the masks drawn?", file=sys.stderr)
            return png, share
        time.sleep(0.5)
    raise TimeoutError(f"the App's picture did not settle within {timeout:.0f} s")


def _crop_bytes(png: bytes, box) -> bytes:
    from PIL import Image

    return Image.open(io.BytesIO(png)).convert("RGB").crop(box).tobytes()


def save_jpeg(png: bytes, out: Path, quality: int = 85, max_bytes: int = MAX_BYTES) -> tuple[int, int]:
    """Write ``png`` as a JPEG at ``quality``, lowered in steps of 5 (not below 60) while over
    ``max_bytes``; returns (quality, bytes)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    while True:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
        if buffer.tell() <= max_bytes or quality <= 60:
            break
        quality -= 5
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buffer.getvalue())
    return quality, buffer.tell()


def screenshot(out: Path, video: str, frame: int, masks: int, chromium: tuple[str, str],
               size: tuple[int, int]) -> None:
    """The App's modal on the saved view, as a JPEG at ``out``."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    server = AppServer(ARTIFACTS / "app-server.log").launch()
    try:
        browser = Browser(*chromium, ARTIFACTS, server, size=size, timeout=60)
        try:
            with browser.step("open-modal"):
                canvas = open_modal(browser, server, size)
            with browser.step("wait-for-masks"):
                raw = raw_frame_colour_share(video, frame)
                png, share = wait_for_masks(browser, canvas, raw, expect_masks=masks > 0)
        finally:
            browser.close()
    finally:
        server.stop()
    quality, size_bytes = save_jpeg(png, out)
    print(f"saturated pixels in the App's picture: {share:.0%} (the raw frame alone: {raw:.0%})")
    print(f"wrote {out} ({size[0]}x{size[1]}, JPEG quality {quality}, {size_bytes / 1000:.0f} KB)")


# -- command line ------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the JPEG to write (e.g. docs/app_propagated.jpg)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help=f"weights to propagate with (default: the shipped {DEFAULT_CHECKPOINT.relative_to(REPO)})")
    p.add_argument("--model", default="DeAOTT", help="the checkpoint's architecture (default DeAOTT)")
    p.add_argument("--frame", type=int, default=40, help="frame shown (1-based; default 40)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the plugin's automatic choice)")
    p.add_argument("--size", type=int, nargs=2, default=(1400, 900), metavar=("W", "H"), help="viewport in pixels")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        chromium = require_chromium()
    except AssertionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.checkpoint.is_file():
        print(f"error: checkpoint not found: {args.checkpoint}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the servers below
    start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="deaot-app-screenshot-"))
    mongod = None
    try:
        mongod = PrivateMongo()
        isolate_fiftyone(mongod, tmp)
        print(f"private mongod on port {mongod.port}, data in {mongod.dir}")
        dataset, sample = propagate_clip(args.model, str(args.checkpoint.resolve()), args.threads)
        masks = save_screenshot_view(dataset, sample, args.frame)
        print(f"frame {args.frame} of {CLIP}: {masks} propagated masks; saved view '{SAVED_VIEW}' "
              f"(a clip from frame {args.frame}, only frames.deaot, coloured by instance)")
        screenshot(args.out, sample.filepath, args.frame, masks, chromium, tuple(args.size))
    except (AssertionError, RuntimeError, ValueError) as err:  # a failed browser step keeps its evidence in ARTIFACTS
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if mongod is not None:
            stop_mongod(mongod)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"done in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
