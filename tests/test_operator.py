"""The ``@deaot/vos`` plugin loaded the way FiftyOne loads it (FIFTYONE_PLUGINS_DIR, set by
conftest.py to a folder holding a link to this checkout), run through ``execute_operator``."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import detection as _det

pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")

URI = "@deaot/vos/propagate_masks"


@pytest.fixture
def video_dataset(make_video):
    """Two videos (12 and 9 frames, no metadata) with keyframes and unrelated fields."""
    import fiftyone as fo

    name = "t_operator"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    for vid, (count, keyframes) in enumerate([(12, [3, 8]), (9, [1])]):
        path, maps = make_video(f"op{vid}", count)
        sample = fo.Sample(filepath=path, tags=["t"], note=f"video {vid}")
        for number in keyframes:
            m = maps[number - 1]
            sample.frames[number]["kf"] = fo.Detections(
                detections=[_det("red", m == 1, index=11), _det("green", m == 2)])
        sample.frames[2]["other"] = fo.Classification(label="x")
        ds.add_sample(sample)
    yield ds
    fo.delete_dataset(name)


def _snapshot(ds):
    """Every sample-level value, and every non-empty frame-level value by (sample, frame number),
    except the output fields, modification times (new frame documents are expected) and the
    metadata (a run fills what is missing)."""
    fields = [f for f in ds.get_field_schema() if f not in ("last_modified_at", "frames", "metadata")]
    samples = dict(zip(fields, ([repr(v) for v in vals] for vals in ds.values(fields))))
    frame_fields = [f for f in ds.get_frame_field_schema()
                    if f not in ("id", "created_at", "last_modified_at", "out", "seg")]
    sids = ds.values("id")
    columns = ds.values([f"frames.{f}" for f in frame_fields])
    frames = {}
    for name, per_sample in zip(frame_fields, columns):
        numbers = ds.values("frames.frame_number")
        for sid, nums, vals in zip(sids, numbers, per_sample):
            for n, v in zip(nums, vals):
                if v is not None and name != "frame_number":
                    frames[(sid, n, name)] = repr(v)
    return samples, frames


def test_plugin_is_discovered_and_registers_the_operator():
    import fiftyone.operators as foo
    import fiftyone.plugins as fop

    assert "@deaot/vos" in [p.name for p in fop.list_plugins()]
    op = foo.get_operator(URI)
    assert op.config.allow_delegated_execution and op.config.name == "propagate_masks"


def test_execute_operator_end_to_end(video_dataset, tiny_checkpoint):
    import fiftyone as fo
    import fiftyone.operators as foo

    ds = video_dataset
    frame_docs_before = ds.count("frames")
    before = _snapshot(ds)
    params = dict(keyframes_field="kf", output_field="out", model="DeAOTT", checkpoint=tiny_checkpoint,
                  device="cpu", write_segmentation="seg")
    result = foo.execute_operator(URI, dict(dataset=ds, view=ds.view(), params=params))
    assert result.result["status"] == "ok" and result.result["propagated"] == 2
    assert result.result["frames"] == 12 + 9

    ds.reload()
    assert ds.count("frames") == 12 + 9 > frame_docs_before
    for sample in ds:
        count = len(sample.frames)
        assert count in (12, 9)
        for number in range(1, count + 1):
            frame = sample.frames[number]
            assert isinstance(frame["out"], fo.Detections) and isinstance(frame["seg"], fo.Segmentation)
            assert all(d.index in (11, 1) for d in frame["out"].detections)
            kf = frame["kf"]
            if kf is not None:  # keyframes are copied exactly
                out = {d.index: d for d in frame["out"].detections}
                assert set(out) == {11, 1}
                for d, index in zip(kf.detections, (11, 1)):
                    assert out[index].label == d.label and out[index].bounding_box == d.bounding_box
                    assert np.array_equal(out[index].mask, d.mask)
    assert _snapshot(ds) == before
    assert ds.values("metadata.total_frame_count") == [12, 9], "the run fills the videos' missing metadata"
    assert sorted(ds.get_frame_field_schema()) == sorted(
        ["id", "frame_number", "created_at", "last_modified_at", "kf", "other", "out", "seg"])

    # rerun into the existing field without overwrite: refused, nothing changes
    out_before = ds.values("frames.out")
    with pytest.raises(Exception, match="'out' already exists.*tick the Overwrite checkbox") as raised:
        foo.execute_operator(URI, dict(dataset=ds, view=ds.view(), params=params))
    assert "overwrite=True" not in str(raised.value)
    assert ds.values("frames.out") == out_before and _snapshot(ds) == before

    # selected samples only, with overwrite
    first, second = ds.values("id")
    out_second = ds.select(second).values("frames.out")
    result = foo.execute_operator(URI, dict(dataset=ds, view=ds.view(), selected=[first],
                                            params=dict(params, overwrite=True)))
    assert [r["id"] for r in result.result["summary"]] == [first]
    assert ds.select(second).values("frames.out") == out_second


def test_resolve_input_builds_the_form(video_dataset, monkeypatch):
    import deaot_core
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ds = video_dataset
    op = foo.get_operator(URI)
    ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[], params={}))
    form = op.resolve_input(ctx)
    props = form.type.properties
    for name in ("keyframes_field", "output_field", "model", "checkpoint", "device", "overwrite", "long_term_gap",
                 "max_long_term_frames", "max_long_edge", "precision", "write_segmentation", "bidirectional",
                 "incremental", "keyframe_marks"):
        assert name in props, name
    assert props["keyframes_field"].type.values == ["kf"]
    assert props["model"].default == "R50_DeAOTL" and "DeAOTT" in props["model"].type.values
    assert not props["output_field"].invalid
    assert form.to_json()  # serialisable for the App

    ds.add_frame_field("deaot", ds.get_frame_field_schema()["kf"].__class__,
                       embedded_doc_type=ds.get_frame_field_schema()["kf"].document_type)
    ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[], params=dict(keyframes_field="kf")))
    props = op.resolve_input(ctx).type.properties
    assert props["output_field"].invalid and "already exists" in props["output_field"].error_message
    assert "tick the Overwrite checkbox" in props["output_field"].error_message
    assert "overwrite=True" not in props["output_field"].error_message
    ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[],
                                               params=dict(keyframes_field="kf", overwrite=True)))
    assert not op.resolve_input(ctx).type.properties["output_field"].invalid
    ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[],
                                               params=dict(keyframes_field="kf", incremental=True)))
    assert not op.resolve_input(ctx).type.properties["output_field"].invalid  # incremental updates the output
    ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[],
                                               params=dict(keyframes_field="kf", test_scales="0.8, x")))
    bad = op.resolve_input(ctx).type.properties["test_scales"]
    assert bad.invalid and "test_scales" in bad.error_message

    # the precision help says when the CPU would only emulate bf16 / fp16
    cpu = dict(dataset_name=ds.name, view=[], params=dict(keyframes_field="kf", device="cpu"))
    monkeypatch.setattr(deaot_core, "native_cpu_precision", lambda p: p != "bf16")
    help_text = op.resolve_input(ExecutionContext(request_params=cpu)).type.properties["precision"].view.description
    assert "no native bf16 kernels" in help_text
    monkeypatch.setattr(deaot_core, "native_cpu_precision", lambda p: True)
    help_text = op.resolve_input(ExecutionContext(request_params=cpu)).type.properties["precision"].view.description
    assert "emulated" not in help_text


def test_test_time_augmentation_params_are_parsed():
    from deaot_vos.propagation import PropagationOptions

    base = dict(keyframes_field="kf")
    options = PropagationOptions.from_params(base)
    assert options.test_scales == (1.0,) and options.test_flip is False
    options = PropagationOptions.from_params(dict(base, test_scales="0.8, 1.0,1.2", test_flip=True))
    assert options.test_scales == (0.8, 1.0, 1.2) and options.test_flip is True
    assert PropagationOptions.from_params(dict(base, test_scales=[1.3])).test_scales == (1.3,)  # a queued task's JSON
    for bad in ("0", "1.0,,2", "abc", "9"):
        with pytest.raises(ValueError, match="test_scales"):
            PropagationOptions.from_params(dict(base, test_scales=bad))


def test_delegated_execution(video_dataset, tiny_checkpoint):
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    ds = video_dataset
    params = dict(keyframes_field="kf", output_field="out", model="DeAOTT", checkpoint=tiny_checkpoint,
                  device="cpu", delegate=True)
    queued = foo.execute_operator(URI, dict(dataset=ds, view=ds.view(), params=params))
    assert queued.delegated
    assert "out" not in ds.get_frame_field_schema()
    service = DelegatedOperationService()
    # two videos: the queued operation queues one operation per video (tests/test_workers.py)
    while service.execute_queued_operations(operator=URI, dataset_name=ds.name):
        pass
    ds.reload()
    assert ds.count("frames.out") == 12 + 9
    ops = service.list_operations(operator=URI, dataset_name=ds.name)
    assert [op.run_state for op in ops] == ["completed"] * 3
    for op in ops:
        service.delete_operation(op.id)


def test_the_sample_open_in_the_app_is_the_default_target(video_dataset, tiny_checkpoint):
    """With a video open in the App's modal (``ctx.current_sample``), the form offers it as the
    target and chooses it by default; a run without a choice propagates that video only. The
    dataset and, when samples are selected, the selection stay choices."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ds = video_dataset
    first, second = ds.values("id")
    op = foo.get_operator(URI)

    def form(**request):
        ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[], params={}, **request))
        return op.resolve_input(ctx).type.properties

    props = form(current_sample=second)
    target = props["view_target"]
    assert target.default == "OPEN_SAMPLE" and target.type.values == ["DATASET", "OPEN_SAMPLE"]
    assert [c.value for c in target.view.choices] == ["DATASET", "OPEN_SAMPLE"]  # shown, not hidden
    assert props["target_notice"].view.label == "Runs on the open sample"
    props = form(current_sample=second, selected=[first])
    assert props["view_target"].default == "OPEN_SAMPLE"
    assert "SELECTED_SAMPLES" in props["view_target"].type.values
    props = form()  # no sample open: FiftyOne's selector as it was, the whole dataset
    assert props["view_target"].type.values == ["DATASET"] and props["view_target"].default == "DATASET"
    assert props["target_notice"].view.label == "Runs on all 2 samples of the dataset"

    params = dict(keyframes_field="kf", output_field="out", model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu")
    result = foo.execute_operator(URI, dict(dataset=ds, view=ds.view(), current_sample=second, params=params))
    assert [r["id"] for r in result.result["summary"]] == [second]
    assert ds.count("frames.out") == 9 and ds.select(first).count("frames.out") == 0
    # the dataset, chosen explicitly with the modal open, runs on every video
    result = foo.execute_operator(URI, dict(dataset=ds, view=ds.view(), current_sample=second,
                                            params=dict(params, overwrite=True, view_target="DATASET")))
    assert sorted(r["id"] for r in result.result["summary"]) == sorted([first, second])
