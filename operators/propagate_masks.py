"""``@deaot/vos/propagate_masks``: a thin operator over :func:`deaot_vos.propagate`.

The form's inputs are derived from :class:`deaot_vos.propagation.PropagationOptions`'s declaration
(:mod:`.option_form`) and read back by its ``from_params``; a queued job's tasks carry
``PropagationOptions.to_params()`` plus the job id (``JOB_PARAM``)."""
from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from deaot_vos.propagation import (JOB_PARAM, DelegatedCancelCheck, OutputExistsError, PropagationCancelled,
                                   PropagationOptions, cancel_on_signals, check_fields, propagate, queue_propagation,
                                   run_task, split_size)
from deaot_vos.fields import keyframe_field_names
from deaot_vos.weights import DEFAULT_MODEL, emulated_precisions, model_names, weights_notice

from .common import (app_words, app_wording, delegation_param, dropdown, keyframes_default,
                     target_view, throttled_progress, video_target_notice)
from .option_form import Widget, checked_options, description, option_input, option_inputs


def _device_choices() -> list[str]:
    choices = ["auto", "cpu"]
    try:
        import torch

        if torch.cuda.is_available():
            choices.append("cuda")
            choices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    except Exception:  # pragma: no cover - torch is a requirement
        pass
    return choices


# -- the form: the settings' inputs are derived from PropagationOptions (option_form); the
# widgets and hooks below add what only a dataset or this machine knows ---------------------------

def _keyframes_widget(fields: list[str], default) -> Widget:
    """The keyframes field as a dropdown of the dataset's label fields (an error when it has none)."""
    def widget(inputs: types.Object, spec) -> types.Property:
        if not fields:
            inputs.view("no_keyframes", types.Error(
                label="No frame field with Detections (masks or boxes), Segmentation, Polylines or Keypoints to use as "
                      "keyframes"))
        choices = dropdown(fields)
        return inputs.enum(spec.name, choices.values(), required=True, label=spec.info.label,
                           description=description(spec), view=choices, default=default)
    return widget


def _dropdown_widget(names) -> Widget:
    """A dropdown of ``names`` with the setting's default."""
    def widget(inputs: types.Object, spec) -> types.Property:
        choices = dropdown(list(names))
        return inputs.enum(spec.name, choices.values(), default=spec.default, label=spec.info.label,
                           description=description(spec), view=choices)
    return widget


_FIELD_PARAMS = ("keyframes_field", "output_field", "write_segmentation", "write_polylines", "overwrite",
                 "incremental")


def _check_fields_inline(ctx, keyframes_default):
    """A hook: the output field checks (exists, type, same as the keyframes) shown on the output
    or the segmentation field's input."""
    def hook(props: dict, options) -> None:
        output, seg = props["output_field"], props["write_segmentation"]
        if options is None:  # another setting is bad: check the fields all the same
            options, _ = checked_options({name: ctx.params.get(name) for name in _FIELD_PARAMS})
        keyframes_field = (options.keyframes_field or keyframes_default) if options is not None else None
        if not keyframes_field:
            return  # nothing to check against, or a bad name already shown
        try:
            check_fields(target_view(ctx), keyframes_field, options.output_field, options.write_segmentation,
                         options.overwrite or options.incremental, options.write_polylines)
        except OutputExistsError as err:
            bad = output if err.field == options.output_field else seg
            bad.invalid = True
            bad.error_message = app_words(err)
        except ValueError as err:
            output.invalid = True
            output.error_message = str(err)
    return hook


def _weights_notice(ctx, inputs: types.Object):
    """A hook: before the run, which weights it would use (a demo checkpoint: a warning)."""
    def hook(props: dict, options) -> None:
        try:
            notice = weights_notice(ctx.params.get("model") or DEFAULT_MODEL, ctx.params.get("checkpoint") or None)
        except (ValueError, RuntimeError) as err:  # a missing checkpoint file, no weights at all
            props["checkpoint"].invalid = True
            props["checkpoint"].error_message = str(err)
            notice = None
        if notice:
            inputs.view("weights_notice", types.Warning(label="Demo weights", description=notice))
    return hook


def _precision_help(device) -> str:
    text = ("fp32: the official numerics. bf16: about 2x faster on CPUs with AMX "
            "(BENCHMARKS.md), about 99.9% of the fp32 labels")
    try:
        emulated = emulated_precisions(device or "auto")
    except ValueError:  # an unknown device: its own field says so
        emulated = []
    if emulated:
        text += (f". This machine's CPU has no native {' / '.join(emulated)} kernels: "
                 f"emulated, about 10x slower than fp32")
    return text


def _settings_inputs(ctx, inputs: types.Object) -> None:
    """Every setting the form shows (:func:`.option_form.option_inputs`), with the dataset's
    label fields, the models, this machine's devices and the inline field and weights checks."""
    fields = keyframe_field_names(ctx.dataset)
    kf_default = keyframes_default(ctx.dataset, fields)
    widgets = dict(keyframes_field=_keyframes_widget(fields, kf_default), model=_dropdown_widget(model_names()),
                   device=_dropdown_widget(_device_choices()),
                   precision=lambda into, spec: option_input(into, spec, _precision_help(ctx.params.get("device"))))
    after = dict(write_segmentation=_check_fields_inline(ctx, kf_default), checkpoint=_weights_notice(ctx, inputs))
    option_inputs(ctx, inputs, widgets, after)


