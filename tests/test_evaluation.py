"""J&F evaluation as FiftyOne evaluation runs, the comparison table, CLI and App panel.

A small video dataset (real videos written to tmp, decoded by decord) with ground truth on every
frame is propagated with two settings (DeAOTT with random weights, long_term_gap 1 vs the
default), evaluated through the operator and through the Python function; values are checked
against ``deaot_core.metrics.davis.sequence_metrics`` run directly on independent label maps.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import synthetic_label_maps, write_video
from helpers import detection as _det

pytestmark = pytest.mark.usefixtures("fiftyone_db")

EVAL_URI = "@deaot/vos/evaluate_vos"
PANEL_URI = "@deaot/vos/vos_compare"
COMPARE_URI = "@deaot/vos/compare_vos"
VIDEOS = ((12, 2), (9, 2))  # (frames, objects)
SPARSE = (1, 3, 5, 7, 9)  # frames of the sparse ground truth


def _gt_detections(label_map, extra=None):
    import fiftyone as fo

    dets = [_det(f"obj{k}", label_map == k, index=k) for k in (1, 2) if (label_map == k).any()]
    return fo.Detections(detections=dets + (extra or []))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_checkpoint, fiftyone_db):
    """Dataset with ground truth on every frame, propagated twice, evaluated twice
    (run_a: operator, run_b: Python)."""
    import torch
    import fiftyone as fo
    import fiftyone.operators as foo

    import deaot_vos
    from deaot_vos.evaluation import evaluate_vos

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("eval")
    name = "t_evaluation"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    maps = {}
    for vid, (count, objects) in enumerate(VIDEOS):
        label_maps = synthetic_label_maps(count, objects=objects)
        path = write_video(tmp / f"ev{vid}.mp4", label_maps)
        sample = fo.Sample(filepath=str(path), note=f"video {vid}")
        for number in range(1, count + 1):
            m = label_maps[number - 1]
            sample.frames[number]["ground_truth"] = _gt_detections(m)
            sample.frames[number]["gt_seg"] = fo.Segmentation(mask=m.astype(np.uint8))
            if number in SPARSE:
                sample.frames[number]["gt_sparse"] = _gt_detections(m)
        sample.frames[1]["kf"] = _gt_detections(label_maps[0])
        sample.frames[2]["other"] = fo.Classification(label="x")
        ds.add_sample(sample)
        maps[sample.id] = label_maps
    for field, knobs in (("pred_a", {}), ("pred_b", dict(long_term_gap=1))):
        deaot_vos.propagate(ds, "kf", field, model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu",
                         write_segmentation=field + "_seg", **knobs)
    result = foo.execute_operator(EVAL_URI, dict(dataset=ds, view=ds.view(), params=dict(
        pred_field="pred_a", gt_field="ground_truth", eval_key="run_a")))
    assert result.result["status"] == "ok", result.result
    results_b = evaluate_vos(ds, "pred_b", "ground_truth", eval_key="run_b")
    torch.set_num_threads(threads)
    yield dict(ds=ds, maps=maps, op_result=result.result, results_b=results_b)
    fo.delete_dataset(name)


def _stack(ds, sid, field):
    """(T, H, W) label maps of a Segmentation frame field, independent of deaot_vos.label_frames."""
    return np.stack([np.asarray(m.mask) for m in ds.select(sid).values(f"frames.{field}")[0]]).astype(np.int64)


def _direct(ds, maps, sid, pred_field, frames=None):
    from deaot_core.metrics.davis import sequence_metrics

    gt = maps[sid]
    pred = _stack(ds, sid, pred_field + "_seg")
    if frames is not None:
        gt, pred = gt[[n - 1 for n in frames]], pred[[n - 1 for n in frames]]
    return sequence_metrics(gt, pred)


def test_runs_are_fiftyone_evaluations(evaluated):
    from deaot_vos.evaluation import METHOD, VOSEvaluationConfig, VOSEvaluationResults, list_vos_evaluations

    ds = evaluated["ds"]
    assert ds.list_evaluations() == ["run_a", "run_b"] == list_vos_evaluations(ds)
    info = ds.get_evaluation_info("run_a")
    assert isinstance(info.config, VOSEvaluationConfig)
    assert (info.config.pred_field, info.config.gt_field, info.config.method) == ("pred_a", "ground_truth", METHOD)
    assert ds.get_evaluation_info("run_b").config.pred_field == "pred_b"
    ds.reload()
    for key in ("run_a", "run_b"):
        results = ds.load_evaluation_results(key, cache=False)  # from the database, not the cache
        assert isinstance(results, VOSEvaluationResults) and results.key == key
        assert len(results.sequences) == 2 and len(results.objects) == 4
        assert {o["index"] for o in results.objects} == {1, 2}
        assert {o["label"] for o in results.objects} == {"obj1", "obj2"}
    op = evaluated["op_result"]
    loaded = ds.load_evaluation_results("run_a", cache=False)
    assert op["sequences"] == 2 and op["objects"] == 4
    assert op["summary"] == pytest.approx(loaded.summary())
    # the sample fields are grouped in the App's sidebar under the eval key
    groups = {g.name: g.paths for g in ds.app_config.sidebar_groups or []}
    assert set(groups.get("run_a", [])) >= {"run_a_JF", "run_a_J", "run_a_F"}


def test_values_match_sequence_metrics(evaluated):
    from deaot_core.metrics.davis import global_summary

    ds, maps = evaluated["ds"], evaluated["maps"]
    for key, pred in (("run_a", "pred_a"), ("run_b", "pred_b")):
        results = ds.load_evaluation_results(key)
        pooled = []
        for sid in ds.values("id"):
            direct = _direct(ds, maps, sid, pred)
            pooled += direct["objects"]
            seq = results.sequence(sid)
            assert seq["K"] == direct["K"] == 2
            assert np.allclose(seq["J"], direct["J"]) and np.allclose(seq["F"], direct["F"])
            for got, want in zip(seq["objects"], direct["objects"]):
                assert {k: got[k] for k in want} == pytest.approx(want, nan_ok=True)
            sample = ds[sid]
            assert sample[f"{key}_JF"] == pytest.approx(direct["summary"]["J&F-Mean"])
            assert sample[f"{key}_J"] == pytest.approx(direct["summary"]["J-Mean"])
            assert sample[f"{key}_F"] == pytest.approx(direct["summary"]["F-Mean"])
            count = len(maps[sid])
            numbers = ds.select(sid).values("frames.frame_number")[0]
            js = dict(zip(numbers, ds.select(sid).values(f"frames.{key}_J")[0]))
            fs = dict(zip(numbers, ds.select(sid).values(f"frames.{key}_F")[0]))
            # first (reference) and last annotated frames are not scored
            assert js[1] is None and js[count] is None and fs[1] is None and fs[count] is None
            assert [js[n] for n in range(2, count)] == pytest.approx(direct["J"].mean(axis=0))
            assert [fs[n] for n in range(2, count)] == pytest.approx(direct["F"].mean(axis=0))
        assert results.summary() == pytest.approx(global_summary(pooled), nan_ok=True)
        global_csv, per_seq = results.official_csvs()
        assert global_csv.splitlines()[0].startswith("J&F-Mean,J-Mean")
        assert "%.3f" % results.summary()["J&F-Mean"] in global_csv and len(per_seq.splitlines()) == 5
    # the two settings are two different runs with their own values
    assert ds.values("run_a_JF") != [None, None] and ds.values("run_b_JF") != [None, None]
    # the App can sort / filter on them
    assert len(ds.sort_by("run_a_JF", reverse=True)) == 2 and ds.bounds("frames.run_b_J")[0] is not None


def test_other_label_types_sparse_gt_and_no_write(evaluated):
    from deaot_vos.evaluation import evaluate_vos

    ds, maps = evaluated["ds"], evaluated["maps"]
    schema_before = (sorted(ds.get_field_schema()), sorted(ds.get_frame_field_schema()), ds.list_evaluations())
    base = ds.load_evaluation_results("run_a")
    # Segmentation predictions and Segmentation ground truth read as the same id maps
    for pred, gt in (("pred_a_seg", "ground_truth"), ("pred_a", "gt_seg")):
        res = evaluate_vos(ds, pred, gt)  # eval_key None: compute only
        assert res.summary() == pytest.approx(base.summary(), nan_ok=True)
    # frames without ground truth are skipped: only annotated frames, in order
    res = evaluate_vos(ds, "pred_a", "gt_sparse")
    for sid in ds.values("id"):
        count = len(maps[sid])
        frames = [n for n in SPARSE if n <= count]
        seq = res.sequence(sid)
        assert seq["frames"] == frames and seq["scored_frames"] == frames[1:-1]
        direct = _direct(ds, maps, sid, "pred_a", frames)
        assert np.allclose(seq["J"], direct["J"]) and np.allclose(seq["F"], direct["F"])
    assert (sorted(ds.get_field_schema()), sorted(ds.get_frame_field_schema()), ds.list_evaluations()) == schema_before


def test_compare_table_and_cli(evaluated, capsys):
    from deaot_vos.cli import main
    from deaot_vos.compare import frame_curves, summary_rows
    from deaot_vos.tables import format_table, to_csv

    ds = evaluated["ds"]
    rows = summary_rows(ds, ["run_a", "run_b"])
    assert [r["eval_key"] for r in rows] == ["run_a", "run_b"]
    for row in rows:
        assert {k: row[k] for k in ("pred_field", "sequences", "objects")} == dict(
            pred_field="pred_a" if row["eval_key"] == "run_a" else "pred_b", sequences=2, objects=4)
        assert row["J&F-Mean"] == pytest.approx(ds.load_evaluation_results(row["eval_key"]).summary()["J&F-Mean"])
    assert summary_rows(ds) == rows  # default: every J&F run
    text = format_table(rows)
    header = text.splitlines()[0].split()
    assert header == ["eval_key", "J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    csv = to_csv(rows).splitlines()
    assert csv[1].startswith("run_a,%.3f," % rows[0]["J&F-Mean"])

    assert main(["compare", "--dataset", ds.name, "--eval-keys", "run_a", "run_b"]) == 0
    out = capsys.readouterr().out
    for row in rows:
        line = next(l for l in out.splitlines() if l.startswith(row["eval_key"]))
        assert line.split()[1:] == ["%.3f" % row[k] if row[k] == row[k] else "NaN" for k in header[1:]]
    assert main(["compare", "--dataset", ds.name, "--eval-keys", "run_a", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == ",".join(header)
    assert main(["compare", "--dataset", ds.name, "--eval-keys", "nope"]) == 1
    assert "no evaluation 'nope'" in capsys.readouterr().err

    sid = ds.first().id
    curves = frame_curves(ds, sid, ["run_a", "run_b"])
    assert curves["run_a"]["frames"] == list(range(2, 12))
    res = ds.load_evaluation_results("run_b").sequence(sid)
    assert curves["run_b"]["JF"] == pytest.approx(
        (np.mean(res["J"], axis=0) + np.mean(res["F"], axis=0)) / 2)


def test_evaluate_cli_and_overwrite(evaluated, capsys):
    from deaot_vos.cli import main
    from deaot_vos.evaluation import EvaluationError, evaluate_vos

    ds = evaluated["ds"]
    before = ds.values("run_b_JF")
    with pytest.raises(EvaluationError, match="already has an evaluation 'run_b'; pass overwrite=True") as raised:
        evaluate_vos(ds, "pred_a", "ground_truth", eval_key="run_b")
    assert raised.value.field == "run_b"
    assert ds.values("run_b_JF") == before and ds.get_evaluation_info("run_b").config.pred_field == "pred_b"
    assert main(["evaluate", "--dataset", ds.name, "--pred-field", "pred_a", "--eval-key", "run_cli"]) == 0
    out = capsys.readouterr().out
    assert "run_cli" in out and "J&F-Mean" in out
    assert ds.values("run_cli_JF") == pytest.approx(ds.values("run_a_JF"))
    assert main(["evaluate", "--dataset", ds.name, "--pred-field", "pred_a", "--eval-key", "run_cli"]) == 1
    err = capsys.readouterr().err
    assert "already has an evaluation" in err and "pass --overwrite" in err and "overwrite=True" not in err
    # overwrite with other fields: the old run's values are replaced
    assert main(["evaluate", "--dataset", ds.name, "--pred-field", "pred_b", "--eval-key", "run_cli",
                 "--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["J&F-Mean"] == pytest.approx(
        ds.load_evaluation_results("run_b").summary()["J&F-Mean"])
    assert ds.values("run_cli_JF") == pytest.approx(ds.values("run_b_JF"))
    assert ds.get_evaluation_info("run_cli").config.pred_field == "pred_b"
    # rename and delete remove / move the fields with the run
    ds.rename_evaluation("run_cli", "run_renamed")
    assert "run_renamed_JF" in ds.get_field_schema() and "run_cli_JF" not in ds.get_field_schema()
    assert "run_renamed_J" in ds.get_frame_field_schema()
    ds.delete_evaluation("run_renamed")
    assert "run_renamed" not in ds.list_evaluations()
    assert not [f for f in ds.get_field_schema() if f.startswith("run_renamed")]
    assert not [f for f in ds.get_frame_field_schema() if f.startswith("run_renamed")]
    assert ds.list_evaluations() == ["run_a", "run_b"] and ds.values("run_b_JF") == before


def _state(ds):
    return (sorted(ds.get_field_schema()), sorted(ds.get_frame_field_schema()), ds.list_evaluations(),
            ds.values("run_a_JF"), ds.values("frames.run_a_J"))


def test_bad_input_is_refused_and_changes_nothing(evaluated):
    import fiftyone as fo

    from deaot_vos.evaluation import EvaluationError, evaluate_vos
    from deaot_vos.fields import LabelFieldError

    ds = evaluated["ds"]
    first, second = ds.values("id")
    v0 = ds[first]
    name0 = v0.filepath.rsplit("/", 1)[-1]
    # a prediction with an object (index 9) that is not on the reference frame, on frame 4
    extra = {}
    for n, frame in v0.frames.items():
        dets = frame["ground_truth"].copy()
        if n == 4:
            dets.detections.append(_det("intruder", np.pad(np.ones((4, 4), bool), ((50, 10), (80, 12))), index=9))
        extra[n] = dets
    ds.set_values("frames.pred_extra", {first: extra}, key_field="id")
    # ground truth with an object without index on frame 2 of the second video
    v1 = ds[second]
    noindex = {n: f["ground_truth"].copy() for n, f in v1.frames.items()}
    noindex[2].detections[0].index = None
    ds.set_values("frames.gt_noindex", {second: noindex}, key_field="id")
    # ground truth on only two frames
    ds.set_values("frames.gt_short", {first: {1: v0.frames[1]["ground_truth"], 5: v0.frames[5]["ground_truth"]}},
                  key_field="id")
    ds.add_sample_field("taken_JF", fo.FloatField)
    before = _state(ds)

    cases = [
        (dict(pred_field="missing"), LabelFieldError, "no frame field 'missing'"),
        (dict(pred_field="other"), LabelFieldError, "'other'.*Classification"),
        (dict(gt_field="pred_a"), EvaluationError, "same field"),
        (dict(pred_field="pred_extra"), EvaluationError, f"{name0}.*frame 4 of 'pred_extra'.*\\[9\\]"),
        (dict(gt_field="gt_noindex"), LabelFieldError, "frame 2 of field 'gt_noindex'.*without an index"),
        (dict(gt_field="gt_short"), EvaluationError, f"{name0}.*'gt_short' is set on 2 frame"),
        (dict(eval_key="taken"), EvaluationError, "sample field 'taken_JF' already exists"),
        (dict(eval_key="not-a-key"), ValueError, "invalid eval_key"),
        (dict(eval_key="run_a"), EvaluationError, "already has an evaluation 'run_a'"),
        (dict(extra_objects="maybe"), ValueError, "extra_objects"),
    ]
    for kwargs, error, match in cases:
        args = {**dict(pred_field="pred_a", gt_field="ground_truth", eval_key="bad"), **kwargs}
        with pytest.raises(error, match=match):
            evaluate_vos(ds, args.pop("pred_field"), args.pop("gt_field"), **args)
        assert _state(ds) == before, kwargs
    # clips views are refused
    with pytest.raises(ValueError, match="clips"):
        evaluate_vos(ds.to_clips("frames.kf"), "pred_a", "ground_truth")
    # the operator refuses too, naming the problem
    import fiftyone.operators as foo

    with pytest.raises(Exception, match="frame 4 of 'pred_extra'"):
        foo.execute_operator(EVAL_URI, dict(dataset=ds, view=ds.view(), params=dict(
            pred_field="pred_extra", gt_field="ground_truth", eval_key="bad")))
    assert _state(ds) == before
    # extra_objects="ignore" scores the reference objects only
    res = evaluate_vos(ds.select(first), "pred_extra", "ground_truth", extra_objects="ignore")
    assert res.sequence(first)["K"] == 2 and res.summary()["J-Mean"] == pytest.approx(1.0)
    for field in ("pred_extra", "gt_noindex", "gt_short"):
        ds.delete_frame_field(field)
    ds.delete_sample_field("taken_JF")


def test_evaluate_operator_form(evaluated):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ds = evaluated["ds"]
    op = foo.get_operator(EVAL_URI)
    ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[], params={}))
    form = op.resolve_input(ctx)
    props = form.type.properties
    for name in ("pred_field", "gt_field", "eval_key", "overwrite", "extra_objects"):
        assert name in props, name
    assert props["gt_field"].default == "ground_truth"
    assert "other" not in props["pred_field"].type.values and "pred_a" in props["pred_field"].type.values
    assert form.to_json()
    params = dict(pred_field="pred_a", gt_field="ground_truth", eval_key="run_a")
    ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[], params=params))
    props = op.resolve_input(ctx).type.properties
    assert props["eval_key"].invalid and "already has an evaluation" in props["eval_key"].error_message
    assert "Overwrite checkbox" in props["eval_key"].error_message and "=True" not in props["eval_key"].error_message
    ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[], params=dict(params, overwrite=True)))
    assert not op.resolve_input(ctx).type.properties["eval_key"].invalid


def _panel_event(ds, method, panel_state=None, current_sample=None):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, Executor

    executor = Executor()
    request = dict(dataset_name=ds.name, view=[], params=dict(panel_id="panel1", __method__=method,
                                                                panel_state=panel_state or {}))
    if current_sample:
        request["current_sample"] = current_sample
    ctx = ExecutionContext(request_params=request, executor=executor)
    foo.get_operator(PANEL_URI).execute(ctx)
    state, data, output = {}, {}, None
    for req in executor._requests:
        uri = req.operator_uri.rsplit("/", 1)[-1]
        if uri == "patch_panel_state":
            state.update(req.params["state"])
        elif uri == "patch_panel_data":
            data.update(req.params["data"])
        elif uri == "show_panel_output":
            output = req.params["output"]
    return state, data, output


def test_panel_renders_table_and_plot(evaluated):
    import fiftyone.operators as foo

    ds = evaluated["ds"]
    panel = foo.get_operator(PANEL_URI)
    assert isinstance(panel, foo.Panel) and "modal" in panel.config.surfaces
    sid = ds.last().id
    state, data, output = _panel_event(ds, "on_load", current_sample=sid)
    assert state["chosen"] == {"run_a": True, "run_b": True}
    assert [r["eval_key"] for r in state["summary_table"]] == ["run_a", "run_b"]
    rows = {r["eval_key"]: r for r in state["summary_table"]}
    assert rows["run_b"]["J&F-Mean"] == "%.3f" % ds.load_evaluation_results("run_b").summary()["J&F-Mean"]
    traces = data["jf_plot"]
    assert [t["name"] for t in traces] == ["run_a", "run_b"] and traces[0]["x"] == list(range(2, 9))
    assert "ev1.mp4" in state["plot_title"]
    props = output["schema"]["view"] if "schema" in output else output
    text = json.dumps(output)
    for needle in ("summary_table", "jf_plot", "PlotlyView", "TableView", "run_a"):
        assert needle in text, needle
    assert props is not None

    # unticking a run drops it from the table and the plot; the grid (no current sample) uses the
    # first evaluated sample of the view
    state, data, _ = _panel_event(ds, "on_toggle", panel_state=dict(chosen={"run_a": False, "run_b": True}))
    assert [r["eval_key"] for r in state["summary_table"]] == ["run_b"]
    assert [t["name"] for t in data["jf_plot"]] == ["run_b"] and data["jf_plot"][0]["x"] == list(range(2, 12))
    assert "first evaluated sample" in state["plot_title"]


def test_panel_without_evaluations_and_compare_operator(evaluated, fiftyone_db):
    import fiftyone as fo
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ds = evaluated["ds"]
    empty = fo.Dataset("t_eval_empty")
    try:
        empty.add_sample(fo.Sample(filepath=ds.first().filepath))
        state, data, output = _panel_event(empty, "on_load")
        assert state["summary_table"] == [] and data["jf_plot"] == []
        assert "No J&F evaluation yet" in json.dumps(output)
    finally:
        fo.delete_dataset("t_eval_empty")

    op = foo.get_operator(COMPARE_URI)
    ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[], params={}))
    props = op.resolve_input(ctx).type.properties
    assert props["eval_keys"].default == ["run_a", "run_b"]
    result = foo.execute_operator(COMPARE_URI, dict(dataset=ds, view=ds.view(), params=dict(eval_keys=["run_b"])))
    assert [r["eval_key"] for r in result.result["table"]] == ["run_b"]
    assert [t["name"] for t in result.result["plot"]] == ["run_b"]
    ctx = ExecutionContext(request_params=dict(dataset_name=ds.name, view=[], params=dict(eval_keys=["run_b"])))
    out = op.resolve_output(ctx).to_json()
    assert "TableView" in json.dumps(out) and "PlotlyView" in json.dumps(out)


# -- the segmentation run for FiftyOne's Model Evaluation panel -------------------------------

MODEL_EVALUATION_PANEL = "@voxel51/panels/model_evaluation_panel_builtin"


def _panel_data(ds, key):
    """What FiftyOne's own Model Evaluation panel loads for the run ``key`` (its load_evaluation event)."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, Executor

    executor = Executor()
    view_state = dict(key=key, id=str(ds._doc.evaluations[key].id))
    request = dict(dataset_name=ds.name, view=[], params=dict(panel_id="panel2", __method__="load_evaluation",
                                                                panel_state=dict(view=view_state), key=key))
    foo.get_operator(MODEL_EVALUATION_PANEL).execute(ExecutionContext(request_params=request, executor=executor))
    data = {}
    for req in executor._requests:
        if req.operator_uri.endswith("patch_panel_data"):
            data.update(req.params["data"])
    return data


