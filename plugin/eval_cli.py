"""CLI subcommands ``evaluate``, ``compare``, ``export-vos`` and ``import-vos`` (registered by
``plugin/cli.py``)::

    python -m deaot_vos evaluate --dataset NAME --pred-field deaot --gt-field ground_truth --eval-key deaot_eval
    python -m deaot_vos compare --dataset NAME --eval-keys run_a run_b [--csv] [--per-sequence]
    python -m deaot_vos export-vos --dataset NAME --label-field ground_truth --export-dir DIR [--layout davis|youtube]
    python -m deaot_vos import-vos --dataset-dir DIR --name NAME [--layout auto|davis|youtube]
"""
from __future__ import annotations

import json
import sys

import fiftyone as fo

from .compare import summary_rows
from .evaluation import evaluate_vos
from .formats.vos import export_vos, import_vos
from .tables import format_table, to_csv


def add_parsers(sub) -> None:
    p = sub.add_parser("evaluate", help="DAVIS J&F of a prediction field vs a ground-truth field (evaluation run)")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--pred-field", required=True, help="frame field with the predictions")
    p.add_argument("--gt-field", default="ground_truth", help="frame field with the ground truth")
    p.add_argument("--eval-key", required=True, help="key of the evaluation run (fields <key>_JF, <key>_J, <key>_F)")
    p.add_argument("--overwrite", action="store_true", help="replace an evaluation with this key")
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

    p = sub.add_parser("export-vos", help="write videos and masks as a DAVIS or YouTube-VOS folder")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--label-field", required=True, help="frame field with the masks")
    p.add_argument("--export-dir", required=True)
    p.add_argument("--layout", default="davis", choices=("davis", "youtube"))
    p.add_argument("--sample-id", action="append", default=None, help="only this sample (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace existing sequence folders")
    p.set_defaults(handler=run_export)

    p = sub.add_parser("import-vos", help="load a DAVIS or YouTube-VOS folder as a FiftyOne video dataset")
    p.add_argument("--dataset-dir", required=True, help="folder with JPEGImages/, Annotations/ (and meta.json)")
    p.add_argument("--name", default=None, help="dataset name (default: the folder's name)")
    p.add_argument("--layout", default="auto", choices=("auto", "davis", "youtube"))
    p.add_argument("--label-field", default="ground_truth")
    p.add_argument("--label-type", default="detections", choices=("detections", "segmentation"))
    p.add_argument("--video-dir", default=None, help="where to write the MP4s")
    p.add_argument("--fps", type=float, default=24.0)
    p.add_argument("--sequence", action="append", default=None, help="only this sequence (repeatable)")
    p.add_argument("--resolution", default=None, help="DAVIS resolution folder (480p, ...); found automatically")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset with this name")
    p.set_defaults(handler=run_import)


def _load(name):
    if not fo.dataset_exists(name):
        print(f"error: no dataset named {name!r}", file=sys.stderr)
        return None
    return fo.load_dataset(name)


def run_evaluate(args) -> int:
    dataset = _load(args.dataset)
    if dataset is None:
        return 2
    view = dataset.select(args.sample_id) if args.sample_id else dataset
    try:
        results = evaluate_vos(view, args.pred_field, args.gt_field, eval_key=args.eval_key,
                               overwrite=args.overwrite, extra_objects=args.extra_objects)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(dict(summary=results.summary(), objects=results.objects, skipped=results.skipped), indent=2))
        return 0
    results.print_report()
    print()
    print(format_table(summary_rows(dataset, [args.eval_key])))
    return 0


def run_compare(args) -> int:
    dataset = _load(args.dataset)
    if dataset is None:
        return 2
    try:
        rows = summary_rows(dataset, args.eval_keys or None)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not rows:
        print(f"dataset '{dataset.name}' has no J&F evaluation; run `python -m deaot_vos evaluate` first", file=sys.stderr)
        return 1
    print(to_csv(rows), end="") if args.csv else print(format_table(rows))
    if args.per_sequence:
        for row in rows:
            print(f"\n{row['eval_key']} ({row['pred_field']} vs {row['gt_field']}):")
            dataset.load_evaluation_results(row["eval_key"]).print_report()
    return 0


def run_export(args) -> int:
    dataset = _load(args.dataset)
    if dataset is None:
        return 2
    view = dataset.select(args.sample_id) if args.sample_id else dataset
    try:
        summary = export_vos(view, args.export_dir, args.label_field, layout=args.layout, overwrite=args.overwrite)
    except (ValueError, RuntimeError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, row in summary["sequences"].items():
        print(f"  {name}: {row['frames']} frames, {row['annotated']} annotated, objects {row['objects']}")
    print(f"wrote {len(summary['sequences'])} sequence(s) to {summary['export_dir']} ({summary['layout']} layout)")
    return 0


def run_import(args) -> int:
    try:
        dataset = import_vos(args.dataset_dir, args.name, label_field=args.label_field, layout=args.layout,
                             label_type=args.label_type, video_dir=args.video_dir, fps=args.fps,
                             sequences=args.sequence, resolution=args.resolution, overwrite=args.overwrite,
                             persistent=True)
    except (ValueError, RuntimeError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"dataset '{dataset.name}': {len(dataset)} videos, {dataset.count('frames.' + args.label_field)} "
          f"annotated frames in '{args.label_field}'")
    return 0
