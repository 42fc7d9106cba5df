"""The core video API (``deaot_core.propagate_video``) against a Tracker stepped by hand, on a real
DeAOTT with random weights (fixed seed) and tiny frames; plus the options, devices and cache dir
it relies on."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import deaot_core
from deaot_core import FrameResult, Keyframe, Tracker, TrackerOptions, mean_confidences, propagate_video

T, H, W = 7, 64, 96


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return deaot_core.build_model("DeAOTT")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """(T, H, W, 3) uint8: two coloured boxes drifting right over textured noise."""
    rng = np.random.RandomState(0)
    video = rng.randint(0, 60, size=(T, H, W, 3)).astype(np.uint8)
    for t in range(T):
        video[t, 8:30, 6 + 2 * t:36 + 2 * t] = (220, 40, 40)
        video[t, 36:60, 50 + t:86 + t] = (40, 200, 60)
    return video


def _boxes(t: int, first: int, second: int, third: int = 0) -> np.ndarray:
    """(H, W) label map of frame t's boxes with the given ids (0: left out); ``third`` marks a
    small patch of the noise as one more object."""
    label = np.zeros((H, W), dtype=np.int64)
    label[8:30, 6 + 2 * t:36 + 2 * t] = first
    label[36:60, 50 + t:86 + t] = second
    if third:
        label[2:8, 70:90] = third
    return label


def _by_hand(model, frames, keyframes: dict[int, tuple[np.ndarray, list[int] | None]]) -> dict[int, tuple]:
    """frame -> (label map, confidences, reverse) of a Tracker stepped frame by frame, in tracker ids."""
    tracker = Tracker(model, device="cpu")
    first = min(keyframes)
    results = {}
    for t in range(first, len(frames)):
        mask, objects = keyframes.get(t, (None, None))
        probs = tracker.step(frames[t], mask, objects=objects)
        results[t] = (tracker.label, mean_confidences(probs, tracker.label), False)
    tracker.reset()
    tracker.step(frames[first], *keyframes[first])
    for t in range(first - 1, -1, -1):
        probs = tracker.step(frames[t])
        results[t] = (tracker.label, mean_confidences(probs, tracker.label), True)
    return results


def _assert_same(results: list[FrameResult], expected: dict[int, tuple], to_caller=lambda x: x) -> None:
    assert [r.index for r in results] == [t for t in expected if not expected[t][2]] + \
        [t for t in expected if expected[t][2]]
    for result in results:
        label, confidences, reverse = expected[result.index]
        assert result.reverse == reverse
        assert result.label_map.dtype == np.int64 and result.label_map.shape == (H, W)
        np.testing.assert_array_equal(result.label_map, np.vectorize(to_caller)(label))
        assert result.confidences == {to_caller(k): v for k, v in confidences.items()}


def test_equals_a_tracker_stepped_by_hand_forward_and_backward(model, frames):
    keyframes = {2: _boxes(2, 1, 2), 4: _boxes(4, 1, 2, third=3)}  # frame 4 adds object 3
    results = list(propagate_video(Tracker(model), frames, keyframes))
    expected = _by_hand(model, frames, {t: (m, None) for t, m in keyframes.items()})
    _assert_same(results, expected)
    assert [(r.index, r.reverse) for r in results] == [(2, False), (3, False), (4, False), (5, False), (6, False),
                                                        (1, True), (0, True)]
    assert [r.keyframe is not None for r in results] == [True, False, True, False, False, False, False]
    np.testing.assert_array_equal(results[2].keyframe.label_map, keyframes[4])
    # the object added on frame 4: no confidence on its keyframe (new there), tracked afterwards
    assert set(results[2].confidences) == {1, 2} and (results[2].label_map == 3).any()
    assert 3 in results[3].confidences and (results[3].label_map == 3).any()
    assert all(3 not in r.confidences for r in results if r.reverse)  # unknown before its keyframe
    assert all(0 < v <= 1 for r in results for v in r.confidences.values())


def test_caller_ids_come_back_as_given(model, frames):
    caller = {1: 7, 2: 300}
    keyframes = {1: Keyframe(_boxes(1, 7, 300))}
    results = list(propagate_video(Tracker(model), frames, keyframes))
    expected = _by_hand(model, frames, {1: (_boxes(1, 1, 2), None)})
    _assert_same(results, expected, to_caller=lambda k: caller.get(int(k), 0))
    assert set(np.unique(results[-1].label_map)) <= {0, 7, 300} and results[1].confidences.keys() == {7, 300}


def test_ids_are_numbered_in_order_of_first_appearance(model, frames):
    """Caller id 5 appears first (frame 0), 2 later (frame 3): tracker ids 1 and 2, not sorted."""
    keyframes = {0: _boxes(0, 5, 0), 3: _boxes(3, 5, 2)}
    results = list(propagate_video(Tracker(model), frames, keyframes))
    expected = _by_hand(model, frames, {0: (_boxes(0, 1, 0), None), 3: (_boxes(3, 1, 2), None)})
    _assert_same(results, expected, to_caller=lambda k: {1: 5, 2: 2}.get(int(k), 0))
    assert not any(r.reverse for r in results)


def test_an_object_given_without_pixels_is_removed_by_the_keyframe(model, frames):
    """Keyframe authority: object 7 listed on frame 3 without pixels becomes background there,
    and the tracker's memory takes the corrected map (the following frames change)."""
    plain = list(propagate_video(Tracker(model), frames, {0: _boxes(0, 7, 300)}))
    assert (plain[3].label_map == 7).any()  # without the keyframe, 7 is predicted on frame 3
    keyframes = {0: _boxes(0, 7, 300), 3: Keyframe(_boxes(3, 0, 300), objects=[7, 300])}
    results = list(propagate_video(Tracker(model), frames, keyframes))
    assert not (results[3].label_map == 7).any()
    np.testing.assert_array_equal(results[3].label_map == 300, _boxes(3, 0, 300) == 300)
    expected = _by_hand(model, frames, {0: (_boxes(0, 1, 2), None), 3: (_boxes(3, 0, 2), [1, 2])})
    _assert_same(results, expected, to_caller=lambda k: {1: 7, 2: 300}.get(int(k), 0))
    # only listing the objects makes the difference (a keyframe of 300 alone keeps 7's prediction)
    only_300 = list(propagate_video(Tracker(model), frames, {0: _boxes(0, 7, 300), 3: _boxes(3, 0, 300)}))
    assert (only_300[3].label_map == 7).any()
    assert any(not np.array_equal(a.label_map, b.label_map) for a, b in zip(results[4:], only_300[4:]))


