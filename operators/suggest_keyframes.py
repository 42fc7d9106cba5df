"""``@deaot/vos/suggest_keyframes``: a thin operator over :func:`deaot_vos.suggestions.suggest_keyframes`
(where to label next)."""
from __future__ import annotations

import os

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from deaot_vos.propagation import DEFAULT_OUTPUT, DelegatedCancelCheck
from deaot_vos.suggestions import SuggestionCancelled, check_suggestion, default_score_field, suggest_keyframes

from .common import delegation_param, dropdown, target_view, throttled_progress, video_target_notice


def detections_fields(dataset) -> list[str]:
    """Frame fields holding ``fo.Detections`` (what a propagation writes)."""
    schema = dataset.get_frame_field_schema() or {}
    return [name for name, field in schema.items() if getattr(field, "document_type", None) is fo.Detections]


def suggestion_lines(summary: dict) -> list[str]:
    """``<video>: frame 7 (0.412), frame 3 (0.388)`` per video of a summary."""
    lines = []
    for row in summary["samples"]:
        top = ", ".join(f"frame {t['frame']} ({t['score']:.3f})" for t in row["top"]) or "none"
        lines.append(f"{os.path.basename(row['filepath'])}: {top}")
    return lines


def _form(ctx, inputs: types.Object) -> None:
    fields = detections_fields(ctx.dataset)
    if not fields:
        inputs.view("no_output", types.Error(label="No frame field with Detections: propagate masks first"))
        return
    default = DEFAULT_OUTPUT if DEFAULT_OUTPUT in fields else fields[0]
    output = inputs.enum("output_field", fields, required=True, default=default, view=dropdown(fields),
                         label="Propagated field", description="Frame field written by DeAOT: propagate masks")
    output_field = ctx.params.get("output_field") or default
    score = inputs.str("score_field", required=False, default=default_score_field(output_field), label="Score field",
                       description="Frame-level float field for the scores (higher = more likely wrong); an "
                                   "existing float field is replaced")
    inputs.int("top", default=5, min=1, label="Frames per video", description="How many frames to suggest per video")
    inputs.int("spacing", default=3, min=1, label="Spacing",
               description="Suggested frames are at least this many frames apart")
    inputs.bool("scene_cuts", default=True, label="Scene cuts",
                description="Decode each video once to score scene cuts (colour histogram changes)")
    try:
        check_suggestion(target_view(ctx), output_field, ctx.params.get("score_field") or None)
    except ValueError as err:
        bad = score if "score_field" in str(err) else output
        bad.invalid, bad.error_message = True, str(err)


def _int(params: dict, name: str, default: int) -> int:
    """An integer param; its default when unset (0 stays 0: the function refuses it)."""
    value = params.get(name)
    return default if value is None else int(value)


class SuggestKeyframes(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="suggest_keyframes",
            label="DeAOT: suggest frames to label next",
            description="Score each frame of a propagated field by how likely its masks are wrong; save a view "
                        "of the top frames per video",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=False,
        )

    def resolve_delegation(self, ctx):
        return delegation_param(ctx)

    def resolve_input(self, ctx):
        inputs = types.Object()
        form = types.View(label="Where to label next")
        if video_target_notice(ctx, inputs, "Scores"):
            _form(ctx, inputs)
        return types.Property(inputs, view=form)

    def execute(self, ctx):
        params = ctx.params
        marked_failed = DelegatedCancelCheck(ctx.request_params.get("run_doc") if ctx.delegated else None)
        progress = throttled_progress(ctx, cancelled=marked_failed)
        try:
            summary = suggest_keyframes(target_view(ctx), params.get("output_field"),
                                        score_field=params.get("score_field") or None, top=_int(params, "top", 5),
                                        spacing=_int(params, "spacing", 3),
                                        scene_cuts=bool(params.get("scene_cuts", True)), progress=progress)
        except SuggestionCancelled as err:
            if marked_failed():  # an error keeps the operation failed (FiftyOne 1.6 marks a return completed)
                raise SuggestionCancelled("the delegated operation was marked failed: cancelled; nothing was "
                                          "written") from err
            return dict(status="cancelled", message="cancelled; nothing was written")
        ctx.trigger("reload_dataset")
        return dict(status="ok", suggestions=suggestion_lines(summary), **summary)

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("status", label="Status")
        if (ctx.results or {}).get("status") == "cancelled":
            outputs.str("message", label="Message")
        else:
            outputs.str("score_field", label="Score field")
            outputs.str("view", label="Saved view of the top frames")
            outputs.list("suggestions", types.String(), label="Frames to label next (score)")
        return types.Property(outputs, view=types.View(label="Where to label next"))
