"""``@deaot/vos/evaluate_vos``: a thin operator over :func:`deaot_vos.evaluation.evaluate_vos`."""
from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from deaot_vos.evaluation import EXTRA_OBJECTS, EvaluationCancelled, check_evaluation, evaluate_vos
from deaot_vos.segmentation_run import check_segmentation_key
from deaot_core.metrics.davis import SUMMARY_KEYS

from .common import (app_words, app_wording, delegation_param, dropdown, label_fields, target_view, throttled_progress,
                     video_target_notice)


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
        return delegation_param(ctx)

    def resolve_input(self, ctx):
        inputs = types.Object()
        form = types.View(label="Evaluate J&F (DAVIS 2017 semi-supervised)")
        dataset = ctx.dataset
        if not video_target_notice(ctx, inputs, "Evaluates"):
            return types.Property(inputs, view=form)
        fields = label_fields(dataset)
        if len(fields) < 2:
            inputs.view("no_fields", types.Error(
                label="Needs two frame fields with Detections (instance masks), Segmentation or Polylines"))
        gt_default = "ground_truth" if "ground_truth" in fields else (fields[0] if fields else None)
        pred_default = next((f for f in fields if f != gt_default), None)
        inputs.enum("pred_field", fields, required=True, label="Predictions", view=dropdown(fields),
                    default=pred_default, description="Frame field with the predicted masks")
        inputs.enum("gt_field", fields, required=True, label="Ground truth", view=dropdown(fields),
                    default=gt_default, description="Frame field with the ground-truth masks; its first annotated "
                                                    "frame is the reference")
        key = inputs.str("eval_key", required=True, label="Evaluation key",
                         description="Name of the evaluation run; creates the sample fields <key>_JF, <key>_J, "
                                     "<key>_F and the frame fields <key>_J, <key>_F")
        seg_key = inputs.str("segmentation_key", required=False, label="Model Evaluation panel key (optional)",
                             description="Also store a segmentation run under this key, with J&F, J and F as its "
                                         "metrics, for FiftyOne's Model Evaluation panel; writes the frame fields "
                                         "<key>_gt_labelmap and <key>_pred_labelmap")
        inputs.bool("overwrite", default=False, label="Overwrite", description="Replace evaluations with these keys")
        extra = types.RadioGroup()
        extra.add_choice("error", label="error", description="official: a predicted object absent from the reference "
                                                             "frame aborts the evaluation")
        extra.add_choice("ignore", label="ignore", description="score only the reference frame's objects")
        inputs.enum("extra_objects", list(EXTRA_OBJECTS), default="error", label="Extra predicted objects", view=extra)
        params = ctx.params
        pred, gt = params.get("pred_field") or pred_default, params.get("gt_field") or gt_default
        eval_key = params.get("eval_key")
        if pred and gt and eval_key:
            _check_keys(target_view(ctx), params, pred, gt, key, seg_key)
        return types.Property(inputs, view=form)

    def execute(self, ctx):
        params = ctx.params
        progress = throttled_progress(ctx)
        try:
            with app_wording():  # a refusal names the Overwrite checkbox
                results = evaluate_vos(target_view(ctx), params.get("pred_field"), params.get("gt_field"),
                                       eval_key=params.get("eval_key"), overwrite=bool(params.get("overwrite", False)),
                                       extra_objects=params.get("extra_objects") or "error", progress=progress,
                                       segmentation_key=params.get("segmentation_key") or None)
        except EvaluationCancelled:
            return dict(status="cancelled", message="cancelled; nothing was written")
        ctx.trigger("reload_dataset")
        summary = results.summary()
        return dict(status="ok", eval_key=results.key, segmentation_key=results.config.segmentation_key,
                    sequences=len(results.sequences), skipped=len(results.skipped),
                    objects=len(results.objects),
                    **{k.replace("&", "").replace("-", "_"): (None if v != v else round(v, 6)) for k, v in summary.items()},
                    summary=summary)

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("status", label="Status")
        outputs.str("eval_key", label="Evaluation key")
        outputs.str("segmentation_key", label="Segmentation run (Model Evaluation panel)")
        outputs.int("sequences", label="Videos evaluated")
        outputs.int("skipped", label="Videos skipped (no ground truth)")
        outputs.int("objects", label="Objects")
        for key in SUMMARY_KEYS:
            outputs.float(key.replace("&", "").replace("-", "_"), label=key)
        return types.Property(outputs, view=types.View(label="J&F evaluation"))


def _check_keys(view, params, pred, gt, key_property, seg_key_property) -> None:
    """Mark the key (J&F run) or the segmentation key that would be refused, with the reason."""
    overwrite = bool(params.get("overwrite", False))
    try:
        fields = check_evaluation(view, pred, gt, params["eval_key"], overwrite, params.get("extra_objects") or "error")
    except ValueError as err:
        key_property.invalid, key_property.error_message = True, app_words(err)
        return
    if params.get("segmentation_key"):
        try:
            check_segmentation_key(view, params["segmentation_key"], params["eval_key"], fields, overwrite)
        except ValueError as err:
            seg_key_property.invalid, seg_key_property.error_message = True, app_words(err)
