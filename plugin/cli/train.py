"""``python -m deaot_vos train``: the core trainer (:mod:`deaot_core.train`, same options) on a
FiftyOne dataset: ``--data fiftyone:<dataset>:<frame field>`` (or ``synthetic``).

The FiftyOne side builds the clip source (:func:`deaot_vos.formats.training_source.source_from_spec`)
and hands it to :func:`deaot_core.train.train`; the core never imports FiftyOne.
"""
from __future__ import annotations

import argparse

from deaot_core.train import add_train_arguments, config_from_namespace, train_and_print

from ..formats.training_source import FIFTYONE_PREFIX, source_from_spec


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``sub`` (argparse sub-parsers); returns its parser."""
    p = sub.add_parser("train", help="train or fine-tune a model on a FiftyOne dataset's masks",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_arguments(p, data_help=f"'{FIFTYONE_PREFIX}<dataset_name>:<frame field>' or 'synthetic'")
    p.set_defaults(handler=lambda args: run_train(args, p.error))
    return p


def run_train(args: argparse.Namespace, error) -> int:
    """Train as the parsed ``args`` say; ``error(message)`` reports bad arguments. Exit status 0."""
    cfg = config_from_namespace(args, error)
    source = source_from_spec(cfg) if cfg.data.startswith(FIFTYONE_PREFIX) else None
    return train_and_print(cfg, source)
