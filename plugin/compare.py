"""Compare J&F evaluation runs (``deaot_vos.evaluation``): the official summary table per run and the
per-frame J&F curves of one video, for the CLI (``python -m deaot_vos compare``) and the App panel.
Text and CSV rendering of the rows: :mod:`deaot_vos.tables`.
"""
from __future__ import annotations

from typing import Any, Sequence

from .evaluation import VOSEvaluationResults, frame_fields, list_vos_evaluations
from .fields import root_dataset
from .tables import TABLE_KEYS

__all__ = ["TABLE_KEYS", "summary_rows", "frame_curves", "plotly_traces"]


def _results(dataset, eval_key: str):
    if eval_key not in dataset.list_evaluations():
        raise ValueError(f"dataset '{dataset.name}' has no evaluation '{eval_key}'; J&F evaluations: "
                         f"{list_vos_evaluations(dataset)}")
    results = dataset.load_evaluation_results(eval_key)
    if not isinstance(results, VOSEvaluationResults):
        raise ValueError(f"evaluation '{eval_key}' of dataset '{dataset.name}' is not a DeAOT J&F evaluation "
                         f"(type {dataset.get_evaluation_info(eval_key).config.type!r})")
    return results


def summary_rows(sample_collection, eval_keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per evaluation run: ``eval_key``, ``pred_field``, ``gt_field``, ``sequences``,
    ``objects`` and the official summary (:data:`deaot_core.metrics.davis.SUMMARY_KEYS`).
    ``eval_keys=None``: every J&F run of the dataset."""
    dataset = root_dataset(sample_collection)
    keys = list(eval_keys) if eval_keys else list_vos_evaluations(dataset)
    rows = []
    for key in keys:
        results = _results(dataset, key)
        rows.append(dict(eval_key=key, pred_field=results.config.pred_field, gt_field=results.config.gt_field,
                         sequences=len(results.sequences), objects=len(results.objects), **results.summary()))
    return rows


def frame_curves(sample_collection, sample_id: str, eval_keys: Sequence[str]) -> dict[str, dict[str, list]]:
    """Per-frame J, F and J&F (means over objects) of one video for each run, read from the frame
    fields ``<eval_key>_J`` / ``<eval_key>_F``: ``{eval_key: {"frames": [...], "J": [...],
    "F": [...], "JF": [...]}}`` (scored frames only; runs that did not score the video are empty)."""
    dataset = root_dataset(sample_collection)
    schema = dataset.get_frame_field_schema() or {}
    one = dataset.select(sample_id)
    out: dict[str, dict[str, list]] = {}
    for key in eval_keys:
        fj, ff = frame_fields(key)
        curve = dict(frames=[], J=[], F=[], JF=[])
        if fj in schema and ff in schema and len(one):
            numbers, js, fs = (v[0] or [] for v in one.values(["frames.frame_number", "frames." + fj, "frames." + ff]))
            for n, j, f in sorted(zip(numbers, js, fs), key=lambda x: x[0]):
                if j is None or f is None:
                    continue
                curve["frames"].append(int(n))
                curve["J"].append(float(j))
                curve["F"].append(float(f))
                curve["JF"].append((float(j) + float(f)) / 2.0)
        out[key] = curve
    return out


def plotly_traces(curves: dict[str, dict[str, list]]) -> list[dict[str, Any]]:
    """Plotly line traces (one per run) of per-frame J&F."""
    return [dict(type="scatter", mode="lines+markers", name=key, x=c["frames"], y=c["JF"],
                 hovertemplate="frame %{x}<br>J&F %{y:.3f}<extra>" + key + "</extra>")
            for key, c in curves.items()]
