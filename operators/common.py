"""Form and context helpers shared by the ``@deaot/vos`` operators."""
from __future__ import annotations

from contextlib import contextmanager

import fiftyone as fo
import fiftyone.operators.types as types

from deaot_vos.fields import label_field_names, likely_keyframes_field
from deaot_vos.overwrite import NeedsOverwrite, worded


def app_words(err: BaseException) -> str:
    """``err``'s message in the App's words (a refusal for want of overwrite names the *Overwrite*
    checkbox, not ``overwrite=True``)."""
    return worded(err, "app")


@contextmanager
def app_wording():
    """Refusals for want of overwrite raised inside keep their type and attributes, and their
    message names the App's *Overwrite* checkbox."""
    try:
        yield
    except NeedsOverwrite as err:
        err.args = (err.worded("app"),)
        raise


def target_view(ctx):
    """The selected samples when there is a selection, else the current view."""
    if ctx.selected:
        return ctx.view.select(ctx.selected)
    return ctx.view


def label_fields(dataset) -> list[str]:
    """Frame fields the plugin can read as masks (:func:`deaot_vos.fields.label_field_names`)."""
    return label_field_names(dataset)


def keyframes_default(dataset, fields: list[str]) -> str | None:
    """The keyframes field the form proposes (:func:`deaot_vos.fields.likely_keyframes_field`)."""
    return likely_keyframes_field(dataset) if fields else None


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
    count = len(ctx.selected) if ctx.selected else target_view(ctx).count()
    what = (plural(count, "selected sample") if ctx.selected
            else "the only sample of the current view" if count == 1 else f"all {count} samples of the current view")
    inputs.view("target_notice", types.Notice(label=f"{verb} {what}"))
    return True


def plural(count: int, noun: str) -> str:
    """``1 selected sample``, ``3 selected samples``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")