def _run_inputs(inputs: types.Object) -> None:
    """The split into queued tasks (a setting of the operator, not of the propagation)."""
    inputs.int("videos_per_task", required=False, min=0, label="Videos per task (delegated)",
               description="Delegated over several videos, queue one operation per this many videos so that "
                           "several `fiftyone delegated launch` workers run them in parallel (default 1; "
                           "0: one operation for all)")


def _result(summary: dict) -> dict:
    """The operator's output for a propagation summary."""
    samples = summary["samples"]
    return dict(
        status="ok" if not summary["failed"] else "partial",
        failed=len(summary["failed"]),
        failures=[f"{f['filepath']}: {f['error']}" for f in summary["failed"]],
        model=summary["model"],
        weights=summary["weights"],
        output_field=summary["output_field"],
        samples=len(samples),
        propagated=sum(1 for s in samples if s.get("status") == "ok"),
        frames=sum(s.get("frames_written", 0) for s in samples),
        seconds=summary["seconds"],
        summary=samples,
        worker=summary.get("worker"),
    )


class PropagateMasks(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="propagate_masks",
            label="DeAOT: propagate masks",
            description="Propagate keyframe instance masks to every frame of the videos with DeAOT/AOT",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=False,
        )

    def resolve_delegation(self, ctx):
        return delegation_param(ctx)

    def resolve_input(self, ctx):
        inputs = types.Object()
        form = types.View(label="Propagate masks with DeAOT")
        if video_target_notice(ctx, inputs, "Runs on"):
            _settings_inputs(ctx, inputs)
            _run_inputs(inputs)
        return types.Property(inputs, view=form)

    def execute(self, ctx):
        with app_wording():  # a refusal names the Overwrite checkbox
            return self._execute(ctx)

    def _execute(self, ctx):
        options = PropagationOptions.from_params(ctx.params)
        run_doc = ctx.request_params.get("run_doc") if ctx.delegated else None
        job_id = ctx.params.get(JOB_PARAM)
        if not job_id:
            target = target_view(ctx)
            size = split_size(target, ctx.params.get("videos_per_task"), ctx.delegated)
            if size:  # this operation only queues the tasks; workers run them
                queued = queue_propagation(target, options=options, videos_per_task=size, parent_op=run_doc,
                                           delegation_target=ctx.request_params.get("delegation_target"))
                return dict(status="queued", samples=queued["samples"], operations=queued["operations"],
                            operations_queued=len(queued["operations"]), job=queued["job"],
                            output_field=options.output_field)
        # cancel paths: the delegated operation marked failed (polled), or SIGTERM (FiftyOne's
        # monitor terminating the worker): both stop at the next frame with nothing written
        marked_failed = DelegatedCancelCheck(run_doc)
        with cancel_on_signals(resend=True) as terminated:
            progress = throttled_progress(ctx, cancelled=lambda: terminated.is_set() or marked_failed())
            try:
                if job_id:  # one task of a queued job
                    summary = run_task(ctx.view, job_id, list(ctx.params.get("sample_ids") or []), op_id=run_doc,
                                       progress=progress, options=options)
                else:
                    summary = propagate(target_view(ctx), options=options, progress=progress)
            except PropagationCancelled as err:
                if marked_failed():  # an error keeps the operation failed (FiftyOne 1.6 marks a return completed)
                    raise PropagationCancelled("the delegated operation was marked failed: cancelled; no field was "
                                               "changed") from err
                return dict(status="cancelled", message="cancelled; no field was changed")
        ctx.trigger("reload_dataset")
        return _result(summary)

    def resolve_output(self, ctx):
        return output_property(ctx.results or {})


def output_property(results: dict) -> types.Property:
    """The result dialog for ``results`` (what :meth:`PropagateMasks.execute` returned): only the
    rows that run has (queued operations only when queued, failures only when some failed)."""
    outputs = types.Object()
    outputs.str("status", label="Status")
    status = results.get("status")
    if status == "cancelled":
        outputs.str("message", label="Message")
    elif status == "queued":
        outputs.int("operations_queued", label="Operations queued (one per task)")
        outputs.int("samples", label="Samples")
        outputs.str("output_field", label="Output field")
    else:
        outputs.str("model", label="Model")
        outputs.str("weights", label="Weights")
        outputs.str("output_field", label="Output field")
        outputs.int("samples", label="Samples")
        outputs.int("propagated", label="Samples propagated")
        if results.get("failed"):
            outputs.int("failed", label="Samples failed (output unchanged)")
            outputs.list("failures", types.String(), label="Failures")
        outputs.int("frames", label="Frames written")
        outputs.float("seconds", label="Seconds")
    return types.Property(outputs, view=types.View(label="DeAOT propagation"))