def test_model_evaluation_panel_opens_a_vos_run(evaluated):
    """FiftyOne's own Model Evaluation panel loads a J&F run (no segmentation companion): no error,
    the J&F, J and F of the run as its custom metrics, objects per label as its classes."""
    from deaot_vos.evaluation import list_vos_evaluations

    ds = evaluated["ds"]
    results = ds.load_evaluation_results("run_b", cache=False)
    data = _panel_data(ds, "run_b")
    assert "evaluation_run_b_error" not in data, data.get("evaluation_run_b_error")
    shown = data["evaluation_run_b"]
    metrics = {m["label"]: m["value"] for m in shown["custom_metrics"].values()}
    summary = results.summary()
    assert metrics == pytest.approx({"J&F (DAVIS)": summary["J&F-Mean"], "J (DAVIS region IoU)": summary["J-Mean"],
                                     "F (DAVIS boundary)": summary["F-Mean"]})
    per_label = dict(support=2, precision=None, recall=None)  # J&F defines no precision or recall
    assert shown["per_class_metrics"] == {"obj1": per_label, "obj2": per_label}
    assert shown["metrics"]["J&F-Mean"] == pytest.approx(summary["J&F-Mean"])
    assert shown["info"]["config"]["method"] == "davis2017"
    # the run stays a J&F run for this plugin: listed, compared, loaded with its own results
    assert list_vos_evaluations(ds) == ["run_a", "run_b"]
    assert ds.load_evaluation_results("run_b", cache=False).metrics() == pytest.approx(results.metrics(), nan_ok=True)


