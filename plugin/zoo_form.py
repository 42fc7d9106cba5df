"""The App form of the ``deaot/*`` zoo models' load arguments, for voxel51's "Apply zoo model"
operator (``@voxel51/zoo/apply_zoo_model``).

That operator shows :func:`resolve_input`'s property as its ``remote_params``, hands the filled
dict to :func:`parse_parameters` (in place), then calls ``foz.load_zoo_model(name, **params)``
and ``apply_model(model, label_field=...)`` without a prompt field: the keyframes field must
therefore arrive as ``load_model``'s ``prompt_field``, which the model keeps through
``apply_model`` (see :class:`deaot_vos.zoo_model.DeAOTVideoModel`).
"""
from __future__ import annotations

import dataclasses

import fiftyone.operators.types as types

from .fields import keyframe_field_names, likely_keyframes_field
from .propagation.options import PropagationOptions
from .weights import PRECISIONS

KEYFRAMES = "keyframes_field"
DEVICES = ("auto", "cuda", "mps", "cpu")
#: (knob, label, description) of the number knobs the form offers (blank: the model's default)
NUMBER_KNOBS = (
    ("max_long_edge", "Max long edge", "Frames whose long edge exceeds this many pixels are downscaled for the "
                                       "network (masks come back at full size)"),
    ("max_short_edge", "Max short edge", "Downscale frames whose short edge exceeds this (blank: no limit)"),
    ("long_term_gap", "Long-term memory gap", "Frames between long-term memory entries (blank: the model's "
                                              "default)"),
)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PropagationOptions)}


def _choices(names) -> types.DropdownView:
    view = types.DropdownView()
    for name in names:
        view.add_choice(name, label=name)
    return view


def resolve_input(model_name: str, ctx) -> types.Property:
    """The form: the keyframes field (a frame field with Detections (instance masks),
    Segmentation or Polylines; required, the likeliest proposed), device, precision,
    bidirectional and :data:`NUMBER_KNOBS`. Without such a field the form says so and is invalid."""
    inputs = types.Object()
    fields = keyframe_field_names(ctx.dataset) if ctx.dataset is not None else []
    if fields:
        inputs.enum(KEYFRAMES, fields, required=True, default=likely_keyframes_field(ctx.dataset), view=_choices(fields),
                    label="Keyframes field", description="Frame field holding the keyframes (Detections with "
                    f"instance masks or boxes, Segmentation, Polylines or Keypoints) that {model_name} propagates to "
                    "every frame")
    else:
        inputs.view("no_keyframes", types.Error(label="No frame field with Detections (instance masks), "
                                                      "Segmentation or Polylines to use as keyframes"))
    inputs.str("prompt_model", default=None, label="Prompt model (boxes, points)",
               description="A FiftyOne zoo model that turns box and point keyframes into masks (e.g. "
               "segment-anything-2-hiera-tiny-image-torch); blank: boxes offline, points refused")
    inputs.enum("device", list(DEVICES), default="auto", view=_choices(DEVICES), label="Device",
                description="auto: CUDA, then Apple's mps, then the CPU")
    inputs.enum("precision", list(PRECISIONS), default=_DEFAULTS["precision"], view=_choices(PRECISIONS),
                label="Precision", description="fp16 / bf16 run faster on GPUs; fp32 gives the official numerics")
    inputs.bool("bidirectional", default=_DEFAULTS["bidirectional"], label="Bidirectional",
                description="Between two keyframes, blend a forward and a backward pass")
    for name, label, description in NUMBER_KNOBS:
        inputs.int(name, default=_DEFAULTS[name], label=label, description=description)
    prop = types.Property(inputs, view=types.View(label=f"{model_name} settings"))
    prop.invalid = not fields
    return prop


def parse_parameters(model_name: str, ctx, params: dict) -> None:
    """The form's values in ``params`` -> ``load_model`` keyword arguments, in place: the
    keyframes field becomes ``prompt_field="frames.<field>"``; blank values are dropped (the
    model's defaults apply); numbers become ints. ValueError when no keyframes field was chosen."""
    field = str(params.pop(KEYFRAMES, None) or "").strip()
    if not field:
        raise ValueError(f"{model_name}: choose the keyframes field (a frame field with the keyframe masks)")
    params["prompt_field"] = field if field.startswith("frames.") else "frames." + field
    for name in [key for key, value in params.items() if value is None or value == ""]:
        del params[name]
    for name, _, _ in NUMBER_KNOBS:
        if name in params:
            params[name] = int(params[name])
