"""``@deaot/vos/propagate_masks``: a thin operator over :func:`deaot_vos.propagate`.

The form's params are :meth:`deaot_vos.propagation.PropagationOptions.from_params`'s; a queued
job's tasks carry ``PropagationOptions.to_params()`` plus the job id (``JOB_PARAM``)."""
from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from deaot_vos.propagation import (DEFAULT_OUTPUT, JOB_PARAM, DelegatedCancelCheck, OutputExistsError,
                                   PropagationCancelled, PropagationOptions, cancel_on_signals, check_fields,
                                   check_test_scales, propagate, queue_propagation, run_task, split_size)
from deaot_vos.weights import DEFAULT_MODEL, PRECISIONS, emulated_precisions, model_names, weights_notice

from .common import (app_words, app_wording, delegation_param, dropdown, keyframes_default, label_fields,
                     target_view, throttled_progress, video_target_notice)


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


def params_to_kwargs(params: dict) -> dict:
    """The :func:`deaot_vos.propagate` keyword arguments for the operator's ``params``
    (:meth:`PropagationOptions.from_params`, validated)."""
    return vars(PropagationOptions.from_params(params)).copy()


# -- the form ------------------------------------------------------------------------------------

def _fields_inputs(ctx, inputs: types.Object) -> None:
    """Keyframes, output and segmentation fields, overwrite; the field checks shown inline."""
    fields = label_fields(ctx.dataset)
    if not fields:
        inputs.view("no_keyframes", types.Error(
            label="No frame field with Detections (instance masks), Segmentation or Polylines to use as keyframes"))
    kf_choices = dropdown(fields)
    kf_default = keyframes_default(ctx.dataset, fields)
    inputs.enum("keyframes_field", kf_choices.values(), required=True, label="Keyframes field",
                description="Frame field holding the keyframe masks (Detections with instance masks, "
                            "Segmentation, or filled Polylines)", view=kf_choices, default=kf_default)
    marks = types.RadioGroup()
    for name, label in (("auto", "auto (when labels are marked)"), ("on", "only marked labels"), ("off", "every label")):
        marks.add_choice(name, label=label)
    inputs.enum("keyframe_marks", marks.values(), default="auto", label="Keyframes in a track field", view=marks,
                description="A track field (CVAT, the App) labels every frame and marks the annotated ones with "
                            "keyframe=True: only those are keyframes (auto: when any label is marked)")
    output = inputs.str("output_field", required=True, default=DEFAULT_OUTPUT, label="Output field",
                        description="New frame field for the propagated Detections (instance masks)")
    inputs.bool("overwrite", default=False, label="Overwrite",
                description="Replace the output field(s) if they already exist")
    inputs.bool("incremental", default=False, label="Incremental (update the output)",
                description="When the output exists, recompute only the frames whose keyframes, model or "
                            "options changed and keep the others (the output is updated in place)")
    inputs.bool("bidirectional", default=False, label="Bidirectional between keyframes",
                description="Frames between two keyframes fuse the forward pass with a backward pass from the "
                            "later keyframe: +0.05 J&F between keyframes on held-out clips, about 2x the work between "
                            "keyframes (README)")
    seg = inputs.str("write_segmentation", required=False, label="Segmentation field (optional)",
                     description="Also write a Segmentation label map (pixel value = object index) here")
    keyframes_field = ctx.params.get("keyframes_field") or kf_default
    output_field = ctx.params.get("output_field") or DEFAULT_OUTPUT
    if not keyframes_field:
        return
    try:
        check_fields(target_view(ctx), keyframes_field, output_field, ctx.params.get("write_segmentation") or None,
                     bool(ctx.params.get("overwrite", False)) or bool(ctx.params.get("incremental", False)))
    except OutputExistsError as err:
        bad = output if err.field == output_field.replace("frames.", "", 1) else seg
        bad.invalid = True
        bad.error_message = app_words(err)
    except ValueError as err:
        output.invalid = True
        output.error_message = str(err)


def _model_inputs(ctx, inputs: types.Object) -> None:
    """Model, checkpoint (and, before the run, which weights it would use) and device."""
    model_choices = dropdown(model_names())
    inputs.enum("model", model_choices.values(), default=DEFAULT_MODEL, label="Model", view=model_choices,
                description="Official AOT/DeAOT variant")
    checkpoint = inputs.str("checkpoint", required=False, label="Checkpoint (optional)",
                            description="Path or URL of the weights; default: the official file in the cache dir "
                                        "(~/.cache/deaot or $DEAOT_CACHE), else the shipped demo checkpoint")
    try:
        notice = weights_notice(ctx.params.get("model") or DEFAULT_MODEL, ctx.params.get("checkpoint") or None)
    except (ValueError, RuntimeError) as err:  # a missing checkpoint file, no weights at all
        checkpoint.invalid = True
        checkpoint.error_message = str(err)
        notice = None
    if notice:
        inputs.view("weights_notice", types.Warning(label="Demo weights", description=notice))
    device_choices = dropdown(_device_choices())
    inputs.enum("device", device_choices.values(), default="auto", label="Device", view=device_choices)


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


def _engine_inputs(ctx, inputs: types.Object) -> None:
    """The tracker knobs: memory, resolution, precision, compile, test-time augmentation."""
    inputs.int("long_term_gap", required=False, min=1, label="Long-term memory gap",
               description="Frames between long-term memory entries (default: the model's)")
    inputs.int("max_long_term_frames", required=False, min=1, label="Max long-term frames",
               description="Cap on long-term memory entries (default: unbounded)")
    inputs.int("max_long_edge", required=False, min=16, default=1040, label="Max long edge",
               description="Frames are resized so their long edge is at most this many pixels")
    precision_choices = types.RadioGroup()
    for name in PRECISIONS:
        precision_choices.add_choice(name, label=name)
    inputs.enum("precision", precision_choices.values(), default="fp32", label="Precision",
                description=_precision_help(ctx.params.get("device")), view=precision_choices)
    inputs.bool("compile_model", default=False, label="Compile the network (torch.compile)",
                description="Slower start (about a minute to compile), faster frames: for long videos")
    scales = inputs.str("test_scales", required=False, default="1.0", label="Test-time scales",
                        description="Comma-separated, as the official --ms (e.g. 0.8,1.0,1.2): one pass per "
                                    "scale, probabilities averaged")
    try:
        check_test_scales(ctx.params.get("test_scales"))
    except ValueError as err:
        scales.invalid = True
        scales.error_message = str(err)
    inputs.bool("test_flip", default=False, label="Test-time flip",
                description="Also run the mirrored video and average (as the official --flip; 2x the work)")
    inputs.int("threads", required=False, min=1, label="CPU threads",
               description="Threads for the network on the CPU (default: automatic, the cores other processes "
                           "leave free, measured as it runs)")


def _run_inputs(inputs: types.Object) -> None:
    """Failure handling and the split into queued tasks."""
    inputs.bool("skip_failures", default=False, label="Skip failing videos",
                description="A video that fails keeps its previous output and is listed in the result; "
                            "the others are written (default: any failure writes nothing)")
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
            _fields_inputs(ctx, inputs)
            _model_inputs(ctx, inputs)
            _engine_inputs(ctx, inputs)
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
