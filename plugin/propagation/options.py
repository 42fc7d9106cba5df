"""``PropagationOptions``: every propagation setting in one place, validated once.

Each setting is one dataclass field whose metadata (:func:`.option_specs.option`: label, help,
choices, which entry shapes show it) is the single source of the operator form
(``operators/option_form.py``), the command-line arguments (:meth:`PropagationOptions.add_arguments`
/ :meth:`~PropagationOptions.from_args`), the queued tasks' JSON-safe params
(:meth:`~PropagationOptions.to_params`, which :meth:`~PropagationOptions.from_params` reads back
unchanged) and the zoo model's keywords (:func:`zoo_keywords`): a new setting is written here
once. The engine knobs take their defaults from :class:`deaot_core.TrackerOptions`, which is built
once per options object (:meth:`~PropagationOptions.tracker_options`).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Optional, Sequence

import numpy as np

import deaot_core
from deaot_core.tracker import MIN_EDGE

from ..fields import frame_field_name
from ..keyframe_prompts import normalize_prompt_model
from ..label_frames import KEYFRAME_MARKS
from ..weights import DEFAULT_MODEL, PRECISIONS
from . import option_specs as specs
from .option_specs import option

DEFAULT_OUTPUT = "deaot"  # the operator's default output field
_CORE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(deaot_core.TrackerOptions)}
_NAME_FIELDS = ("keyframes_field", "output_field", "write_segmentation", "write_polylines")
_UNSET = object()


def engine_option(core: str, label: str, help: str, **info) -> Any:
    """A setting that is the :class:`deaot_core.TrackerOptions` field ``core``, with its default."""
    return option(_CORE_DEFAULTS[core], label, help, core=core, **info)


def optional_field_name(name: Optional[str], what: str) -> Optional[str]:
    """``name`` as a top-level frame field name (:func:`deaot_vos.fields.frame_field_name`), or
    None when blank."""
    return None if name is None or str(name).strip() == "" else frame_field_name(name, what)


def check_test_scales(test_scales) -> tuple[float, ...]:
    """``test_scales`` (None, a number, a sequence of numbers or a comma-separated string) as a
    tuple of floats, validated by the core (:class:`deaot_core.TrackerOptions`); None or blank
    -> (1.0,)."""
    if test_scales is None or (isinstance(test_scales, str) and not test_scales.strip()):
        return _CORE_DEFAULTS["test_scales"]
    return deaot_core.TrackerOptions(test_scales=test_scales).test_scales


def _check_write_every(value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or not math.isfinite(value) \
            or value < 1:
        raise ValueError(f"write_every must be a number >= 1, got {value!r}")


_APP_ONLY = ("form", "cli")  # settings of a run that writes fields (apply_model writes its own)


@dataclasses.dataclass(frozen=True)
class PropagationOptions:
    """What to propagate where, with which model and engine knobs (see :func:`deaot_vos.propagate`).

    ``__post_init__`` normalises the field names (``frames.`` prefix, blank -> None; a name
    FiftyOne cannot store is refused), builds the engine knobs' :class:`deaot_core.TrackerOptions`
    (which validates them; ``test_scales`` -> tuple of floats) and validates the others:
    ValueError on a bad value. Field existence and types are checked against a dataset later
    (:func:`deaot_vos.propagation.check_fields`). The field order is the form's."""

    keyframes_field: Optional[str] = option(
        None, "Keyframes field", "frame field holding the keyframe masks (Detections with instance masks, "
        "Segmentation, or filled Polylines)", required=True, metavar="FIELD", shown=_APP_ONLY)
    output_field: Optional[str] = option(
        None, "Output field", "new frame field for the propagated Detections (instance masks)", required=True,
        metavar="FIELD", shown=_APP_ONLY, form_default=DEFAULT_OUTPUT)
    keyframe_marks: str = option(
        "auto", "Keyframes in a track field", "a track field (CVAT, the App) labels every frame and marks the "
        "annotated ones with keyframe=True: on: only the marked labels are keyframes; off: every label is; auto: "
        "on when any label of the field is marked",
        choices=(("auto", "auto (when labels are marked)"), ("on", "only marked labels"), ("off", "every label")))
    prompt_model: Optional[str] = option(
        None, "Prompt model (box and point keyframes)", "how keyframe boxes (detections without a mask) and points "
        "(Keypoints) become masks on their keyframe: the name of a FiftyOne zoo model that takes box and point prompts "
        "(Segment Anything / SAM 2 image models, e.g. segment-anything-2-hiera-tiny-image-torch), run on the keyframes "
        "only; blank or offline: boxes become masks without a model, points are refused (the Python API also takes "
        "a loaded model)", metavar="ZOO_MODEL")
    overwrite: bool = option(False, "Overwrite", "replace the output field(s) if they already exist", shown=_APP_ONLY)
    incremental: bool = option(
        False, "Incremental (update the output)", "when the output exists, recompute only the frames whose "
        "keyframes, model or options changed and keep the others (the output is updated in place)", shown=_APP_ONLY)
    bidirectional: bool = option(
        False, "Bidirectional between keyframes", "frames between two keyframes fuse the forward pass with a "
        "backward pass from the later keyframe: +0.05 J&F between keyframes on held-out clips, about 2x the work "
        "between keyframes (README)")
    write_segmentation: Optional[str] = option(
        None, "Segmentation field (optional)", "also write a Segmentation label map (pixel value = object index) "
        "to this frame field", metavar="FIELD", shown=_APP_ONLY)
    write_polylines: Optional[str] = option(
        None, "Polygons field (optional)", "also write each object's mask as one filled polygon (Polylines with the "
        "object's index, keyframe=True on the keyframes) to this frame field: the polygon tracks CVAT's video format "
        "exports", metavar="FIELD", shown=_APP_ONLY)
    model: str = option(DEFAULT_MODEL, "Model", "official AOT/DeAOT variant", metavar="NAME", shown=_APP_ONLY)
    checkpoint: Optional[str] = option(
        None, "Checkpoint (optional)", "path or URL of the weights; default: the official file in the cache dir "
        "(~/.cache/deaot or $DEAOT_CACHE), else the shipped demo checkpoint", metavar="PATH_OR_URL")
    device: str = option("auto", "Device", "auto, cpu, cuda or cuda:N")
    allow_random_weights: bool = option(
        False, "Allow random weights", "run with random weights when no checkpoint exists (demo only)", shown=())
    long_term_gap: Optional[int] = engine_option(
        "long_term_gap", "Long-term memory gap", "frames between long-term memory entries (default: the model's)",
        minimum=1, metavar="FRAMES")
    max_long_term_frames: Optional[int] = engine_option(
        "max_long_term_frames", "Max long-term frames", "cap on long-term memory entries (default: unbounded)",
        minimum=1, metavar="FRAMES")
    max_short_edge: Optional[int] = engine_option(
        "max_short_edge", "Max short edge", "frames are resized so their short edge is at most this many pixels "
        "(default: no limit)", minimum=MIN_EDGE, metavar="PIXELS")
    max_long_edge: Optional[int] = engine_option(
        "max_long_edge", "Max long edge", "frames are resized so their long edge is at most this many pixels",
        minimum=MIN_EDGE, metavar="PIXELS")
    precision: str = engine_option(
        "precision", "Precision", "fp32 keeps the official numerics; bf16 runs channels-last autocast: about 2x "
        "faster on CPUs with AMX (BENCHMARKS.md), about 99.9% of the fp32 labels; on a CPU without native bf16/fp16 "
        "kernels (AVX2 only) they are emulated, about 10x slower (a warning says so)", choices=PRECISIONS)
    compile_model: bool = engine_option(
        "compile", "Compile the network (torch.compile)", "run the network through torch.compile: slower start "
        "(about a minute to compile), faster frames; for long videos", flag="--compile")
    test_scales: Sequence[float] = engine_option(
        "test_scales", "Test-time scales", "test-time multi-scale, as the official --ms (the form: 0.8,1.0,1.2; "
        "the command line: 0.8 1.0 1.2): one pass per scale, probabilities averaged", metavar="SCALE")
    test_flip: bool = engine_option(
        "test_flip", "Test-time flip", "test-time flip, as the official --flip: also run the mirrored video and "
        "average (2x the work)")
    threads: Optional[int] = engine_option(
        "threads", "CPU threads", "CPU threads for the network (default: automatic, the cores other processes "
        "leave free, measured as it runs)", minimum=1, metavar="N")
    skip_failures: bool = option(
        False, "Skip failing videos", "a video that fails keeps its previous output and is listed in the result; "
        "the others are written (default: any failure writes nothing)", shown=_APP_ONLY)
    write_every: int = option(64, "Frames per bulk write", "frames buffered per bulk write", minimum=1,
                              metavar="FRAMES", shown=("cli",))

    def __post_init__(self) -> None:
        values = {name: optional_field_name(getattr(self, name), name) for name in _NAME_FIELDS}
        values["model"] = self.model or DEFAULT_MODEL
        _check_write_every(self.write_every)
        values.update(overwrite=bool(self.overwrite), skip_failures=bool(self.skip_failures),
                      allow_random_weights=bool(self.allow_random_weights), bidirectional=bool(self.bidirectional),
                      incremental=bool(self.incremental))
        values["prompt_model"] = normalize_prompt_model(self.prompt_model)
        values["keyframe_marks"] = str(self.keyframe_marks or type(self).keyframe_marks).strip().lower()
        if values["keyframe_marks"] not in KEYFRAME_MARKS:
            raise ValueError(f"keyframe_marks must be one of {', '.join(KEYFRAME_MARKS)}, got {self.keyframe_marks!r}")
        engine = self._engine_knobs()
        tracker = deaot_core.TrackerOptions(**{core: value for core, (_, value) in engine.items()})
        values.update({name: getattr(tracker, core) for core, (name, _) in engine.items()})
        for name, value in values.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_tracker_options", tracker)

    def _engine_knobs(self) -> dict[str, tuple[str, Any]]:
        """TrackerOptions field -> (setting, value) of the engine knobs (a blank ``test_scales``:
        the default)."""
        knobs = {spec.info.core: (spec.name, getattr(self, spec.name))
                 for spec in specs.option_specs(type(self)) if spec.info.core}
        name, scales = knobs.get("test_scales", (None, 0))
        if scales is None or (isinstance(scales, str) and not scales.strip()):
            knobs["test_scales"] = (name, _CORE_DEFAULTS["test_scales"])
        return knobs

    @property
    def output_fields(self) -> list[str]:
        """The frame fields this run writes: the output field, then the segmentation and the
        polygons fields if any."""
        return [f for f in (self.output_field, self.write_segmentation, self.write_polylines) if f]

    def replace(self, **changes) -> "PropagationOptions":
        """A copy with ``changes`` applied (and validated); this object when nothing changes."""
        changes = {name: value for name, value in changes.items() if getattr(self, name, _UNSET) != value}
        return dataclasses.replace(self, **changes) if changes else self

    def tracker_options(self, **changes) -> deaot_core.TrackerOptions:
        """The engine knobs as the core's :class:`deaot_core.TrackerOptions` (``compile_model``
        is its ``compile``), built once; with ``changes`` applied a new one (TypeError on a name
        it does not have)."""
        current = self._tracker_options
        changes = {name: value for name, value in changes.items() if getattr(current, name, _UNSET) != value}
        return current.replace(**changes) if changes else current

    def to_params(self) -> dict[str, Any]:
        """JSON-safe params in the operator form's types (stored in queued tasks, whose params
        the form validates: ``test_scales`` is its comma-separated text); ``from_params``
        returns an equal object. ValueError for a loaded ``prompt_model`` (only a name travels)."""
        if self.prompt_model is not None and not isinstance(self.prompt_model, str):
            raise ValueError(f"prompt_model: a loaded model ({type(self.prompt_model).__name__}) cannot be stored in "
                             f"params (queued tasks); give its zoo model name")
        return specs.to_params(self)

    @classmethod
    def from_params(cls, params: dict) -> "PropagationOptions":
        """From the operator's ``params`` (a blank value means the form's default, or None for
        a number that may be unset; keys that are not options, e.g. ``delegate``, are ignored)."""
        return cls(**specs.from_params(cls, params))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PropagationOptions":
        """From the arguments :meth:`add_arguments` declared."""
        return cls(**specs.from_args(cls, args))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Declare the options as command-line arguments (read back by :meth:`from_args`): one
        flag per setting, ``--<name-with-dashes>`` (``compile_model`` is ``--compile``)."""
        specs.add_arguments(cls, parser)

    @classmethod
    def zoo_keywords(cls) -> tuple[str, ...]:
        """The settings a zoo model takes as keyword arguments (``load_zoo_model(..., **kwargs)``)."""
        return specs.zoo_keywords(cls)


def zoo_keywords() -> tuple[str, ...]:
    """The :class:`PropagationOptions` settings a zoo model takes as keyword arguments."""
    return PropagationOptions.zoo_keywords()
