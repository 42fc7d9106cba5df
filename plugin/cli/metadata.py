"""``metadata``: fill missing video metadata with our decoder (no ffprobe)::

    deaot-vos metadata DATASET [--overwrite]
"""
from __future__ import annotations

import sys

from ..metadata import fill_video_metadata
from .common import error_line, load_dataset


def add_parser(sub) -> None:
    p = sub.add_parser("metadata", help="fill missing video metadata (size, frame rate, frame count) with decord, "
                                        "so the App plays the videos without ffmpeg")
    p.add_argument("dataset", help="FiftyOne dataset name")
    p.add_argument("--overwrite", action="store_true", help="recompute the metadata of every video")
    p.set_defaults(handler=run)


def run(args) -> int:
    dataset = load_dataset(args.dataset)
    if dataset is None:
        return 2
    try:
        summary = fill_video_metadata(dataset, overwrite=args.overwrite)
    except ValueError as err:
        print(error_line(err), file=sys.stderr)
        return 1
    for line in summary["failed"]:
        print(f"  failed: {line}", file=sys.stderr)
    print(f"{dataset.name}: metadata filled for {summary['filled']} video(s), {summary['kept']} already had it, "
          f"{len(summary['failed'])} failed")
    return 1 if summary["failed"] else 0