def _noisy_predictions(ds, maps, field="pred_noisy"):
    """A prediction with J&F strictly between 0 and 1 (the random-weight propagations score ~0):
    the ground truth shifted by 0-2 pixels, object 2 dropped on frame 7, no prediction on frame 5
    of the first video (scored as background). Returns the label maps it renders to."""
    rendered = {}
    for position, sid in enumerate(ds.values("id")):
        frames, rendered[sid] = {}, np.zeros_like(maps[sid])
        for n in range(1, len(maps[sid]) + 1):
            m = np.roll(maps[sid][n - 1], n % 3, axis=1)
            m[(m == 2) & (n == 7)] = 0
            if position == 0 and n == 5:
                continue
            frames[n], rendered[sid][n - 1] = _gt_detections(m), m
        ds.set_values(f"frames.{field}", {sid: frames}, key_field="id")
    return rendered


def test_segmentation_run_carries_the_same_jf_for_the_model_evaluation_panel(evaluated):
    """evaluate_vos(..., segmentation_key=...) makes a `segmentation` run (a type the panel supports)
    whose custom metrics are the J&F run's official J&F, J and F, computed from its label maps."""
    from plugins.panels.model_evaluation import SUPPORTED_EVALUATION_TYPES  # FiftyOne's own panel

    from deaot_core.metrics.davis import global_summary
    from deaot_vos.evaluation import evaluate_vos
    from deaot_vos.segmentation_run import METRICS, delete_label_maps, label_map_fields, metric_uris

    from deaot_core.metrics.davis import sequence_metrics

    ds, maps = evaluated["ds"], evaluated["maps"]
    predicted = _noisy_predictions(ds, maps)
    vos = evaluate_vos(ds, "pred_noisy", "gt_sparse", eval_key="pv_vos", segmentation_key="pv_seg")
    gt_maps, pred_maps = label_map_fields("pv_seg")
    try:
        assert 0.2 < vos.summary()["J&F-Mean"] < 0.95
        info = ds.get_evaluation_info("pv_seg")
        assert info.config.type == "segmentation" and info.config.type in SUPPORTED_EVALUATION_TYPES
        assert (info.config.gt_field, info.config.pred_field) == ("frames." + gt_maps, "frames." + pred_maps)
        assert ds.get_evaluation_info("pv_vos").config.segmentation_key == "pv_seg"
        seg = ds.load_evaluation_results("pv_seg", cache=False)
        pooled = []
        for sid in ds.values("id"):
            frames = [n for n in SPARSE if n <= len(maps[sid])]
            rows = [n - 1 for n in frames]
            pooled += sequence_metrics(maps[sid][rows], predicted[sid][rows])["objects"]
            numbers, gts = ds.select(sid).values(["frames.frame_number", f"frames.{gt_maps}"])
            written = {n: g for n, g in zip(numbers[0], gts[0]) if g is not None}
            assert sorted(written) == frames  # only the annotated frames, as the J&F run scores them
            assert all(np.array_equal(written[n].mask, maps[sid][n - 1]) for n in frames)
        direct = global_summary(pooled)
        metrics = seg.metrics()
        for key in METRICS.values():
            assert metrics[key] == pytest.approx(vos.summary()[key], abs=1e-6)
            assert metrics[key] == pytest.approx(direct[key], abs=1e-6)
        assert {m["label"] for m in seg.custom_metrics.values()} == {"J&F (DAVIS)", "J (DAVIS region IoU)",
                                                                      "F (DAVIS boundary)"}
        assert not any(m["lower_is_better"] for m in seg.custom_metrics.values())
        # background is a target, so pixel metrics are not the 1.0 FiftyOne gives without it
        assert ds.mask_targets["frames." + gt_maps] == {0: "background", 1: "obj1", 2: "obj2"}
        assert seg.missing == "background" and metrics["accuracy"] < 1.0
        assert not [f for f in ds.get_frame_field_schema() if f.endswith("_deaot_tmp")]
        # FiftyOne's panel loads the run (no "unsupported" card) with our metrics
        data = _panel_data(ds, "pv_seg")
        assert "evaluation_pv_seg_error" not in data
        shown = {m["key"]: m["value"] for m in data["evaluation_pv_seg"]["custom_metrics"].values()}
        assert shown["J&F-Mean"] == pytest.approx(vos.summary()["J&F-Mean"], abs=1e-6)
        # the metrics score the label maps themselves: blank one predicted frame and recompute
        first = ds.first()
        frame = first.frames[3]
        frame[pred_maps] = type(frame[pred_maps])(mask=np.zeros_like(frame[pred_maps].mask))
        first.save()
        seg.add_custom_metrics({uri: dict(bound_th=0.008, extra_objects="error") for uri in metric_uris()})
        changed = evaluate_vos(ds, pred_maps, gt_maps).summary()
        assert changed["J&F-Mean"] < vos.summary()["J&F-Mean"] - 1e-3
        assert ds.load_evaluation_results("pv_seg", cache=False).metrics()["J&F-Mean"] == pytest.approx(
            changed["J&F-Mean"], abs=1e-6)
    finally:
        for key in ("pv_vos", "pv_seg"):
            if key in ds.list_evaluations():
                ds.delete_evaluation(key)
        delete_label_maps(ds, "pv_seg")
        ds.delete_frame_field("pred_noisy")
        assert not [path for path in ds.mask_targets if "pv_seg" in path]


