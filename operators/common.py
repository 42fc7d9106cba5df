"""Form and context helpers shared by the ``@deaot/vos`` operators."""
from __future__ import annotations

import fiftyone as fo
import fiftyone.operators.types as types

from deaot_vos.fields import label_field_names


def target_view(ctx):
    """The selected samples when there is a selection, else the current view."""
    if ctx.selected:
        return ctx.view.select(ctx.selected)
    return ctx.view


def label_fields(dataset) -> list[str]:
    """Frame fields the plugin can read as masks (:func:`deaot_vos.fields.label_field_names`)."""
    return label_field_names(dataset)


def dropdown(names) -> types.DropdownView:
    view = types.DropdownView()
    for name in names:
        view.add_choice(name, label=name)
    return view


def delegation_param(ctx):
    """An explicit ``delegate`` param forces the choice; else (None) the App offers both."""
    delegate = ctx.params.get("delegate", None)
    return None if delegate is None else bool(delegate)


def video_target_notice(ctx, inputs: types.Object, verb: str) -> bool:
    """Adds an error (not a video dataset: returns False) or a notice naming the samples the
    operator will ``verb`` (e.g. "Runs on 3 selected samples")."""
    dataset = ctx.dataset
    if dataset is None or dataset.media_type != fo.core.media.VIDEO:
        inputs.view("not_video", types.Error(label="This operator needs a video dataset"))
        return False
    what = (f"{len(ctx.selected)} selected samples" if ctx.selected
            else f"all {target_view(ctx).count()} samples of the current view")
    inputs.view("target_notice", types.Notice(label=f"{verb} {what}"))
    return True
