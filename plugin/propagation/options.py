"""``PropagationOptions``: every propagation setting in one place, validated once.

The same object is built from Python keyword arguments (:func:`deaot_vos.propagate`), from the
operator's params (:meth:`PropagationOptions.from_params`), from the command line
(:meth:`PropagationOptions.add_arguments` / :meth:`from_args`), and stored JSON-safe in queued
tasks (:meth:`to_params`, which :meth:`from_params` reads back unchanged).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Optional, Sequence

import numpy as np

import deaot_core

from ..fields import frame_field_name
from ..label_frames import KEYFRAME_MARKS
from ..weights import DEFAULT_MODEL, PRECISIONS

DEFAULT_OUTPUT = "deaot"  # the operator's default output field
_ARG_NAMES = {"compile_model": "compile"}  # option -> its argparse dest, where they differ
TRACKER_KNOBS = ("long_term_gap", "max_long_term_frames", "max_short_edge", "max_long_edge", "precision",
                 "compile_model", "test_scales", "test_flip", "threads")


def optional_field_name(name: Optional[str], what: str) -> Optional[str]:
    """``name`` as a top-level frame field name (:func:`deaot_vos.fields.frame_field_name`), or
    None when blank."""
    return None if name is None or str(name).strip() == "" else frame_field_name(name, what)


def check_test_scales(test_scales) -> tuple[float, ...]:
    """``test_scales`` (None, a number, a sequence of numbers or a comma-separated string) as a
    tuple of floats, validated by the core (:class:`deaot_core.TrackerOptions`); None or blank
    -> (1.0,)."""
    if test_scales is None or (isinstance(test_scales, str) and not test_scales.strip()):
        return (1.0,)
    return deaot_core.TrackerOptions(test_scales=test_scales).test_scales


def _check_write_every(value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or not math.isfinite(value) \
            or value < 1:
        raise ValueError(f"write_every must be a number >= 1, got {value!r}")


def _int_or_none(value):
    return None if value is None or value == "" else int(value)


def _text_or_none(value) -> Optional[str]:
    return (str(value) if value is not None else "").strip() or None


@dataclasses.dataclass
class PropagationOptions:
    """What to propagate where, with which model and engine knobs (see :func:`deaot_vos.propagate`).

    ``__post_init__`` normalises the field names (``frames.`` prefix, blank -> None),
    ``test_scales`` (-> tuple of floats) and validates ``precision`` and the number knobs:
    ValueError on a bad value. Field existence and types are checked against a dataset later
    (:func:`deaot_vos.propagation.check_fields`)."""

    keyframes_field: Optional[str] = None
    output_field: Optional[str] = None
    model: str = DEFAULT_MODEL
    checkpoint: Optional[str] = None
    device: str = "auto"
    overwrite: bool = False
    skip_failures: bool = False
    write_segmentation: Optional[str] = None
    allow_random_weights: bool = False
    write_every: int = 64
    long_term_gap: Optional[int] = None
    max_long_term_frames: Optional[int] = None
    max_short_edge: Optional[int] = None
    max_long_edge: Optional[int] = 1040
    precision: str = "fp32"
    compile_model: bool = False
    test_scales: Sequence[float] = (1.0,)
    test_flip: bool = False
    bidirectional: bool = False
    incremental: bool = False
    keyframe_marks: str = "auto"
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        self.keyframes_field = optional_field_name(self.keyframes_field, "keyframes_field")
        self.output_field = optional_field_name(self.output_field, "output_field")
        self.write_segmentation = optional_field_name(self.write_segmentation, "write_segmentation")
        self.model = self.model or DEFAULT_MODEL
        _check_write_every(self.write_every)
        self.test_flip = bool(self.test_flip)
        self.bidirectional, self.incremental = bool(self.bidirectional), bool(self.incremental)
        self.keyframe_marks = str(self.keyframe_marks or "auto").strip().lower()
        if self.keyframe_marks not in KEYFRAME_MARKS:
            raise ValueError(f"keyframe_marks must be one of {', '.join(KEYFRAME_MARKS)}, got {self.keyframe_marks!r}")
        self.test_scales = check_test_scales(self.test_scales)
        self.tracker_options()  # the engine knobs are validated by the core's own options object

    @property
    def output_fields(self) -> list[str]:
        """The frame fields this run writes: the output field, then the segmentation field if any."""
        return [f for f in (self.output_field, self.write_segmentation) if f]

    def replace(self, **changes) -> "PropagationOptions":
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def tracker_options(self, **changes) -> deaot_core.TrackerOptions:
        """The engine knobs as the core's :class:`deaot_core.TrackerOptions` (``compile_model``
        is its ``compile``), with ``changes`` applied; ValueError names a bad knob."""
        kwargs = {name: getattr(self, name) for name in TRACKER_KNOBS}
        kwargs["compile"] = kwargs.pop("compile_model")
        kwargs.update(changes)
        return deaot_core.TrackerOptions(**kwargs)

    def to_params(self) -> dict[str, Any]:
        """JSON-safe params in the operator form's types (stored in queued tasks, whose params
        the form validates: ``test_scales`` is its comma-separated text); ``from_params``
        returns an equal object."""
        params = dataclasses.asdict(self)
        params["test_scales"] = ",".join(repr(float(scale)) for scale in self.test_scales)
        return params

    @classmethod
    def from_params(cls, params: dict) -> "PropagationOptions":
        """From the operator's ``params`` (blank strings mean the default; keys that are not
        options, e.g. ``delegate``, are ignored)."""
        values: dict[str, Any] = dict(
            keyframes_field=params.get("keyframes_field"),
            output_field=params.get("output_field") or DEFAULT_OUTPUT,
            model=params.get("model") or DEFAULT_MODEL,
            checkpoint=_text_or_none(params.get("checkpoint")),
            device=params.get("device") or "auto",
            precision=params.get("precision") or "fp32",
            write_segmentation=_text_or_none(params.get("write_segmentation")),
            keyframe_marks=params.get("keyframe_marks") or "auto",
            test_scales=params.get("test_scales"))
        for name in ("overwrite", "skip_failures", "allow_random_weights", "compile_model", "test_flip",
                     "bidirectional", "incremental"):
            values[name] = bool(params.get(name, False))
        for name in ("long_term_gap", "max_long_term_frames", "max_short_edge", "max_long_edge", "write_every",
                     "threads"):
            if name in params:
                values[name] = _int_or_none(params.get(name))
        if values.get("write_every", 1) is None:
            del values["write_every"]
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PropagationOptions":
        """From the arguments :meth:`add_arguments` declared: every option with a flag of the same
        name (``compile_model`` is ``--compile``)."""
        given = vars(args)
        values = {f.name: given[_ARG_NAMES.get(f.name, f.name)] for f in dataclasses.fields(cls)
                  if _ARG_NAMES.get(f.name, f.name) in given}
        return cls(**values)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Declare the options as command-line arguments (read back by :meth:`from_args`)."""
        add = parser.add_argument
        add("--keyframes-field", required=True, help="frame field with the keyframe masks")
        add("--output-field", required=True, help="frame field to write (fo.Detections)")
        add("--model", default=None, help=f"official model name (default {DEFAULT_MODEL})")
        add("--checkpoint", default=None, help="path or URL of the weights")
        add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        add("--overwrite", action="store_true", help="replace the output field(s) if they exist")
        add("--write-segmentation", default=None, metavar="FIELD",
            help="also write a fo.Segmentation label map to this frame field")
        add("--long-term-gap", type=int, default=None)
        add("--max-long-term-frames", type=int, default=None)
        add("--max-short-edge", type=int, default=None)
        add("--max-long-edge", type=int, default=1040)
        add("--precision", default="fp32", choices=PRECISIONS,
            help="fp32 keeps the official numerics; bf16 runs channels-last autocast: ~2x faster "
                 "on CPUs with AMX (BENCHMARKS.md), ~99.9%% of the fp32 labels; on a CPU without "
                 "native bf16/fp16 kernels (AVX2 only) they are emulated, ~10x slower (a warning says so)")
        add("--compile", action="store_true", help="run the network through torch.compile (slow start, "
            "faster frames)")
        add("--test-scales", type=float, nargs="+", default=None, metavar="SCALE",
            help="test-time multi-scale, as the official --ms (e.g. 0.8 1.0 1.2): one pass per scale, "
                 "probabilities averaged (default: 1.0)")
        add("--test-flip", action="store_true",
            help="test-time flip, as the official --flip: also run the mirrored video (2x the work)")
        add("--bidirectional", action="store_true",
            help="frames between two keyframes fuse the forward pass with a backward pass from the later "
                 "keyframe (about 2x the work between keyframes; more accurate, see README)")
        add("--incremental", action="store_true",
            help="update an existing output: recompute only the frames whose keyframes, model or options "
                 "changed and keep the others (the output field is updated in place)")
        add("--keyframe-marks", choices=KEYFRAME_MARKS, default="auto",
            help="read keyframe=True on the labels of a track field (CVAT, the App) as the keyframes: on, off, "
                 "or auto (on when any label of the field is marked; default)")
        add("--threads", type=int, default=None,
            help="CPU threads for the network (default: automatic, the cores not kept busy by other "
                 "processes, measured as it runs)")
        add("--skip-failures", action="store_true", help="go on when a video fails")
        add("--write-every", type=int, default=64, help="frames buffered per bulk write")
