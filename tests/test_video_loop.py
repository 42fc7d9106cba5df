"""The annotation loop in the core video API: bidirectional fusion between keyframes and
incremental re-runs (signatures, saved tracker states), on a real DeAOTT with random weights
(fixed seed) and small frames."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import deaot_core
from deaot_core import Keyframe, Tracker, propagate_video
from deaot_core.fusion import forward_weight, fuse
from deaot_core.schedule import Schedule
from deaot_core.states import DirectoryStates, MemoryStates
from deaot_core.propagation import PropagationStats

T, H, W = 14, 64, 96


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return deaot_core.build_model("DeAOTT")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    rng = np.random.RandomState(1)
    video = rng.randint(0, 60, size=(T, H, W, 3)).astype(np.uint8)
    for t in range(T):
        video[t, 8:30, 4 + 3 * t:30 + 3 * t] = (220, 40, 40)
        video[t, 36:60, 60 - t:90 - t] = (40, 200, 60)
        video[t, 2:10, 40:56] = (30, 30, 200)
    return video


def boxes(t: int, red: int = 1, green: int = 2, blue: int = 0) -> np.ndarray:
    label = np.zeros((H, W), dtype=np.int64)
    label[8:30, 4 + 3 * t:30 + 3 * t] = red
    label[36:60, 60 - t:90 - t] = green
    if blue:
        label[2:10, 40:56] = blue
    return label


def run(model, frames, keyframes, **kwargs) -> dict[int, deaot_core.FrameResult]:
    return {r.index: r for r in propagate_video(Tracker(model), frames, keyframes, **kwargs)}


def assert_same_results(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for t in a:
        np.testing.assert_array_equal(a[t].label_map, b[t].label_map, err_msg=f"frame {t}")
        assert a[t].confidences == b[t].confidences, t
        assert a[t].signature == b[t].signature, t
        assert a[t].agreement == b[t].agreement, t


def test_bidirectional_fuses_the_gap_and_leaves_the_rest_as_forward(model, frames):
    keyframes = {1: boxes(1, 5, 7), 9: boxes(9, 5, 7, blue=9)}  # object 9 appears only on the later keyframe
    forward = run(model, frames, keyframes)
    both = run(model, frames, keyframes, bidirectional=True)
    assert sorted(both) == list(range(T))
    for t in [0, 1, 9, 10, 11, 12, 13]:  # head pass, keyframes and after the last: as forward-only
        np.testing.assert_array_equal(both[t].label_map, forward[t].label_map)
        assert not both[t].fused
    gap = range(2, 9)
    assert all(both[t].fused and set(both[t].agreement) == {5, 7} for t in gap)
    assert all(0.0 <= v <= 1.0 for t in gap for v in both[t].agreement.values())
    # the blue object, given only on frame 9, reaches back into the gap from the backward pass alone
    assert not any((forward[t].label_map == 9).any() for t in gap)
    assert (both[8].label_map == 9).any()  # random weights: where it lands is arbitrary, that it exists is not


def test_a_fused_frame_is_the_fusion_of_the_two_passes_stepped_by_hand(model, frames):
    keyframes = {0: boxes(0), 6: boxes(6)}
    fused = run(model, frames, keyframes, bidirectional=True)
    tracker = Tracker(model)
    forward_probs = {}
    for t in range(0, 6):
        probs = tracker.step(frames[t], keyframes[t] if t in keyframes else None)
        forward_probs[t] = probs
    tracker.reset()
    tracker.step(frames[6], keyframes[6])
    for t in range(5, 0, -1):
        backward = tracker.step(frames[t])
        backward = (backward.clamp(0, 1) * 255).round() / 255  # the gap buffer keeps uint8
        probs, agreement = fuse(forward_probs[t], backward, [1, 2], forward_weight(t, 0, 6, "distance"))
        np.testing.assert_array_equal(fused[t].label_map, probs.argmax(0).numpy())
        assert fused[t].agreement == agreement


def test_fuse_gives_objects_known_to_one_pass_from_that_pass_alone():
    forward = torch.tensor([[0.2], [0.8]]).view(2, 1, 1)  # knows object 1
    backward = torch.tensor([[0.1], [0.9]]).view(2, 1, 1)  # its own id 1 is object 2
    probs, agreement = fuse(forward, backward, [2], weight=0.5)
    assert probs.shape == (3, 1, 1) and agreement == {}
    torch.testing.assert_close(probs.sum(0), torch.ones(1, 1))
    # forward's background (0.2) is split by backward as 0.1 : 0.9 -> object 2 gets 0.18 of it
    torch.testing.assert_close(probs[:, 0, 0], torch.tensor([0.5 * 0.02 + 0.5 * 0.1 * 0.2, 0.5 * 0.8 + 0.5 * 0.1 * 0.8,
                                                             0.5 * 0.18 + 0.5 * 0.9]))
    assert forward_weight(2, 0, 8, "distance") == 0.75 and forward_weight(2, 0, 8, "equal") == 0.5


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
def test_editing_the_last_keyframe_recomputes_only_its_dependents_and_equals_a_full_run(model, frames,
                                                                                       bidirectional):
    keyframes = {2: boxes(2), 6: boxes(6), 10: boxes(10)}
    states = MemoryStates()
    first = run(model, frames, keyframes, bidirectional=bidirectional, states=states)
    previous = {t: r.signature for t, r in first.items()}
    edited = dict(keyframes)
    edited[10] = boxes(10, blue=3)  # the last keyframe gains an object
    stats = PropagationStats()
    partial = run(model, frames, edited, bidirectional=bidirectional, states=states, previous=previous,
                  stats=stats)
    dependent = list(range(7 if bidirectional else 10, T))  # the gap (6, 10) is fused from keyframe 10
    assert sorted(partial) == dependent
    assert (stats.computed, stats.reused) == (len(dependent), T - len(dependent))
    assert stats.resumed_from == (6 if bidirectional else 9) and stats.replayed == 0
    full = run(model, frames, edited, bidirectional=bidirectional)
    merged = {t: partial.get(t, first[t]) for t in range(T)}
    assert_same_results(merged, full)
    # without saved states the forward pass restarts at the first keyframe: same results, frames replayed
    replay_stats = PropagationStats()
    replayed = run(model, frames, edited, bidirectional=bidirectional, previous=previous, stats=replay_stats)
    assert sorted(replayed) == dependent and replay_stats.resumed_from is None
    assert replay_stats.replayed == dependent[0] - 2
    assert_same_results(replayed, {t: full[t] for t in dependent})


def test_nothing_changed_computes_nothing_and_a_new_provenance_recomputes_all(model, frames):
    keyframes = {3: boxes(3), 8: boxes(8)}
    first = run(model, frames, keyframes, provenance="model A")
    previous = {t: r.signature for t, r in first.items()}
    assert run(model, frames, keyframes, provenance="model A", previous=previous) == {}
    assert sorted(run(model, frames, keyframes, provenance="model B", previous=previous)) == list(range(T))
    # a keyframe's meta (e.g. a renamed class) is part of its identity; the head pass depends on frame 3 only
    renamed = {3: keyframes[3], 8: Keyframe(keyframes[8], meta="2: car")}
    assert sorted(run(model, frames, renamed, provenance="model A", previous=previous)) == list(range(8, T))


def test_tracker_state_round_trips_through_the_directory_store(model, frames, tmp_path):
    tracker = Tracker(model)
    tracker.step(frames[0], boxes(0))
    tracker.step(frames[1])
    store = DirectoryStates(tmp_path)
    store.put("abc", tracker.state())
    expected = [tracker.step(frames[t]) for t in range(2, 5)]
    other = Tracker(model)
    other.load_state(store.get("abc"))
    for t, probs in zip(range(2, 5), expected):
        torch.testing.assert_close(other.step(frames[t]), probs, rtol=0, atol=0)
    (tmp_path / "abc.pt").write_bytes(b"damaged")
    assert store.get("abc") is None and not (tmp_path / "abc.pt").exists()
    with pytest.raises(ValueError, match="state key"):
        store.get("../x")


def test_directory_store_prunes_the_least_recently_used(tmp_path):
    store = DirectoryStates(tmp_path, max_bytes=3000)
    for key in "abcd":
        store.put(key, {"x": torch.zeros(200)})  # ~1.5 kB each
    assert len(list(tmp_path.glob("*.pt"))) <= 2 and store.get("d") is not None


def test_schedule_dependencies():
    schedule = Schedule(12, {2: "a", 6: "b", 10: "c"}, bidirectional=True)
    assert [schedule.gap(t) for t in (1, 2, 3, 5, 6, 7, 10, 11)] == [None, None, (2, 6), (2, 6), None, (6, 10), None,
                                                                    None]
    assert schedule.checkpoints() == [2, 5, 6, 9, 10]
    changed = Schedule(12, {2: "a", 6: "b", 10: "C"}, bidirectional=True)
    assert changed.todo(schedule.signatures()) == [7, 8, 9, 10, 11]
    forward_only = Schedule(12, {2: "a", 6: "b", 10: "C"})
    assert forward_only.todo(Schedule(12, {2: "a", 6: "b", 10: "c"}).signatures()) == [10, 11]
    with pytest.raises(ValueError, match="fusion"):
        Schedule(12, {0: "a"}, fusion="max")


def test_review_scores_flag_a_vanishing_object_and_a_scene_cut():
    from deaot_core.review_signals import FrameReview, colour_cut_scores, review_scores, review_signals, top_frames

    frames = []
    for t in range(8):
        label = np.zeros((32, 32), dtype=np.int64)
        label[4:14, 4:14] = 1
        if t < 5:  # object 2 is lost after frame 4
            label[18:30, 18:30] = 2
        frames.append(FrameReview(label, {1: 0.9, 2: 0.9} if t < 5 else {1: 0.9}))
    signals = review_signals(frames, [0])
    assert signals["lost"][5] == pytest.approx(0.5) and signals["change"][5] == 1.0 and signals["lost"][4] == 0
    scores = review_scores(frames, [0])
    assert scores[0] == 0 and top_frames(scores, 1) == [5]
    spaced = top_frames(scores, 3, spacing=2)
    assert spaced[0] == 5 and all(abs(a - b) >= 2 for a in spaced for b in spaced if a != b)
    assert [scores[t] for t in spaced] == sorted((scores[t] for t in spaced), reverse=True)
    # a scene cut (a new scene's colours) is flagged whatever the weights say
    images = [np.full((16, 16, 3), 30, np.uint8)] * 4 + [np.full((16, 16, 3), 220, np.uint8)] * 4
    cuts = colour_cut_scores(images)
    assert cuts[4] > 0.9 and cuts[:4].max() == 0
    flat = [FrameReview(np.ones((8, 8), np.int64), {1: 1.0}) for _ in range(8)]
    assert top_frames(review_scores(flat, [0], cuts), 1) == [4]
