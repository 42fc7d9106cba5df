"""Form and context helpers shared by the ``@deaot/vos`` operators."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

import fiftyone as fo
import fiftyone.core.utils as fou
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


#: how the notice names each of FiftyOne's view targets (``fiftyone.operators.constants.ViewTarget``)
_TARGET_WORDS = {"DATASET": "the dataset", "BASE_VIEW": "the base view", "DATASET_VIEW": "the dataset",
                 "CURRENT_VIEW": "the current view"}
#: the target this plugin adds to FiftyOne's selector while a sample is open in the App's modal
OPEN_SAMPLE = "OPEN_SAMPLE"


def open_sample(ctx) -> str | None:
    """The id of the sample open in the App's modal (``ctx.current_sample``), else None."""
    return ctx.request_params.get("current_sample") or None


def target_choice(ctx) -> str:
    """The form's ``view_target`` choice (FiftyOne's target selector); a call that makes none
    (``execute_operator`` from Python) gets the selector's default, its most selective choice:
    the sample open in the App's modal if any (:data:`OPEN_SAMPLE`), else the selected samples if
    any, else the current view if it is not the whole dataset, else the dataset."""
    # newer FiftyOne versions move the choice from the params to the request
    chosen = ctx.params.get("view_target") or ctx.request_params.get("view_target")
    if chosen == OPEN_SAMPLE and not open_sample(ctx):
        chosen = None  # no sample open any more: the selector's own default
    return chosen or (OPEN_SAMPLE if open_sample(ctx) else types.ViewTargetProperty(ctx).default)


def target_view(ctx):
    """The samples the operator runs on: the open sample (of the current view) for
    :data:`OPEN_SAMPLE`, else FiftyOne's ``ctx.target_view()`` for :func:`target_choice`."""
    choice = target_choice(ctx)
    if choice == OPEN_SAMPLE:
        return ctx.view.select(open_sample(ctx))
    if ctx.params.get("view_target") != choice:
        # ctx.target_view() reads the choice from ctx.params in every version; a copy, as the
        # caller's params dict must not change
        ctx.params = dict(ctx.params, view_target=choice)
    return ctx.target_view()


def target_input(ctx, inputs: types.Object, verb: str) -> None:
    """FiftyOne's target selector (dataset, current view, selected samples: the choices this
    context has, hidden when there is only one; with a sample open in the App's modal also
    :data:`OPEN_SAMPLE`, the default) and a notice naming what the choice holds, e.g. "Runs on 3
    selected samples"."""
    selector = inputs.view_target(ctx)
    if open_sample(ctx):
        _offer_open_sample(selector)
    target = target_choice(ctx)
    count = target_view(ctx).count()
    what = ("the open sample" if target == OPEN_SAMPLE and count == 1
            else plural(count, "selected sample") if target == "SELECTED_SAMPLES"
            else f"the only sample of {_TARGET_WORDS.get(target, 'the current view')}" if count == 1
            else f"all {count} samples of {_TARGET_WORDS.get(target, 'the current view')}")
    inputs.view("target_notice", types.Notice(label=f"{verb} {what}"))


def _offer_open_sample(selector: types.Property) -> None:
    """Add :data:`OPEN_SAMPLE` to FiftyOne's target selector as its default (shown: a selector
    FiftyOne hid, holding the dataset alone, becomes a radio group of the two)."""
    choices = selector.view
    if not isinstance(choices, types.Choices):
        choices = types.RadioGroup(label="Target view")
        for value in selector.type.values:
            choices.add_choice(value, label="Dataset" if value == "DATASET" else value.replace("_", " ").capitalize())
        selector.view = choices
    choices.add_choice(OPEN_SAMPLE, label="Open sample", description="Only the sample open in the App")
    selector.type = types.Enum(list(selector.type.values) + [OPEN_SAMPLE])
    selector.default = OPEN_SAMPLE


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
    """Adds an error (not a video dataset: returns False) or the target selector and its notice
    (:func:`target_input`)."""
    dataset = ctx.dataset
    if dataset is None or dataset.media_type != fo.core.media.VIDEO:
        inputs.view("not_video", types.Error(label="This operator needs a video dataset"))
        return False
    target_input(ctx, inputs, verb)
    return True


#: seconds between two progress reports of an operator (FiftyOne's ``report_progress(dt=...)``)
PROGRESS_SECONDS = 1.0
_PROGRESS_STEPS = 10_000  # the resolution of the fraction on FiftyOne's progress bar


def throttled_progress(ctx, cancelled: Optional[Callable[[], bool]] = None) -> Callable[[float, str], Optional[bool]]:
    """The ``progress(fraction, label)`` callback the plugin's functions take, for an operator:
    every call asks ``cancelled()`` (True: returns False, which cancels), and the fraction and
    label reach ``ctx.set_progress`` through FiftyOne's throttle (``fo.report_progress`` over a
    quiet ``fou.ProgressBar``): at most one report per :data:`PROGRESS_SECONDS` plus the final
    one, however many frames or videos the run has."""
    bar = fou.ProgressBar(total=_PROGRESS_STEPS, progress=False)  # quiet: its clock and counts only
    latest = {"label": None}
    report = fou.report_progress(lambda pb: ctx.set_progress(progress=pb.progress, label=latest["label"]),
                                 dt=PROGRESS_SECONDS)
    bar.start()

    def progress(fraction: float, label: str) -> Optional[bool]:
        if cancelled is not None and cancelled():
            return False
        latest["label"] = label
        bar.set_iteration(round(min(max(fraction, 0.0), 1.0) * _PROGRESS_STEPS), draw=False)
        report(bar)
        return None

    return progress


def plural(count: int, noun: str) -> str:
    """``1 selected sample``, ``3 selected samples``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")
