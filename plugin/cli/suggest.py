"""``suggest``: where to label next (:func:`deaot_vos.suggestions.suggest_keyframes`)::

    python -m deaot_vos suggest --dataset NAME --output-field F [--score-field S] [--top N] [--spacing N] \
        [--no-scene-cuts] [--sample-id ID ...] [--json]

Prints each video's top frames with their scores. Ctrl-C cancels before anything is written (exit
status 130); exit status 1: an error (nothing written).
"""
from __future__ import annotations

import json
import signal
import sys

from ..propagation import cancel_on_signals
from ..reporting import tqdm_progress
from ..suggestions import SuggestionCancelled, suggest_keyframes
from .common import database_unreachable, error_line, load_view


def add_parser(sub) -> None:
    p = sub.add_parser("suggest", help="score a propagated field's frames by how likely they are wrong; "
                                       "print the frames to label next")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--output-field", required=True, help="frame field written by propagate")
    p.add_argument("--score-field", default=None, help="frame field for the scores (default: <output>_review)")
    p.add_argument("--top", type=int, default=5, help="frames suggested per video")
    p.add_argument("--spacing", type=int, default=3, help="suggested frames are at least this many frames apart")
    p.add_argument("--no-scene-cuts", dest="scene_cuts", action="store_false",
                   help="do not decode the videos for the scene-cut signal")
    p.add_argument("--sample-id", action="append", default=None, help="only this sample (repeatable)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=run_suggest)


def run_suggest(args) -> int:
    loaded = load_view(args)
    if loaded is None:
        return 2
    _, view = loaded
    bar, show = tqdm_progress()
    with cancel_on_signals((signal.SIGINT, signal.SIGTERM)) as stop:
        def progress(fraction, label):
            if stop.is_set():
                return False
            show(fraction, label)

        try:
            summary = suggest_keyframes(view, args.output_field, score_field=args.score_field, top=args.top,
                                        spacing=args.spacing, scene_cuts=args.scene_cuts, progress=progress)
        except (KeyboardInterrupt, SuggestionCancelled):
            bar.close()
            print("cancelled: no field was changed", file=sys.stderr)
            return 130
        except (ValueError, RuntimeError, OSError) as err:
            bar.close()
            if database_unreachable(err):
                raise  # main() prints the one line
            print(error_line(err), file=sys.stderr)
            return 1
    bar.close()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"scores in frame field '{summary['score_field']}', top frames in saved view '{summary['view']}'")
    for row in summary["samples"]:
        top = ", ".join(f"frame {t['frame']} ({t['score']:.3f})" for t in row["top"]) or "none"
        print(f"{row['filepath']}: {top}")
    return 0
