"""What the plugin takes from FiftyOne instead of copying it: the operators' target selector
(``inputs.view_target`` / ``ctx.target_view()``), ``list_evaluations(type=...)``, throttled
progress (``fo.report_progress``), and a CVAT-style track field proposed as keyframes."""
from __future__ import annotations

import pytest
from helpers import detection as _det

pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")

URI = "@deaot/vos/propagate_masks"


@pytest.fixture
def track_dataset(make_video):
    """One 10-frame video: ``ground_truth`` on every frame, ``track`` (CVAT-style: labels on every
    frame, ``keyframe=True`` on frames 2 and 7), ``poly_track`` (Polylines, every frame, none marked)."""
    import fiftyone as fo

    name = "t_native_track"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    path, maps = make_video("track", 10)
    sample = fo.Sample(filepath=path)
    for number in range(1, 11):
        m = maps[number - 1]
        sample.frames[number]["ground_truth"] = fo.Detections(detections=[_det("red", m == 1, index=1)])
        sample.frames[number]["track"] = fo.Detections(
            detections=[_det("red", m == 1, index=1, keyframe=number in (2, 7))])
        sample.frames[number]["poly_track"] = fo.Polylines(polylines=[fo.Polyline(
            label="p", points=[[(0.1, 0.1), (0.3, 0.1), (0.2, 0.3)]], closed=True, filled=True, keyframe=False)])
    ds.add_sample(sample)
    yield ds
    fo.delete_dataset(name)


def test_a_track_field_is_proposed_as_keyframes(track_dataset):
    import fiftyone as fo
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext
    from deaot_vos.fields import likely_keyframes_field

    ds = track_dataset
    # every field is labelled on every frame; only 'track' marks its annotated frames
    assert likely_keyframes_field(ds) == "track"
    ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[], params={}))
    assert foo.get_operator(URI).resolve_input(ctx).type.properties["keyframes_field"].default == "track"
    # marked frames count as its labelled frames: a field labelled on one frame comes first, a
    # field named like keyframes before both
    sample = ds.first()
    sample.frames[4]["sparse"] = sample.frames[4]["ground_truth"].copy()
    sample.save()
    assert likely_keyframes_field(ds) == "sparse"
    ds.rename_frame_field("track", "cvat_keyframes")
    assert likely_keyframes_field(ds) == "cvat_keyframes"
    # a marked Polylines track too; unmarked (keyframe=False everywhere) it is a full field
    ds.delete_frame_fields(["sparse", "cvat_keyframes"])
    assert likely_keyframes_field(ds) is None
    for frame in sample.frames.values():
        frame["poly_track"].polylines[0]["keyframe"] = frame.frame_number == 5
    sample.save()
    assert likely_keyframes_field(ds) == "poly_track"
    assert ds.count("frames.poly_track") == 10 and isinstance(ds.first().frames[1]["poly_track"], fo.Polylines)


@pytest.fixture
def two_videos(make_video):
    """Two videos (8 and 6 frames) with a keyframe ``kf`` on frame 1."""
    import fiftyone as fo

    name = "t_native_two"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    for vid, count in enumerate((8, 6)):
        path, maps = make_video(f"two{vid}", count)
        sample = fo.Sample(filepath=path)
        sample.frames[1]["kf"] = fo.Detections(detections=[_det("red", maps[0] == 1, index=1)])
        ds.add_sample(sample)
    yield ds
    fo.delete_dataset(name)


def _form(ds, view=None, selected=None, params=None):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    stages = view._serialize() if view is not None else []
    ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=stages, selected=selected or [],
                                               params=params or {}))
    return foo.get_operator(URI).resolve_input(ctx).type.properties


