"""``@deaot/vos/evaluate_vos``: a thin operator over :func:`plugin.evaluation.evaluate_vos`."""
from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from plugin.evaluation import EXTRA_OBJECTS, EvaluationCancelled, check_evaluation, evaluate_vos
from plugin.labels import KEYFRAME_TYPES
from plugin.metrics import SUMMARY_KEYS


def _target_view(ctx):
    if ctx.selected:
        return ctx.view.select(ctx.selected)
    return ctx.view


def label_fields(dataset) -> list[str]:
    """Frame fields the evaluation can read (Detections with masks, Segmentation, Polylines)."""
    schema = dataset.get_frame_field_schema() or {}
    return [name for name, field in schema.items() if getattr(field, "document_type", None) in KEYFRAME_TYPES]


def _dropdown(names):
    view = types.DropdownView()
    for name in names:
        view.add_choice(name, label=name)
    return view


class EvaluateVOS(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="evaluate_vos",
            label="DeAOT: evaluate J&F (DAVIS)",
            description="DAVIS 2017 semi-supervised J&F of a prediction field against a ground-truth field, "
                        "stored as an evaluation run",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=False,
        )

    def resolve_delegation(self, ctx):
        delegate = ctx.params.get("delegate", None)
        return None if delegate is None else bool(delegate)

    def resolve_input(self, ctx):
        inputs = types.Object()
        form = types.View(label="Evaluate J&F (DAVIS 2017 semi-supervised)")
        dataset = ctx.dataset
        if dataset is None or dataset.media_type != fo.core.media.VIDEO:
            inputs.view("not_video", types.Error(label="This operator needs a video dataset"))
            return types.Property(inputs, view=form)
        target = _target_view(ctx)
        what = f"{len(ctx.selected)} selected samples" if ctx.selected else f"all {target.count()} samples of the current view"
        inputs.view("target_notice", types.Notice(label=f"Evaluates {what}"))
        fields = label_fields(dataset)
        if len(fields) < 2:
            inputs.view("no_fields", types.Error(
                label="Needs two frame fields with Detections (instance masks), Segmentation or Polylines"))
        gt_default = "ground_truth" if "ground_truth" in fields else (fields[0] if fields else None)
        pred_default = next((f for f in fields if f != gt_default), None)
        inputs.enum("pred_field", fields, required=True, label="Predictions", view=_dropdown(fields),
                    default=pred_default, description="Frame field with the predicted masks")
        inputs.enum("gt_field", fields, required=True, label="Ground truth", view=_dropdown(fields),
                    default=gt_default, description="Frame field with the ground-truth masks; its first annotated "
                                                    "frame is the reference")
        key = inputs.str("eval_key", required=True, label="Evaluation key",
                         description="Name of the evaluation run; creates the sample fields <key>_JF, <key>_J, "
                                     "<key>_F and the frame fields <key>_J, <key>_F")
        inputs.bool("overwrite", default=False, label="Overwrite", description="Replace an evaluation with this key")
        extra = types.RadioGroup()
        extra.add_choice("error", label="error", description="official: a predicted object absent from the reference "
                                                             "frame aborts the evaluation")
        extra.add_choice("ignore", label="ignore", description="score only the reference frame's objects")
        inputs.enum("extra_objects", list(EXTRA_OBJECTS), default="error", label="Extra predicted objects", view=extra)
        params = ctx.params
        pred, gt = params.get("pred_field") or pred_default, params.get("gt_field") or gt_default
        eval_key = params.get("eval_key")
        if pred and gt and eval_key:
            try:
                check_evaluation(target, pred, gt, eval_key, bool(params.get("overwrite", False)),
                                 params.get("extra_objects") or "error")
            except ValueError as err:
                key.invalid = True
                key.error_message = str(err)
        return types.Property(inputs, view=form)

    def execute(self, ctx):
        params = ctx.params

        def progress(fraction, label):
            ctx.set_progress(progress=fraction, label=label)

        try:
            results = evaluate_vos(_target_view(ctx), params.get("pred_field"), params.get("gt_field"),
                                   eval_key=params.get("eval_key"), overwrite=bool(params.get("overwrite", False)),
                                   extra_objects=params.get("extra_objects") or "error", progress=progress)
        except EvaluationCancelled:
            return dict(status="cancelled", message="cancelled; nothing was written")
        ctx.trigger("reload_dataset")
        summary = results.summary()
        return dict(status="ok", eval_key=results.key, sequences=len(results.sequences), skipped=len(results.skipped),
                    objects=len(results.objects),
                    **{k.replace("&", "").replace("-", "_"): (None if v != v else round(v, 6)) for k, v in summary.items()},
                    summary=summary)

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("status", label="Status")
        outputs.str("eval_key", label="Evaluation key")
        outputs.int("sequences", label="Videos evaluated")
        outputs.int("skipped", label="Videos skipped (no ground truth)")
        outputs.int("objects", label="Objects")
        for key in SUMMARY_KEYS:
            outputs.float(key.replace("&", "").replace("-", "_"), label=key)
        return types.Property(outputs, view=types.View(label="J&F evaluation"))
