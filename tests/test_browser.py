"""The App in a real browser: headless Chromium opens a video dataset in FiftyOne's App, opens the
operator browser, runs ``@deaot/vos/propagate_masks`` through its form (immediately, not delegated)
and the output field then holds masks on every frame, in the database and in the App's sidebar.
On the demo dataset: its clips show objects in many colours, every video of the saved view of
suggested frames shows and opens, and FiftyOne's Model Evaluation panel opens a J&F run.
One App server serves the module; screenshots of each step go to the test session's temporary
folder (named in a failure's message).

Needs Debian's chromium + chromium-driver (``make browser``, a prerequisite of ``make test``):
without them the test fails, it never skips."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest

from browser_app import AppServer, Browser, data_cy, require_chromium, text_is

pytestmark = pytest.mark.usefixtures("fiftyone_db")

DATASET = "t_browser"
NUM_FRAMES = 8
KEYFRAME = 3  # frames 1-2 come from the backward pass
OUTPUT_FIELD = "browser_masks"
OPERATOR_LABEL = "DeAOT: propagate masks"
FORM_TITLE = "Propagate masks with DeAOT"
PROMPT = data_cy("operators-prompt-modal")
APP_ERROR = "Error occurred during operator execution"  # the App's prompt on an exception
RUN_TIMEOUT = 180  # seconds for the propagation itself (about 10-30 s here, more on a loaded machine)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return tmp_path_factory.mktemp("browser")


@pytest.fixture
def small_dataset(tmp_path):
    """One short H.264 video (what the App's Chromium plays; the demo's renderer and encoder):
    NUM_FRAMES frames of two moving rectangles, keyframe masks on frame KEYFRAME only."""
    import fiftyone as fo
    from conftest import synthetic_label_maps
    from deaot_vos.demo import synthetic_frames
    from deaot_vos.video_io import video_metadata, write_mp4
    from helpers import detection

    maps = synthetic_label_maps(NUM_FRAMES, height=96, width=160, objects=2)
    path = tmp_path / "small.mp4"
    assert write_mp4(synthetic_frames(maps.astype(np.uint8)), path, fps=8) == "h264"
    dataset = fo.Dataset(DATASET)
    sample = fo.Sample(filepath=str(path), metadata=video_metadata(path))
    keyframe = maps[KEYFRAME - 1]
    sample.frames[KEYFRAME]["keyframes"] = fo.Detections(detections=[
        detection(name, keyframe == k, index=k) for k, name in ((1, "left"), (2, "right"))])
    dataset.add_sample(sample)
    yield dataset
    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)


@pytest.fixture(scope="module")
def app(artifacts, fiftyone_db):
    """(server, browser): the App server on this session's database with the plugin loaded
    (conftest.py's FIFTYONE_PLUGINS_DIR), launched but not yet waited for (it boots while the
    dataset is made), and Chromium. Chromium is checked first."""
    chromium, chromedriver = require_chromium()
    server = AppServer(artifacts / "app-server.log", env={"FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS": "true",
                                                         "PATH": _path_without_ffmpeg()})
    try:
        server.launch()
        browser = Browser(chromium, chromedriver, artifacts, server)
        try:
            yield server, browser
        finally:
            browser.close()
    finally:
        server.stop()


def _path_without_ffmpeg() -> str:
    """This PATH without the folders that hold an ffmpeg or ffprobe: the App server runs as on a
    machine without them (FiftyOne does not install them)."""
    import os

    folders = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(f for f in folders
                           if not any(os.path.exists(os.path.join(f, b)) for b in ("ffmpeg", "ffprobe")))


def _open_dataset(server, browser, name: str = DATASET, query: str = "",
                  ready: str = data_cy("checkbox-frames.keyframes")) -> None:
    """Open dataset ``name`` once ``ready`` (an XPath) shows, and dismiss the App's popover."""
    server.wait_ready()
    browser.driver.get(f"{server.url}/datasets/{name}{query}")
    browser.visible(ready, timeout=90)
    # the App's one-time "Explore Enterprise" popover (a fresh profile always gets it) covers the
    # page until dismissed, as a user would; a FiftyOne without it costs this wait only
    from selenium.common.exceptions import TimeoutException

    try:
        browser.clickable(text_is("Dismiss", "button"), timeout=5).click()
    except TimeoutException:
        return
    browser.gone(text_is("Dismiss", "button"))


def _pick_operator(browser) -> None:
    browser.clickable(data_cy("action-browse-operations")).click()
    browser.visible(data_cy("operators-browser"))
    browser.visible(data_cy("operators-browser-search")).send_keys("propagate")
    browser.clickable(f"{data_cy('operators-browser')}{text_is(OPERATOR_LABEL, 'div')}").click()
    browser.visible(f"{PROMPT}{text_is(FORM_TITLE)}")


