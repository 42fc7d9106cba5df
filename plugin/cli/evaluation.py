"""``evaluate`` and ``compare``: DAVIS J&F evaluation runs and their summary table::

    python -m deaot_vos evaluate --dataset NAME --pred-field deaot --gt-field ground_truth --eval-key deaot_eval \
        [--segmentation-key deaot_seg]
    python -m deaot_vos compare --dataset NAME --eval-keys run_a run_b [--csv] [--per-sequence]
"""
from __future__ import annotations

import json
import sys

from ..compare import summary_rows
from ..evaluation import evaluate_vos
from ..tables import format_table, to_csv
from .common import error_line, load_dataset, load_view


def add_parsers(sub) -> None:
    p = sub.add_parser("evaluate", help="DAVIS J&F of a prediction field vs a ground-truth field (evaluation run)")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--pred-field", required=True, help="frame field with the predictions")
    p.add_argument("--gt-field", default="ground_truth", help="frame field with the ground truth")
    p.add_argument("--eval-key", required=True, help="key of the evaluation run (fields <key>_JF, <key>_J, <key>_F)")
    p.add_argument("--segmentation-key", default=None,
                   help="also store a segmentation run under this key (J&F, J, F as its custom metrics) for "
                        "FiftyOne's Model Evaluation panel; writes frame fields <key>_gt_labelmap, <key>_pred_labelmap")
    p.add_argument("--overwrite", action="store_true", help="replace evaluations with these keys")
    p.add_argument("--extra-objects", default="error", choices=("error", "ignore"),
                   help="predicted objects absent from the reference frame: error (official) or ignore")
    p.add_argument("--sample-id", action="append", default=None, help="only this sample (repeatable)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler=run_evaluate)

    p = sub.add_parser("compare", help="summary table of J&F evaluation runs")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--eval-keys", nargs="*", default=None, help="evaluation runs (default: every J&F run)")
    p.add_argument("--csv", action="store_true", help="CSV as the official global_results file")
    p.add_argument("--per-sequence", action="store_true", help="also print each run's per-video table")
    p.set_defaults(handler=run_compare)


def run_evaluate(args) -> int:
    loaded = load_view(args)
    if loaded is None:
        return 2
    dataset, view = loaded
    try:
        results = evaluate_vos(view, args.pred_field, args.gt_field, eval_key=args.eval_key,
                               overwrite=args.overwrite, extra_objects=args.extra_objects,
                               segmentation_key=args.segmentation_key)
    except (ValueError, RuntimeError) as err:
        print(error_line(err), file=sys.stderr)
        return 1
    segmentation = dataset.load_evaluation_results(args.segmentation_key) if args.segmentation_key else None
    if args.json:
        extra = {}
        if segmentation is not None:  # FiftyOne's values are numpy scalars
            metrics = segmentation.metrics()
            extra["segmentation_metrics"] = {k: None if v is None else float(v) for k, v in metrics.items()}
        print(json.dumps(dict(summary=results.summary(), objects=results.objects, skipped=results.skipped, **extra),
                         indent=2))
        return 0
    results.print_report()
    print()
    print(format_table(summary_rows(dataset, [args.eval_key])))
    if segmentation is not None:
        print(f"\nsegmentation run '{args.segmentation_key}' (Model Evaluation panel):")
        segmentation.print_metrics(digits=3)
    return 0


def run_compare(args) -> int:
    dataset = load_dataset(args.dataset)
    if dataset is None:
        return 2
    try:
        rows = summary_rows(dataset, args.eval_keys or None)
    except ValueError as err:
        print(error_line(err), file=sys.stderr)
        return 1
    if not rows:
        print(f"dataset '{dataset.name}' has no J&F evaluation; run `deaot-vos evaluate` first", file=sys.stderr)
        return 1
    print(to_csv(rows), end="") if args.csv else print(format_table(rows))
    if args.per_sequence:
        for row in rows:
            print(f"\n{row['eval_key']} ({row['pred_field']} vs {row['gt_field']}):")
            dataset.load_evaluation_results(row["eval_key"]).print_report()
    return 0
