"""``propagate``: the same code as the ``@deaot/vos/propagate_masks`` operator on a dataset (or the
samples given with ``--sample-id``), with a tqdm progress bar. Ctrl-C or SIGTERM cancels at the
next frame: the output field is left as it was (exit status 130). Exit status 1: an error (nothing
written); 3: with ``--skip-failures``, some videos failed (listed on stderr, their output
unchanged), the others were written. ``--queue`` runs nothing: it queues one delegated operation
per video for ``fiftyone delegated launch`` workers (see the README's scale-out section).
"""
from __future__ import annotations

import json
import signal
import sys

from ..propagation import (OutputExistsError, PropagationCancelled, PropagationOptions, cancel_on_signals, propagate,
                           queue_propagation)
from ..reporting import print_summary, tqdm_progress
from .common import database_unreachable, error_line, load_view


def add_parser(sub) -> None:
    p = sub.add_parser("propagate", help="propagate keyframe masks through the videos of a dataset")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    PropagationOptions.add_arguments(p)
    p.add_argument("--sample-id", action="append", default=None, help="only this sample (repeatable)")
    p.add_argument("--view", default=None, metavar="NAME",
                   help="run on this saved view of the dataset (e.g. a filter_labels or clips view)")
    p.add_argument("--clips", default=None, metavar="FIELD",
                   help="run on the clips of this field (dataset.to_clips(FIELD), e.g. a TemporalDetections "
                        "field): each clip propagates within its own frames, only they are written")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--queue", action="store_true",
                   help="do not run: queue delegated operations (one per --videos-per-task videos) for "
                        "`fiftyone delegated launch` workers sharing this database")
    p.add_argument("--videos-per-task", type=int, default=1, help="with --queue: videos per operation")
    p.set_defaults(handler=run_propagate)


def run_propagate(args) -> int:
    loaded = load_view(args)
    if loaded is None:
        return 2
    dataset, view = loaded
    try:
        view = _narrow(dataset, view, args)
    except ValueError as err:
        print(error_line(err), file=sys.stderr)
        return 2
    try:
        options = PropagationOptions.from_args(args)  # a bad setting is refused before anything starts
    except ValueError as err:
        print(error_line(err), file=sys.stderr)
        return 1
    if args.queue:
        return _queue(view, args, options)
    bar, show = tqdm_progress()
    # Ctrl-C / SIGTERM: stop at the next frame and drop the temporary fields (a second one
    # interrupts at once; the temporary fields are still dropped)
    with cancel_on_signals((signal.SIGINT, signal.SIGTERM)) as stop:
        def progress(fraction, label):
            if stop.is_set():
                return False
            show(fraction, label)

        try:
            summary = propagate(view, options=options, progress=progress)
        except (KeyboardInterrupt, PropagationCancelled):
            bar.close()
            print("cancelled: no field was changed", file=sys.stderr)
            return 130
        except (OutputExistsError, ValueError, RuntimeError, OSError) as err:
            bar.close()
            if database_unreachable(err):
                raise  # main() prints the one line
            print(error_line(err), file=sys.stderr)
            return 1
        except BaseException:
            bar.close()
            raise
    bar.close()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    if summary.get("failed"):
        print(f"{len(summary['failed'])} video(s) failed; their output is unchanged:", file=sys.stderr)
        for failure in summary["failed"]:
            print(f"  {failure['filepath']}: {failure['error']}", file=sys.stderr)
        return 3
    return 0


def _narrow(dataset, view, args):
    """``view`` narrowed by ``--view`` (a saved view, then ``--sample-id``) and ``--clips``."""
    if args.view:
        if args.view not in dataset.list_saved_views():
            raise ValueError(f"dataset '{dataset.name}' has no saved view '{args.view}' "
                             f"(saved views: {', '.join(dataset.list_saved_views()) or 'none'})")
        view = dataset.load_saved_view(args.view)
        if args.sample_id:
            view = view.select(args.sample_id)
    if args.clips:
        if args.queue:
            raise ValueError("--queue runs whole videos; run a clips view (--clips) without --queue")
        view = view.to_clips(args.clips)
    return view


def _queue(view, args, options: PropagationOptions) -> int:
    """``propagate --queue``: check once, queue the per-video operations, print their ids."""
    try:
        queued = queue_propagation(view, options=options, videos_per_task=args.videos_per_task)
    except (OutputExistsError, ValueError, RuntimeError, OSError) as err:
        if database_unreachable(err):
            raise  # main() prints the one line
        print(error_line(err), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(queued, indent=2))
    else:
        print(f"queued {len(queued['operations'])} operation(s) for {queued['samples']} video(s) (job {queued['job']}); "
              f"run them with `fiftyone delegated launch` (one per GPU) against this database")
    return 0