def _fill_form(browser) -> None:
    """Keyframes field chosen from its dropdown, output field typed. The target (FiftyOne's
    selector, hidden with a single choice: no view, no selection) is named by the notice."""
    from selenium.webdriver.common.by import By

    browser.visible(f"{PROMPT}{text_is('Runs on the only sample of the dataset')}")
    keyframes = f"{PROMPT}//*[text()='Keyframes field']/following::*[@role='combobox'][1]"
    browser.clickable(keyframes).click()
    browser.clickable("//ul[@role='listbox']/li[@role='option' and normalize-space()='keyframes']").click()
    browser.wait(lambda d: d.find_element(By.XPATH, keyframes).text.strip() == "keyframes",
                 message="the keyframes field was not chosen")
    browser.type_into(f"{PROMPT}//*[text()='Output field']/following::input[1]", OUTPUT_FIELD)


def test_propagate_masks_through_the_app_in_chromium(app, small_dataset):
    server, browser = app
    with browser.step("open-dataset"):
        _open_dataset(server, browser)
        browser.screenshot("1-dataset")
    with browser.step("operator-browser"):
        _pick_operator(browser)
    with browser.step("fill-form"):
        _fill_form(browser)
        browser.screenshot("2-form")
    with browser.step("execute"):
        browser.clickable(f"{PROMPT}{text_is('Execute', 'button')}").click()
        _wait_for_result(browser)
        browser.screenshot("3-result")
        assert browser.find_all(_result_row("Status", "ok")), "the result dialog does not say Status: ok"
        assert browser.find_all(_result_row("Output field", OUTPUT_FIELD))
    with browser.step("sidebar"):
        browser.clickable(text_is("Close", "button")).click()
        browser.gone(text_is("Samples propagated"))
        browser.visible(data_cy(f"checkbox-frames.{OUTPUT_FIELD}"))
        browser.screenshot("4-sidebar")
    _check_masks_in_database(small_dataset)


def _wait_for_result(browser) -> None:
    """Until the result dialog shows; an operator error fails at once with the App's details."""
    from selenium.webdriver.common.by import By

    result, error = "//*[text()='Samples propagated']", f"{PROMPT}//p[contains(., '{APP_ERROR}')]"
    browser.wait(lambda d: d.find_elements(By.XPATH, result) or d.find_elements(By.XPATH, error),
                 timeout=RUN_TIMEOUT, message=f"no result dialog within {RUN_TIMEOUT} s")
    shown = browser.find_all(error)
    if shown:
        shown[0].click()  # expands the traceback
        time.sleep(1)
        details = browser.find_all(PROMPT)[0].text if browser.find_all(PROMPT) else ""
        raise AssertionError(f"the App reported an operator error:\n{details[-3000:]}")


def _result_row(label: str, value: str) -> str:
    """XPath of the result dialog's row ``label: value``."""
    return f"//*[normalize-space()='{label}:']/following-sibling::*[normalize-space()='{value}']"


def _check_masks_in_database(dataset) -> None:
    """Every frame has the two objects, each with a non-empty instance mask; keyframe kept."""
    import fiftyone as fo

    dataset.reload()
    schema = dataset.get_frame_field_schema()
    assert OUTPUT_FIELD in schema, f"no frame field {OUTPUT_FIELD!r} after the App run: {sorted(schema)}"
    assert schema[OUTPUT_FIELD].document_type is fo.Detections
    frames = dataset.first().frames
    assert sorted(frames.keys()) == list(range(1, NUM_FRAMES + 1))
    for number, frame in frames.items():
        detections = frame[OUTPUT_FIELD]
        assert detections is not None, f"frame {number}: no {OUTPUT_FIELD}"
        assert sorted(d.label for d in detections.detections) == ["left", "right"], f"frame {number}"
        for d in detections.detections:
            assert d.mask is not None and d.mask.any(), f"frame {number}, {d.label}: empty mask"
    given = {d.label: d.mask for d in frames[KEYFRAME]["keyframes"].detections}
    for d in frames[KEYFRAME][OUTPUT_FIELD].detections:
        assert np.array_equal(d.mask.astype(bool), given[d.label].astype(bool)), f"keyframe {d.label} changed"


