"""``@deaot/vos/evaluate_vos``: a thin operator over :func:`deaot_vos.evaluation.evaluate_vos`."""
from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from deaot_vos.evaluation import EXTRA_OBJECTS, EvaluationCancelled, check_evaluation, evaluate_vos
from deaot_core.metrics.davis import SUMMARY_KEYS

from .common import app_words, app_wording, delegation_param, dropdown, label_fields, target_view, video_target_notice


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
                check_evaluation(target_view(ctx), pred, gt, eval_key, bool(params.get("overwrite", False)),
                                 params.get("extra_objects") or "error")
            except ValueError as err:
                key.invalid = True
                key.error_message = app_words(err)
        return types.Property(inputs, view=form)

    def execute(self, ctx):
        params = ctx.params

        def progress(fraction, label):
            ctx.set_progress(progress=fraction, label=label)

        try:
            with app_wording():  # a refusal names the Overwrite checkbox
                results = evaluate_vos(target_view(ctx), params.get("pred_field"), params.get("gt_field"),
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
