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