def test_an_object_listed_on_the_first_keyframe_without_pixels_is_known(model, frames):
    results = list(propagate_video(Tracker(model), frames, {0: Keyframe(_boxes(0, 0, 300), objects=[7, 300]),
                                                            2: _boxes(2, 7, 300)}))
    assert not (results[0].label_map == 7).any() and (results[2].label_map == 7).any()
    # 7 was numbered first (tracker id 1) although it only gets pixels on frame 2
    expected = _by_hand(model, frames, {0: (_boxes(0, 0, 2), [1, 2]), 2: (_boxes(2, 1, 2), None)})
    _assert_same(results, expected, to_caller=lambda k: {1: 7, 2: 300}.get(int(k), 0))


class RecordingSource:
    """A FrameSource with ``iter_frames``: records every read, refuses random access."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames, self.reads, self.passes = frames, [], []

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> np.ndarray:
        raise AssertionError("iter_frames should be used")

    def iter_frames(self, indexes):
        self.passes.append(list(indexes))
        for index in indexes:
            self.reads.append(index)
            yield index, self.frames[index]


def test_iter_frames_is_used_in_pass_order(model, frames):
    source = RecordingSource(frames)
    keyframes = {3: _boxes(3, 1, 2)}
    results = list(propagate_video(Tracker(model), source, keyframes))
    assert source.passes == [[3, 4, 5, 6], [3, 2, 1, 0]]
    assert source.reads == [3, 4, 5, 6, 3, 2, 1, 0]  # the first keyframe again, as the backward reference
    assert [r.index for r in results] == [3, 4, 5, 6, 2, 1, 0]
    _assert_same(results, _by_hand(model, frames, {3: (keyframes[3], None)}))


def test_closing_early_leaves_the_tracker_reusable(model, frames):
    tracker = Tracker(model)
    run = propagate_video(tracker, frames, {1: _boxes(1, 1, 2)})
    assert [next(run).index, next(run).index] == [1, 2]
    assert tracker.groups  # mid-video
    run.close()
    assert not tracker.groups and tracker.frame_index == -1
    again = list(propagate_video(tracker, frames, {2: _boxes(2, 4, 9)}))
    _assert_same(again, _by_hand(model, frames, {2: (_boxes(2, 1, 2), None)}),
                 to_caller=lambda k: {1: 4, 2: 9}.get(int(k), 0))


def test_bad_keyframes_are_refused(model, frames):
    tracker = Tracker(model)
    with pytest.raises(ValueError, match="at least one keyframe"):
        next(propagate_video(tracker, frames, {}))
    with pytest.raises(ValueError, match=r"\[7\] are outside the video's 7 frames"):
        next(propagate_video(tracker, frames, {7: _boxes(0, 1, 2)}))
    with pytest.raises(ValueError, match="integer"):
        next(propagate_video(tracker, frames, {0: _boxes(0, 1, 2).astype(np.float32)}))
    with pytest.raises(ValueError, match=">= 0"):
        next(propagate_video(tracker, frames, {0: -_boxes(0, 1, 2)}))
    with pytest.raises(ValueError, match="objects must be ids >= 1"):
        next(propagate_video(tracker, frames, {0: Keyframe(_boxes(0, 1, 2), objects=[0, 1])}))


def test_mean_confidences_by_hand():
    probs = torch.zeros(3, 2, 3)
    probs[0], probs[1], probs[2] = 0.2, 0.5, 0.3
    probs[1, 0, 0] = 0.9
    label = np.array([[1, 1, 0], [2, 4, 0]])  # 4: beyond the channels (new on this frame)
    got = mean_confidences(probs, label)
    assert got.keys() == {1, 2} and math.isclose(got[1], 0.7, rel_tol=1e-6) and math.isclose(got[2], 0.3,
                                                                                            rel_tol=1e-6)
    assert mean_confidences(None, label) == {}


# -- TrackerOptions, devices, cache dir ------------------------------------------------------------

def test_tracker_options_validate_once_with_the_option_named():
    assert TrackerOptions().test_scales == (1.0,) and TrackerOptions().max_long_edge == 1040
    assert TrackerOptions(test_scales="0.8, 1,1.2").test_scales == (0.8, 1.0, 1.2)
    assert TrackerOptions(test_scales=1.5).test_scales == (1.5,)
    assert TrackerOptions(test_scales=[2]).test_scales == (2.0,)
    bad = dict(long_term_gap=0, max_long_term_frames=0, short_term_skip=0, max_short_edge=8, max_long_edge=math.inf,
               precision="int8", test_scales=5.0)
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            TrackerOptions(**{name: value})
    for scales in ((), "", "a,b", (0.05,), (1.0, float("nan")), (-1.0,)):
        with pytest.raises(ValueError, match="test_scales"):
            TrackerOptions(test_scales=scales)
    options = TrackerOptions(max_long_edge=480)
    assert options.replace(max_long_edge=240) == TrackerOptions(max_long_edge=240) and options.max_long_edge == 480
    with pytest.raises(ValueError, match="max_long_edge"):
        options.replace(max_long_edge=1)


def test_tracker_takes_options_or_keywords(model):
    options = TrackerOptions(long_term_gap=3, max_long_edge=64)
    assert Tracker(model, options=options).options is options
    tracker = Tracker(model, options=options, long_term_gap=4)
    assert tracker.options == TrackerOptions(long_term_gap=4, max_long_edge=64) and tracker.long_term_gap == 4
    assert Tracker(model, long_term_gap=3, max_long_edge=64).options == options
    with pytest.raises(TypeError):
        Tracker(model, no_such_option=1)
    with pytest.raises(TypeError, match="options must be a TrackerOptions"):
        Tracker(model, "cpu", 5)  # the old positional long_term_gap


def test_devices():
    assert deaot_core.resolve_device("auto") in ("cpu", "cuda") and deaot_core.resolve_device(None) in ("cpu", "cuda")
    assert deaot_core.resolve_device(" CPU ") == "cpu" and deaot_core.resolve_device(torch.device("cpu")) == "cpu"
    for bad in ("tpu", "cuda:x"):
        with pytest.raises(ValueError, match="invalid device|not available"):
            deaot_core.resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            deaot_core.resolve_device("cuda:0")
    assert set(deaot_core.PRECISIONS) == {"fp32", "fp16", "bf16"} and deaot_core.PRECISIONS["fp32"] is None
    assert deaot_core.IMAGE_MEAN == (0.485, 0.456, 0.406) and deaot_core.IMAGE_STD == (0.229, 0.224, 0.225)


def test_cache_dir_expands_home_and_ignores_empty(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DEAOT_CACHE", "~/weights")
    assert deaot_core.cache_dir() == tmp_path / "weights"
    for unset in ("", "  "):
        monkeypatch.setenv("DEAOT_CACHE", unset)
        assert deaot_core.cache_dir() == Path(tmp_path) / ".cache" / "deaot"
    monkeypatch.delenv("DEAOT_CACHE")
    assert deaot_core.cache_dir() == Path(tmp_path) / ".cache" / "deaot"


def test_reading_a_video_before_torch_is_imported_does_not_crash_torch():
    """decord2's wheel loaded before torch made torch's first matrix product segfault: a fresh
    process that opens a video with our reader first, then runs a torch layer, must finish."""
    import subprocess
    import sys
    from pathlib import Path

    clip = Path(__file__).resolve().parents[1] / "demo_data" / "aot-demo" / "1001_3iEIq5HBY1s.mp4"
    code = ("import sys\n"
            "from deaot_vos.video_io import VideoReader\n"
            f"reader = VideoReader({str(clip)!r})\n"
            "frame = reader.frame(1)\n"
            "import torch\n"
            "torch.nn.Linear(64, 64)(torch.zeros(300, 64))\n"
            "print('ok', frame.shape)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, (done.returncode, done.stderr[-2000:])