def test_missing_chromium_fails_naming_the_make_target(monkeypatch):
    """CI must never skip the browser test: no Chromium is a failure that says how to install it."""
    import browser_app

    monkeypatch.setattr(browser_app.shutil, "which", lambda name: None)
    monkeypatch.setattr(browser_app, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setattr(browser_app, "CHROMEDRIVER", "/nonexistent/chromedriver")
    with pytest.raises(AssertionError, match=r"chromium and chromedriver not found: run `make browser`"):
        browser_app.require_chromium()


# -- the demo dataset ------------------------------------------------------------------------------

DEMO = "t_browser_demo"
EVAL_KEY = "deaot_eval"
REVIEWED = "review_src"  # a propagation's output as suggest_keyframes reads it (keyframes marked)
TILE = data_cy("looker")
MIN_HUES = 8  # distinct hues (of 36) on a real clip's grid tile: its 44 masks coloured by instance


@pytest.fixture
def demo_dataset(tmp_path):
    """The demo dataset (synthetic video + the two real clips, keyframe masks), with a J&F run
    (``keyframes`` scored against the synthetic video's ``ground_truth``) and the saved view of
    suggested frames, whose frames include no video's frame 1 (keyframes score 0)."""
    import fiftyone as fo
    from deaot_vos.demo import build_dataset
    from deaot_vos.evaluation import evaluate_vos
    from deaot_vos.suggestions import suggest_keyframes

    dataset = build_dataset(DEMO, real_clips=True, workdir=tmp_path)
    evaluate_vos(dataset, "keyframes", "ground_truth", eval_key=EVAL_KEY, extra_objects="ignore")
    marked = {}
    for sid, numbers, given, truth in zip(*dataset.values(["id", "frames.frame_number", "frames.keyframes",
                                                          "frames.ground_truth"])):
        source = truth if any(truth) else given
        marked[sid] = {n: fo.Detections(detections=d.detections, deaot_keyframe=k is not None)
                       for n, d, k in zip(numbers, source, given) if d is not None}
    dataset.set_values(f"frames.{REVIEWED}", marked, key_field="id")
    summary = suggest_keyframes(dataset, REVIEWED, top=2, spacing=3, scene_cuts=False)
    yield dataset, summary
    if fo.dataset_exists(DEMO):
        fo.delete_dataset(DEMO)


def test_demo_dataset_in_the_app(app, demo_dataset):
    """The demo's clips show many colours; every video of the suggested-frames view shows and
    opens; the Model Evaluation panel opens the J&F run and lists J&F."""
    server, browser = app
    dataset, summary = demo_dataset
    labels = [d.label for d in dataset.select_by("source", "aot-demo").first().frames[1]["keyframes"].detections]
    assert len(set(labels)) == len(labels) == 44, labels[:5]  # one label per object
    with browser.step("demo-colours"):
        _open_dataset(server, browser, DEMO)
        tiles = _tiles(browser, len(dataset))
        deadline = time.monotonic() + 60  # each tile draws its first frame and masks when loaded
        while True:
            image = _screenshot_image(browser, "5-demo-grid")
            hues = [_distinct_hues(image, tile.rect) for tile in tiles[1:]]  # the two real clips
            if min(hues) >= MIN_HUES or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert min(hues) >= MIN_HUES, f"distinct hues on the real clips' tiles: {hues}, want >= {MIN_HUES}"
    with browser.step("suggested-frames"):
        _check_suggestions(server, browser, dataset, summary["view"])
    with browser.step("evaluation-panel"):
        _open_evaluation(server, browser)


def _tiles(browser, count: int):
    """The grid's ``count`` tiles (fails if the grid settles on another number)."""
    from selenium.common.exceptions import TimeoutException

    try:
        browser.wait(lambda d: len(browser.find_all(TILE)) >= count, timeout=60)
    except TimeoutException:
        raise AssertionError(f"the grid shows {len(browser.find_all(TILE))} tiles, want {count}") from None
    time.sleep(2)
    tiles = browser.find_all(TILE)
    assert len(tiles) == count, f"the grid shows {len(tiles)} tiles, want {count}"
    return sorted(tiles, key=lambda t: (t.rect["y"], t.rect["x"]))


def _screenshot_image(browser, name: str):
    from PIL import Image

    browser.screenshot(name)
    return Image.open(io.BytesIO(browser.driver.get_screenshot_as_png())).convert("RGB")


def _distinct_hues(image, rect: dict, bins: int = 36, share: float = 0.002) -> int:
    """Hue bins (of ``bins``) holding at least ``share`` of the region's strongly coloured pixels
    (saturation and value above 0.5)."""
    box = tuple(int(v) for v in (rect["x"], rect["y"], rect["x"] + rect["width"], rect["y"] + rect["height"]))
    hsv = np.asarray(image.crop(box).convert("HSV"), dtype=np.int64).reshape(-1, 3)  # each 0-255
    strong = hsv[(hsv[:, 1] > 127) & (hsv[:, 2] > 127)]
    counts = np.bincount(strong[:, 0] * bins // 256, minlength=bins)
    return int((counts >= share * len(hsv)).sum())


def _check_suggestions(server, browser, dataset, name: str) -> None:
    """The saved view shows one tile per video it holds, and each opens in the modal."""
    import fiftyone.core.utils as fou
    from selenium.webdriver.common.by import By

    view = dataset.load_saved_view(name)
    firsts = [min(numbers) for numbers in view.values("frames.frame_number")]
    assert len(view) == len(dataset) and min(firsts) > 1, firsts  # no video's frame 1 is suggested
    _open_dataset(server, browser, DEMO, f"?view={fou.to_slug(name)}")
    tiles = _tiles(browser, len(view))
    browser.screenshot("6-suggested-grid")
    tiles[0].click()
    for position in range(len(view)):
        if position:
            browser.clickable(data_cy("nav-right-button")).click()
        browser.visible(data_cy("modal-looker-container"))
        time.sleep(2)
        text = browser.driver.find_element(By.TAG_NAME, "body").text
        assert "not found" not in text, f"sample {position + 1} of the view: {text[-500:]}"
        browser.screenshot(f"7-suggested-modal-{position + 1}")


def _open_evaluation(server, browser) -> None:
    """FiftyOne's Model Evaluation panel lists the J&F run and opens it: J&F in its summary."""
    from selenium.webdriver.common.by import By

    _open_dataset(server, browser, DEMO)
    browser.clickable(data_cy("new-panel-btn")).click()
    browser.clickable(data_cy("new-panel-option-model_evaluation_panel_builtin")).click()
    browser.clickable(f"{text_is(EVAL_KEY)}").click()
    browser.visible(text_is("J&F (DAVIS)"), timeout=90)
    time.sleep(1)
    browser.screenshot("8-evaluation-panel")
    text = browser.driver.find_element(By.TAG_NAME, "body").text
    assert "Operator Error" not in text and "unsupported" not in text, text[-1000:]


# -- a user's own video without metadata ----------------------------------------------------------

NO_METADATA = "t_browser_no_metadata"


@pytest.fixture
def video_without_metadata(tmp_path):
    """A user's own H.264 video in a dataset, without the metadata FiftyOne's App needs."""
    import fiftyone as fo
    from conftest import synthetic_label_maps
    from deaot_vos.demo import synthetic_frames
    from deaot_vos.video_io import write_mp4

    maps = synthetic_label_maps(NUM_FRAMES, height=96, width=160, objects=2)
    path = tmp_path / "mine.mp4"
    assert write_mp4(synthetic_frames(maps.astype(np.uint8)), path, fps=8) == "h264"
    dataset = fo.Dataset(NO_METADATA)
    dataset.add_sample(fo.Sample(filepath=str(path)))
    yield dataset
    if fo.dataset_exists(NO_METADATA):
        fo.delete_dataset(NO_METADATA)


def test_a_video_without_metadata_plays_after_the_metadata_command(app, video_without_metadata):
    """Without ffmpeg the App cannot read a video's metadata itself; ``deaot-vos metadata`` fills
    it with our decoder, and the video then shows in the grid and plays in the modal."""
    import subprocess
    import sys

    from selenium.webdriver.common.by import By

    server, browser = app
    dataset = video_without_metadata
    assert dataset.first().metadata is None
    done = subprocess.run([sys.executable, "-m", "deaot_vos", "metadata", NO_METADATA], capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "PATH": _path_without_ffmpeg()})
    assert done.returncode == 0, done.stderr[-2000:]
    dataset.reload()
    metadata = dataset.first().metadata
    assert (metadata.frame_width, metadata.frame_height, metadata.total_frame_count) == (160, 96, NUM_FRAMES)
    with browser.step("no-metadata-grid"):
        _open_dataset(server, browser, NO_METADATA, ready=TILE)
        tiles = _tiles(browser, 1)
        tiles[0].click()
        browser.visible(data_cy("modal-looker-container"))
        time.sleep(3)
        browser.screenshot("9-no-metadata-modal")
        text = browser.driver.find_element(By.TAG_NAME, "body").text
        assert "ffmpeg" not in text.lower() and "error" not in text.lower(), text[-1000:]
        image = _screenshot_image(browser, "9-no-metadata-modal")
        box = browser.find_all(data_cy("modal-looker-container"))[0].rect
        assert _distinct_hues(image, box) >= 2, "the modal shows no frame of the video"
