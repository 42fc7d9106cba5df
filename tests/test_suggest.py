"""'Where to label next' on a real FiftyOne dataset: a bidirectional propagation from two keyframes
of a real video, then :func:`deaot_vos.suggest_keyframes` (function, operator, CLI)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import detection

pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")

REPO = Path(__file__).resolve().parents[1]
URI = "@deaot/vos/suggest_keyframes"
T = 12
KEYFRAMES = (2, 11)


@pytest.fixture(scope="module")
def propagated(fiftyone_db, tmp_path_factory, tiny_checkpoint):
    """A persistent dataset of two videos (12 and 9 frames) whose ``kf`` holds keyframes 2 and 11 (9
    on the short one) and ``out`` a bidirectional propagation of them; deleted afterwards."""
    import fiftyone as fo
    import torch
    import deaot_vos
    from conftest import synthetic_label_maps, write_video

    name = "t_suggest"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    ds.persistent = True
    folder = tmp_path_factory.mktemp("suggest")
    for video, count, keys in (("a", T, KEYFRAMES), ("b", 9, (1, 9))):
        maps = synthetic_label_maps(count)
        sample = fo.Sample(filepath=str(write_video(folder / f"{video}.mp4", maps)))
        for number in keys:
            m = maps[number - 1]
            sample.frames[number]["kf"] = fo.Detections(detections=[
                detection(lbl, m == k) for k, lbl in ((1, "red"), (2, "green"))])
        ds.add_sample(sample)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        deaot_vos.propagate(ds, "kf", "out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu",
                            bidirectional=True)
    finally:
        torch.set_num_threads(threads)
    yield ds
    fo.delete_dataset(name)


def _scores(ds, field: str) -> dict[str, dict[int, float]]:
    ids, numbers, values = ds.values(["id", "frames.frame_number", f"frames.{field}"])
    return {sid: dict(zip(n, v)) for sid, n, v in zip(ids, numbers, values)}


def _view_frames(ds, name: str) -> dict[str, list[int]]:
    view = ds.load_saved_view(name)
    ids, numbers = view.values(["id", "frames.frame_number"])
    return {sid: sorted(n) for sid, n in zip(ids, numbers)}


def test_suggest_scores_every_frame_and_saves_the_top_frames(propagated):
    import fiftyone as fo
    import deaot_vos

    ds = propagated
    calls = []
    summary = deaot_vos.suggest_keyframes(ds, "out", top=3, spacing=2, progress=lambda f, label: calls.append(f))
    assert summary["score_field"] == "out_review" and summary["view"] == "out_review-top"
    assert calls and calls == sorted(calls) and calls[-1] == 1.0
    assert isinstance(ds.get_frame_field_schema()["out_review"], fo.FloatField)
    scores = _scores(ds, "out_review")
    rows = {row["id"]: row for row in summary["samples"]}
    for sid, frames in scores.items():
        row = rows[sid]
        assert sorted(frames) == list(range(1, row["frames"] + 1))
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in frames.values())
        assert row["keyframes"] == ([2, 11] if row["frames"] == T else [1, 9])
        assert all(frames[k] == 0.0 for k in row["keyframes"])
        top = [t["frame"] for t in row["top"]]
        assert 1 <= len(top) <= 3 and not set(top) & set(row["keyframes"])
        assert [t["score"] for t in row["top"]] == sorted((t["score"] for t in row["top"]), reverse=True)
        assert all(abs(frames[t["frame"]] - t["score"]) < 1e-4 for t in row["top"])
        assert all(abs(a - b) >= 2 for a in top for b in top if a != b)
        assert frames[top[0]] == max(frames.values())
    assert _view_frames(ds, "out_review-top") == {sid: sorted(t["frame"] for t in row["top"])
                                                   for sid, row in rows.items()}

    # a re-run on one video replaces the field's values there (a wrong value planted first)
    first = ds.first()
    first.frames[5]["out_review"] = 42.0
    first.save()
    again = deaot_vos.suggest_keyframes(ds.select(first.id), "out", top=1, scene_cuts=False)
    row, = again["samples"]
    assert _scores(ds, "out_review")[first.id][5] != 42.0
    assert len(row["top"]) == 1 and _view_frames(ds, "out_review-top") == {first.id: [row["top"][0]["frame"]]}


def _with_frame_values(ds, sample_id: str, source: str, field: str, number: int, value: float) -> None:
    """Copy ``source`` to ``field`` with every object of frame ``number`` of one video given
    ``value`` as its confidence and agreement (the rest as propagated)."""
    ds.clone_frame_field(source, field)
    sample = ds[sample_id]
    for det in sample.frames[number][field].detections:
        det.confidence = value
        det["agreement"] = value
    sample.save()


def test_nan_confidences_are_unknown_and_score_as_the_most_doubtful(propagated):
    """A frame whose objects' confidences (and pass agreements) are NaN scores as if they were 0,
    the most doubtful, as a missing confidence does: finite scores, the frame suggested (a NaN
    score made it never suggested and wrote NaN)."""
    import math

    import deaot_vos

    ds = propagated
    first = ds.first().id
    number = 6  # a fused frame of the bidirectional run between keyframes 2 and 11
    assert ds[first].frames[number]["out"].detections[0]["agreement"] is not None
    _with_frame_values(ds, first, "out", "out_nan", number, float("nan"))
    _with_frame_values(ds, first, "out", "out_zero", number, 0.0)
    try:
        one = ds.select(first)
        nan = deaot_vos.suggest_keyframes(one, "out_nan", top=T, spacing=1, scene_cuts=False)
        zero = deaot_vos.suggest_keyframes(one, "out_zero", top=T, spacing=1, scene_cuts=False)
        plain = deaot_vos.suggest_keyframes(one, "out", score_field="out_plain", top=T, spacing=1, scene_cuts=False)
        nan_scores, zero_scores = _scores(ds, "out_nan_review")[first], _scores(ds, "out_zero_review")[first]
        assert all(math.isfinite(v) for v in nan_scores.values()), nan_scores
        assert nan_scores == zero_scores
        assert nan_scores[number] > _scores(ds, "out_plain")[first][number]
        assert number in [t["frame"] for t in nan["samples"][0]["top"]]
        assert nan["samples"][0]["top"] == zero["samples"][0]["top"] != plain["samples"][0]["top"]
        assert number in _view_frames(ds, "out_nan_review-top")[first]
    finally:
        for field in ("out_nan", "out_zero", "out_nan_review", "out_zero_review", "out_plain"):
            if field in ds.get_frame_field_schema():
                ds.delete_frame_field(field)
        for view in ("out_nan_review-top", "out_zero_review-top", "out_plain-top"):
            if ds.has_saved_view(view):
                ds.delete_saved_view(view)


def test_review_signals_read_non_finite_confidence_and_agreement_as_zero():
    """The core rule behind the test above, for NaN and infinities, in one frame of two objects."""
    import numpy as np

    from deaot_core.review_signals import FrameReview, review_signals

    label_map = np.zeros((8, 8), np.int64)
    label_map[:4, :4], label_map[4:, 4:] = 1, 2
    for bad in (float("nan"), float("inf"), float("-inf")):
        frames = [FrameReview(label_map, {1: 0.9, 2: 0.9}), FrameReview(label_map, {1: bad, 2: 0.8}, {1: 0.7, 2: bad})]
        signals = review_signals(frames, [0])
        assert all(np.isfinite(v).all() for v in signals.values()), (bad, signals)
        assert signals["confidence"][1] == 1.0 - (0.0 + 0.8) / 2
        assert signals["disagreement"][1] == 1.0


def test_a_field_not_written_by_the_propagation_is_refused_and_nothing_is_written(propagated):
    import fiftyone as fo
    import deaot_vos

    ds = propagated
    fields_before, views_before = sorted(ds.get_frame_field_schema()), ds.list_saved_views()
    with pytest.raises(ValueError, match=r"sample \w+ \(a\.mp4\).*'kf'.*not written by propagate_masks"):
        deaot_vos.suggest_keyframes(ds, "kf")
    with pytest.raises(ValueError, match="'out'.*FloatField"):  # a score field of another type
        deaot_vos.suggest_keyframes(ds, "kf", score_field="out")
    with pytest.raises(deaot_vos.SuggestionCancelled):
        deaot_vos.suggest_keyframes(ds, "out", score_field="cancelled", progress=lambda f, label: f < 0.5)
    assert sorted(ds.get_frame_field_schema()) == fields_before and ds.list_saved_views() == views_before
    assert isinstance(ds.get_frame_field_schema()["out"], fo.EmbeddedDocumentField)


def test_operator_and_cli(propagated, capsys):
    import fiftyone.operators as foo
    from deaot_vos.cli import main

    ds = propagated
    params = dict(output_field="out", score_field="op_review", top=2, scene_cuts=False)
    result = foo.execute_operator(URI, dict(dataset=ds, view=ds.view(), params=params)).result
    assert result["status"] == "ok" and result["view"] == "op_review-top" and len(result["samples"]) == 2
    assert ds.count("frames.op_review") == T + 9
    assert result["suggestions"][0].startswith("a.mp4: frame ")

    # the form: the Detections frame fields to choose from; a score field of another type is flagged
    from fiftyone.operators.executor import ExecutionContext

    op = foo.get_operator(URI)
    ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[],
                                               params=dict(output_field="out", score_field="kf")))
    props = op.resolve_input(ctx).type.properties
    assert props["output_field"].type.values == ["kf", "out"] and props["score_field"].invalid
    assert "FloatField" in props["score_field"].error_message

    cmd = [sys.executable, "-m", "deaot_vos", "suggest", "--dataset", ds.name, "--output-field", "out",
           "--score-field", "cli_review", "--top", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ds.reload()
    assert ds.count("frames.cli_review") == T + 9 and "cli_review-top" in ds.list_saved_views()
    top = ds.load_saved_view("cli_review-top").values("frames.frame_number", unwind=True)
    assert all(f"frame {n}" in done.stdout for n in top)
    # the refusal in this process (same parser and handler; another interpreter costs ~15 s here)
    assert main(["suggest", "--dataset", ds.name, "--output-field", "kf"]) == 1
    assert "not written by propagate_masks" in capsys.readouterr().err
    assert "kf_review" not in ds.get_frame_field_schema()
