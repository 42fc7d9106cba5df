"""Comparing J&F evaluation runs in the App.

* ``@deaot/vos/vos_compare`` (panel, grid and sample modal): a checkbox per J&F evaluation run,
  the official summary table of the checked runs and a Plotly chart of per-frame J&F for the
  current sample (the sample open in the modal; in the grid, the first evaluated sample of the
  current view).
* ``@deaot/vos/compare_vos`` (operator): the same table and chart as the operator's output, for
  scripts or when panels are not wanted.
"""
from __future__ import annotations

import os

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from deaot_vos.compare import TABLE_KEYS, frame_curves, plotly_traces, summary_rows
from deaot_vos.evaluation import list_vos_evaluations
from deaot_vos.tables import format_value

PLOT_LAYOUT = {
    "title": {"text": "Per-frame J&F (mean over objects)", "x": 0, "xanchor": "left"},
    "xaxis": {"title": {"text": "frame"}},
    "yaxis": {"title": {"text": "J&F"}, "range": [0, 1.02]},
    "showlegend": True,  # also with a single run: the legend names it
    "legend": {"orientation": "h", "x": 1, "xanchor": "right", "y": 1.0, "yanchor": "bottom"},
    "height": 340,
    "margin": {"t": 60, "l": 50, "r": 10, "b": 40},
}


def _table_view() -> types.TableView:
    table = types.TableView()
    for key in TABLE_KEYS:
        table.add_column(key, label="Evaluation" if key == "eval_key" else key)
    return table


def _table_rows(rows) -> list[dict]:
    return [{k: format_value(r.get(k)) for k in TABLE_KEYS} for r in rows]


def _plot_sample(ctx, dataset, keys) -> tuple[str | None, str]:
    """(sample id, description) of the sample whose curves are shown."""
    if ctx.current_sample:
        return ctx.current_sample, "current sample"
    view = ctx.view if ctx.view is not None else dataset
    for key in keys:
        field = f"{key}_JF"
        if field in dataset.get_field_schema():
            match = view.exists(field).limit(1).values("id")
            if match:
                return match[0], "first evaluated sample of the view (open a sample to see its curves)"
    return None, "no evaluated sample in the view"


def comparison(ctx, keys) -> dict:
    """Table rows, plot traces and a note for the chosen runs."""
    dataset = ctx.dataset
    rows = summary_rows(dataset, keys) if keys else []
    sid, how = _plot_sample(ctx, dataset, keys)
    traces, title = [], ""
    if sid is not None and keys:
        traces = plotly_traces(frame_curves(dataset, sid, keys))
        path = dataset.select(sid).values("filepath")
        title = f"{os.path.basename(path[0]) if path else sid} ({how})"
    return dict(rows=rows, traces=traces, sample_id=sid, title=title)


class VOSComparePanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="vos_compare",
            label="DeAOT: compare J&F",
            help_markdown="Official DAVIS summary table of the J&F evaluation runs "
                          "(`@deaot/vos/evaluate_vos`) and per-frame J&F of the current sample",
            surfaces="grid modal",
            icon="compare_arrows",
        )

    # -- state ---------------------------------------------------------------------------------
    def _available(self, ctx) -> list[str]:
        if ctx.dataset is None or ctx.dataset.media_type != fo.core.media.VIDEO:
            return []
        return list_vos_evaluations(ctx.dataset)

    def _chosen(self, ctx, available) -> list[str]:
        chosen = ctx.panel.get_state("chosen") or {}
        return [k for k in available if chosen.get(k, True)]

    def _refresh(self, ctx):
        available = self._available(ctx)
        chosen = ctx.panel.get_state("chosen") or {}
        ctx.panel.set_state("chosen", {k: bool(chosen.get(k, True)) for k in available})
        keys = self._chosen(ctx, available)
        result = comparison(ctx, keys) if ctx.dataset is not None else dict(rows=[], traces=[], title="")
        ctx.panel.set_state("summary_table", _table_rows(result["rows"]))
        ctx.panel.set_state("plot_title", result["title"])
        ctx.panel.set_data("jf_plot", result["traces"])

    def on_load(self, ctx):
        self._refresh(ctx)

    def on_change_dataset(self, ctx):
        ctx.panel.set_state("chosen", {})
        self._refresh(ctx)

    def on_change_view(self, ctx):
        self._refresh(ctx)

    def on_change_current_sample(self, ctx):
        self._refresh(ctx)

    def on_toggle(self, ctx):
        self._refresh(ctx)

    def refresh(self, ctx):
        self._refresh(ctx)

    # -- layout --------------------------------------------------------------------------------
    def render(self, ctx):
        panel = types.Object()
        available = self._available(ctx)
        if not available:
            panel.md("### No J&F evaluation yet\n\nRun *DeAOT: evaluate J&F (DAVIS)* "
                     "(`@deaot/vos/evaluate_vos`) on a video dataset, then reopen or refresh this panel.",
                     name="empty")
            panel.btn("refresh", label="Refresh", on_click=self.refresh)
            return types.Property(panel, view=types.GridView(orientation="vertical", padding=2))
        panel.md("#### J&F evaluation runs (DAVIS 2017 semi-supervised)", name="title")
        runs = panel.h_stack("chosen", gap=2)
        for key in available:
            runs.bool(key, label=key, default=True, view=types.CheckboxView(), on_change=self.on_toggle)
        panel.list("summary_table", types.Object(), view=_table_view(), label="Summary (official global table, "
                                                                                "objects pooled)")
        title = ctx.panel.get_state("plot_title") or ""
        panel.md(f"**Per-frame J&F** — {title}" if title else "**Per-frame J&F** — no evaluated sample",
                 name="plot_title_md")
        panel.plot("jf_plot", layout=PLOT_LAYOUT, config={"displayModeBar": False})
        panel.btn("refresh", label="Refresh", on_click=self.refresh)
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2, padding=2))


class CompareVOS(foo.Operator):
    """The panel's table and chart as an operator output."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="compare_vos",
            label="DeAOT: compare J&F evaluations",
            description="Summary table of J&F evaluation runs and per-frame J&F of the current sample",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        form = types.View(label="Compare J&F evaluations")
        available = self._available(ctx)
        if not available:
            inputs.view("none", types.Error(label="No J&F evaluation on this dataset: run DeAOT: evaluate J&F first"))
            return types.Property(inputs, view=form)
        choices = types.AutocompleteView(allow_user_input=False, allow_duplicates=False)
        for key in available:
            choices.add_choice(key, label=key)
        inputs.list("eval_keys", types.String(), required=True, default=available, label="Evaluation runs",
                    view=choices)
        return types.Property(inputs, view=form)

    @staticmethod
    def _available(ctx):
        if ctx.dataset is None or ctx.dataset.media_type != fo.core.media.VIDEO:
            return []
        return list_vos_evaluations(ctx.dataset)

    def execute(self, ctx):
        keys = ctx.params.get("eval_keys") or self._available(ctx)
        result = comparison(ctx, keys)
        return dict(table=_table_rows(result["rows"]), plot=result["traces"], sample=result["title"],
                    rows=result["rows"])

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.list("table", types.Object(), view=_table_view(), label="Summary (official global table)")
        outputs.str("sample", label="Per-frame J&F of")
        outputs.plot("plot", layout=PLOT_LAYOUT, label="Per-frame J&F")
        return types.Property(outputs, view=types.View(label="J&F comparison"))