def test_the_form_offers_fiftyone_target_selector(two_videos):
    import fiftyone.operators.types as types

    ds = two_videos
    first, second = ds.values("id")
    # nothing selected, no view: the dataset is the only choice (FiftyOne hides the selector)
    props = _form(ds)
    assert isinstance(props["view_target"], types.ViewTargetProperty)
    assert props["view_target"].default == "DATASET"
    assert props["target_notice"].view.label == "Runs on all 2 samples of the dataset"
    # a selection inside a filtered view: the three choices, the selection by default
    view = ds.limit(2)
    props = _form(ds, view=view, selected=[first])
    target = props["view_target"]
    assert set(target.options.values()) >= {"DATASET", "CURRENT_VIEW", "SELECTED_SAMPLES"}
    assert target.default == "SELECTED_SAMPLES"
    assert props["target_notice"].view.label == "Runs on 1 selected sample"
    # the notice follows the choice
    chosen = _form(ds, view=ds.limit(1), selected=[second], params=dict(view_target="CURRENT_VIEW"))
    assert chosen["target_notice"].view.label == "Runs on the only sample of the current view"
    chosen = _form(ds, view=ds.limit(1), selected=[second], params=dict(view_target="DATASET"))
    assert chosen["target_notice"].view.label == "Runs on all 2 samples of the dataset"


def test_the_target_choice_decides_which_videos_run(two_videos, tiny_checkpoint):
    import fiftyone.operators as foo

    ds = two_videos
    first, second = ds.values("id")
    params = dict(keyframes_field="kf", output_field="out", checkpoint=tiny_checkpoint, model="DeAOTT",
                  max_long_edge=64)

    def run(**request):
        result = foo.execute_operator(URI, dict(dataset=ds, **request))
        assert result.error is None, result.error
        return sorted(row["id"] for row in result.result["summary"])

    # no choice from Python: the selector's default, the selection
    assert run(view=ds.view(), selected=[second], params=params) == [second]
    assert "view_target" not in params  # the caller's params stay as given
    # the dataset, although a sample is selected and the view holds one video
    assert run(view=ds.select(first), selected=[second],
               params=dict(params, overwrite=True, view_target="DATASET")) == sorted([first, second])
    # the current view
    assert run(view=ds.select(first), selected=[second],
               params=dict(params, overwrite=True, view_target="CURRENT_VIEW")) == [first]


def test_operator_progress_is_throttled_on_a_long_run(make_video, tiny_checkpoint, monkeypatch):
    """A 60-frame video reports progress per frame to the operator, which passes at most one
    report per PROGRESS_SECONDS (plus the last) to ctx.set_progress (without the throttle: one
    per frame, a fraction of a second apart)."""
    import sys
    import time

    import fiftyone as fo
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    frames = 60
    name = "t_native_long"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    path, maps = make_video("long", frames, objects=1)
    sample = fo.Sample(filepath=path)
    sample.frames[1]["kf"] = fo.Detections(detections=[_det("red", maps[0] == 1, index=1)])
    ds.add_sample(sample)

    reports = []
    original = ExecutionContext.set_progress

    def recording(self, progress=None, label=None):
        reports.append((time.monotonic(), progress, label))
        return original(self, progress=progress, label=label)

    monkeypatch.setattr(ExecutionContext, "set_progress", recording)
    op = foo.get_operator(URI)
    seconds = sys.modules[type(op).__module__].throttled_progress.__globals__["PROGRESS_SECONDS"]
    start = time.monotonic()
    try:
        result = foo.execute_operator(URI, dict(dataset=ds, view=ds.view(), params=dict(
            keyframes_field="kf", output_field="out", checkpoint=tiny_checkpoint, model="DeAOTT", max_long_edge=48)))
        elapsed = time.monotonic() - start
        assert result.error is None, result.error
        assert result.result["frames"] == frames and ds.count("frames.out") == frames
    finally:
        fo.delete_dataset(name)
    # one report per PROGRESS_SECONDS at most, plus the final one: far fewer than frames
    assert 1 <= len(reports) <= elapsed / seconds + 2, (len(reports), elapsed)
    assert len(reports) * 3 <= frames, (len(reports), elapsed)
    # FiftyOne's schedule: the k-th report before the last comes k * PROGRESS_SECONDS or more after the start
    late_enough = [when - start >= (k + 1) * seconds for k, (when, _, _) in enumerate(reports[:-1])]
    assert all(late_enough), [when - start for when, _, _ in reports]
    assert reports[-1][1] == 1.0 and any(label.startswith("[1/1] long.mp4: frame ") for _, _, label in reports)