def test_segmentation_run_refusals_name_the_problem_and_change_nothing(evaluated, monkeypatch, tmp_path):
    import fiftyone as fo

    from deaot_vos.evaluation import EvaluationError, evaluate_vos

    ds = evaluated["ds"]
    first, second = ds.values("id")
    name1 = ds[second].filepath.rsplit("/", 1)[-1]
    # ground truth whose object 2 has the index 255 (DAVIS void in a label map) in the second video only,
    # so the first video's label maps are staged before the refusal
    void = {}
    for sid in (first, second):
        frames = {n: f["ground_truth"].copy() for n, f in ds[sid].frames.items()}
        for dets in frames.values() if sid == second else ():
            for det in dets.detections:
                det.index = 255 if det.index == 2 else det.index
        void[sid] = frames
    ds.set_values("frames.gt_void", void, key_field="id")
    # ground truth declared but set on no frame; ground truth set but empty (no object to score)
    ds.add_frame_field("gt_unset", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    ds.set_values("frames.gt_blank", {sid: {n: fo.Detections() for n in range(1, 6)} for sid in (first, second)},
                  key_field="id")
    ds.add_sample_field("taken_accuracy", fo.FloatField)
    before = (_state(ds), dict(ds.mask_targets))
    cases = [
        (dict(segmentation_key="run_a"), EvaluationError, "evaluation 'run_a' .* is not a segmentation run"),
        (dict(segmentation_key="bad"), EvaluationError, "segmentation_key and eval_key are both 'bad'"),
        (dict(segmentation_key="taken"), EvaluationError, "field 'taken_accuracy' already exists"),
        (dict(segmentation_key="not-a-key"), ValueError, "invalid segmentation_key"),
        (dict(segmentation_key="seg", eval_key=None), ValueError, "needs an eval_key"),
        (dict(segmentation_key="seg", gt_field="gt_void", extra_objects="ignore"), EvaluationError,
         f"{name1}\\), frame 1 of field 'gt_void': object index 255 is on the reference frame"),
        (dict(segmentation_key="seg", gt_field="gt_unset"), EvaluationError, "no video .* ground truth in 'gt_unset'"),
        # the run is made, its metrics cannot be: run and label maps are removed again
        (dict(segmentation_key="seg", gt_field="gt_blank", extra_objects="ignore"), EvaluationError,
         "custom metrics .* not computed: no object was scored"),
    ]
    for kwargs, error, match in cases:
        args = {**dict(pred_field="pred_a", gt_field="ground_truth", eval_key="bad"), **kwargs}
        with pytest.raises(error, match=match):
            evaluate_vos(ds, args.pop("pred_field"), args.pop("gt_field"), **args)
        assert (_state(ds), dict(ds.mask_targets)) == before, kwargs  # no run, label map, staged field or target
    # FiftyOne does not find the plugin (hence its metrics): refused before anything is written
    monkeypatch.setattr(fo.config, "plugins_dir", str(tmp_path))
    with pytest.raises(EvaluationError, match="does not find the custom metrics.*@deaot/vos/jf_mean"):
        evaluate_vos(ds, "pred_a", "ground_truth", eval_key="bad", segmentation_key="seg")
    assert (_state(ds), dict(ds.mask_targets)) == before
    ds.delete_frame_fields(["gt_void", "gt_unset", "gt_blank"])
    ds.delete_sample_field("taken_accuracy")


def test_segmentation_run_from_cli_and_operator(evaluated, capsys):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    from deaot_vos.cli import main
    from deaot_vos.segmentation_run import delete_label_maps

    ds = evaluated["ds"]
    _noisy_predictions(ds, evaluated["maps"])
    try:
        assert main(["evaluate", "--dataset", ds.name, "--pred-field", "pred_b", "--eval-key", "cli_vos",
                     "--segmentation-key", "cli_seg", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["segmentation_metrics"]["J&F-Mean"] == pytest.approx(out["summary"]["J&F-Mean"], abs=1e-6)
        assert main(["evaluate", "--dataset", ds.name, "--pred-field", "pred_a", "--eval-key", "cli_vos2",
                     "--segmentation-key", "cli_seg"]) == 1
        assert "already has an evaluation 'cli_seg'; pass --overwrite" in capsys.readouterr().err
        # the form marks a taken segmentation key; the operator replaces the run with overwrite
        op = foo.get_operator(EVAL_URI)
        params = dict(pred_field="pred_noisy", gt_field="ground_truth", eval_key="op_vos", segmentation_key="cli_seg")
        props = op.resolve_input(ExecutionContext(request_params=dict(dataset_name=ds.name, view=[],
                                                                      params=params))).type.properties
        assert props["segmentation_key"].invalid and not props["eval_key"].invalid
        assert "Overwrite checkbox" in props["segmentation_key"].error_message
        result = foo.execute_operator(EVAL_URI, dict(dataset=ds, view=ds.view(), params=dict(params, overwrite=True)))
        assert result.result["segmentation_key"] == "cli_seg"
        info = ds.get_evaluation_info("cli_seg")
        assert info.config.type == "segmentation"
        replaced = ds.load_evaluation_results("cli_seg", cache=False).metrics()["J&F-Mean"]
        assert replaced == pytest.approx(ds.load_evaluation_results("op_vos").summary()["J&F-Mean"], abs=1e-6)
        assert replaced != pytest.approx(out["summary"]["J&F-Mean"], abs=1e-3)  # pred_noisy's, not pred_b's
        assert sorted(ds.list_evaluations()) == ["cli_seg", "cli_vos", "op_vos", "run_a", "run_b"]
    finally:
        for key in ("cli_vos", "cli_seg", "op_vos"):
            if key in ds.list_evaluations():
                ds.delete_evaluation(key)
        delete_label_maps(ds, "cli_seg")
        ds.delete_frame_field("pred_noisy")
