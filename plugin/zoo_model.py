"""DeAOT as a FiftyOne zoo model for ``apply_model``: keyframe masks in, every frame's masks out.

``DeAOTVideoModel`` is a ``fom.Model`` + ``fom.SamplesMixin`` with ``media_type == "video"``:
``predict(video_reader, sample)`` returns ``{frame_number: fo.Detections}`` (with
``segmentation=True`` and/or ``polylines=True``: ``{frame_number: {"detections": ...,
"segmentation": ..., "polylines": ...}}``, the polygons as ``propagate``'s ``write_polylines``), the same
labels as :func:`deaot_vos.propagate`: ``predict`` plans the sample and takes the same per-video
path (:func:`deaot_vos.propagation.sample_path.propagate_sample`: keyframe marks, out-of-memory
retries, label making), collecting the labels in memory. On a clip view (``to_clips``) a clip
propagates within its own frames, from the keyframes inside it.

Three traps of ``apply_model`` are handled here:

- the model is not told ``label_field``: a ``label_field`` equal to the prompt field would
  overwrite the keyframes. Inside the model's context apply_model's video loop is wrapped so the
  call's ``label_field`` is checked first, and such a call is refused before anything is written;

- it resets ``needs_fields`` to the call's keyword arguments, so a keyframes field given at load
  time (``prompt_field=...``) would be lost: the setter keeps it unless the call names one;
- it opens every video with an ffmpeg/ffprobe reader before ``predict``: without those binaries
  (FiftyOne does not install them) every video fails and, with its default
  ``skip_failures=True``, nothing is written. Inside the model's context, apply_model's reader is
  :class:`DecordVideoReader` (lazy; frames are read with our decord reader, as the operator
  does), so no ffmpeg is needed. A video that fails is named with the reason, and a run in
  which every video failed raises :class:`NothingWrittenError` at the end.
"""
from __future__ import annotations

import functools
import logging
import types
from typing import Any, Optional

import numpy as np

import eta.core.frameutils as etaf
import eta.core.video as etav
import fiftyone.core.clips as foc
import fiftyone as fo
import fiftyone.core.models as fom

from .fields import mask_targets_for, root_dataset
from .mask_targets import merge_mask_targets, segmentation_targets, written_fields
from .propagation.clips import Clip
from .propagation.errors import add_context, error_text
from .propagation.options import PropagationOptions
from .propagation.plan import SamplePlan, check_distinct_fields, name_clip
from .propagation.sample_path import propagate_sample
from .propagation.trackers import TrackerFactory, TrackerPool
from .propagation.video_pass import MemoryTarget, frame_polylines
from .video_io import VideoError, open_video
from .weights import resolve_checkpoint, resolve_device, weights_identity

log = logging.getLogger(__name__)

PROMPT_KEY = "prompt_field"  # apply_model(..., prompt_field="frames.<keyframes field>")


class NothingWrittenError(RuntimeError):
    """Every video of an ``apply_model`` run failed (each one's reason is in the message)."""


class DecordVideoReader(etav.VideoReader):
    """An ``eta.core.video.VideoReader`` over our decord reader (RGB uint8 frames, 1-based
    numbers, ``frames`` as FFmpegVideoReader takes them). The video is opened on first use, so
    constructing it never fails: :meth:`DeAOTVideoModel.predict` opens the video itself and
    names the sample when it cannot."""

    def __init__(self, inpath, frames=None, keyframes_only=False):  # pylint: disable=super-init-not-called
        if keyframes_only:
            raise NotImplementedError("DecordVideoReader reads every frame (keyframes_only is not supported)")
        self.inpath, self._frames_arg = inpath, frames
        self._video = self._parsed = None

    @property
    def video(self):
        if self._video is None:
            self._video = open_video(self.inpath)
        return self._video

    @property
    def _ranges(self):
        if self._parsed is None:
            frames = self._frames_arg
            if frames is None or frames == "*":
                frames = "1-%d" % self.total_frame_count
            self._parsed = etaf.parse_frame_ranges(frames)
        return self._parsed

    @property
    def frames(self) -> str:
        return self._ranges.to_human_str()

    @property
    def encoding_str(self) -> str:
        return ""

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.video.width, self.video.height

    @property
    def frame_rate(self) -> float:
        return self.video.fps

    @property
    def total_frame_count(self) -> int:
        return self.video.num_frames

    def read(self) -> np.ndarray:
        return self.video.frame(next(self._ranges))

    def reset(self) -> None:
        self._reset()

    def close(self) -> None:
        self._video = None


class _VideoModuleWithDecord(types.ModuleType):
    """``eta.core.video`` as ``fiftyone.core.models`` sees it inside the model's context: the same
    module, except that its ``FFmpegVideoReader`` is :class:`DecordVideoReader`."""

    FFmpegVideoReader = DecordVideoReader

    def __init__(self):
        super().__init__(etav.__name__)

    def __getattr__(self, name):
        return getattr(etav, name)


def sample_label_frames(sample, field: str) -> list[tuple[int, Any]]:
    """``[(frame_number, label), ...]`` of the frames of ``sample`` (as apply_model hands it over:
    its view's filters applied, a clip's frames only) whose ``field`` is set, sorted."""
    return sorted(((int(number), frame[field]) for number, frame in sample.frames.items()
                   if frame.has_field(field) and frame[field] is not None), key=lambda item: item[0])


def _frames_field(name: Optional[str]) -> Optional[str]:
    name = (name or "").strip()
    return None if not name else name if name.startswith("frames.") else "frames." + name


class DeAOTVideoModel(fom.Model, fom.SamplesMixin):
    """Propagates the keyframe masks of each video (``needs_fields["prompt_field"]``, a frame field
    of Detections with instance masks, Segmentation or Polylines) to all its frames.

    ``options``: a :class:`deaot_vos.PropagationOptions` (model, checkpoint, device, engine knobs;
    ``keyframes_field`` is the default prompt field). ``segmentation``: also return a
    ``fo.Segmentation`` label map per frame (pixel value = object ``index``); ``polylines``:
    also return each object as one filled polygon (``fo.Polylines``, ``keyframe`` flags).
    ``tracker_factory``: how trackers are built (:class:`deaot_vos.propagation.trackers.TrackerPool`)."""

    def __init__(self, options: PropagationOptions, segmentation: bool = False,
                 tracker_factory: Optional[TrackerFactory] = None, polylines: bool = False):
        fom.SamplesMixin.__init__(self)
        self.options, self.segmentation, self.polylines = options, bool(segmentation), bool(polylines)
        self.device = resolve_device(options.device)
        self.choice = resolve_checkpoint(options.model, options.checkpoint)
        self._trackers = TrackerPool(self.choice, options, self.device, tracker_factory)
        self.tracker = self._trackers.get(*self._trackers.requested)  # the weights load (or fail) here
        self._weights = weights_identity(self.choice)
        self.needs_fields = {}
        self._saved_video_module = self._saved_video_loop = None
        self._done: list[str] = []
        self._failed: list[str] = []
        self._segmentations: dict[str, tuple] = {}  # dataset name -> (dataset, Segmentation ids, mask targets)

    @property
    def media_type(self) -> str:
        return "video"

    @property
    def needs_fields(self) -> dict:
        return self._fields

    @needs_fields.setter
    def needs_fields(self, fields) -> None:
        """Keep the load-time keyframes field unless ``fields`` names a prompt field; any prompt
        field is normalised to ``frames.<name>``."""
        fields = dict(fields or {})
        fields[PROMPT_KEY] = _frames_field(fields.get(PROMPT_KEY)) or _frames_field(self.options.keyframes_field)
        self._fields = {key: value for key, value in fields.items() if value}

    @property
    def prompt_field(self) -> str:
        """The keyframes frame field, without ``frames.``; ValueError when none was given."""
        field = self.needs_fields.get(PROMPT_KEY)
        if not field:
            raise ValueError("no keyframes field: pass prompt_field='frames.<keyframes field>' to apply_model "
                             "(or prompt_field=... to load_zoo_model)")
        return field[len("frames."):]

    def __enter__(self):
        self.prompt_field  # refuse a run without a keyframes field before any video
        self._done, self._failed, self._segmentations = [], [], {}
        self._saved_video_module = getattr(fom, "etav", None)
        if self._saved_video_module is None:
            log.warning("this FiftyOne's apply_model does not open videos through eta.core.video: its own reader "
                        "(ffmpeg/ffprobe) is used")
        else:
            fom.etav = _VideoModuleWithDecord()
        self._saved_video_loop = self._guard_label_field()
        return self

    def _guard_label_field(self):
        """Wrap apply_model's video loop (for the model's context) so that the call's
        ``label_field`` is checked (:meth:`check_label_field`) before any video; returns the
        original loop, or None when this FiftyOne has none (then it cannot be checked)."""
        original = getattr(fom, "_apply_video_model", None)
        if original is None:
            log.warning("this FiftyOne's apply_model has no video loop to check label_field against the prompt field")
            return None

        @functools.wraps(original)
        def apply_video_model(samples, model, label_field, *args, **kwargs):
            if model is self:
                self.check_label_field(label_field)
            return original(samples, model, label_field, *args, **kwargs)

        fom._apply_video_model = apply_video_model
        return original

    def check_label_field(self, label_field) -> None:
        """ValueError when the fields apply_model would store this model's labels in (``label_field``;
        with ``segmentation``: ``<label_field>_detections`` and ``_segmentation``, or the dict's
        names) include the prompt (keyframes) field: the keyframes would be overwritten."""
        keys, several = self._label_keys, self.segmentation or self.polylines
        if isinstance(label_field, dict):
            outputs = [label_field.get(k, k) for k in keys] if several else list(label_field.values())
        elif label_field is None:
            outputs = list(keys) if several else []
        else:
            outputs = [f"{label_field}_{k}" for k in keys] if several else [label_field]
        try:
            check_distinct_fields(self.prompt_field, [str(name) for name in outputs],
                                  what="apply_model's label_field and prompt_field")
        except ValueError as err:
            raise ValueError(f"{err}; nothing was written (choose another label_field)") from None

    def __exit__(self, *args):
        if self._saved_video_module is not None:
            fom.etav = self._saved_video_module
        if self._saved_video_loop is not None:
            fom._apply_video_model, self._saved_video_loop = self._saved_video_loop, None
        if self._segmentations:  # apply_model saved its labels before leaving the model's context
            self._set_mask_targets()
        if self._failed and not self._done and args[0] is None:
            raise NothingWrittenError(f"apply_model wrote nothing: all {len(self._failed)} video(s) failed: "
                                      + "; ".join(self._failed))
        if self._failed:
            log.warning("%d of %d video(s) failed, no labels written for them: %s", len(self._failed),
                        len(self._failed) + len(self._done), "; ".join(self._failed))
        return False

    def predict(self, video_reader, sample=None) -> dict[int, Any]:
        """``{frame_number: fo.Detections}`` for every frame of ``sample``'s video (of a clip: of its
        frames), from :func:`.propagation.sample_path.propagate_sample`; ``video_reader`` is not
        read (frames come from our decord reader)."""
        if sample is None:
            raise ValueError("DeAOTVideoModel needs the sample: use dataset.apply_model(model, ..., prompt_field=...)")
        plan = self._plan(sample, self.prompt_field)
        target = MemoryTarget(self.segmentation, self.options.bidirectional, self._weights)
        try:
            result = propagate_sample(self._trackers, plan, self._run_options, target)
            if not result.ok:
                span = f" (clip frames {plan.clip.first}-{plan.clip.last})" if plan.clip is not None else ""
                raise name_clip(add_context(VideoError(
                    f"no keyframe with objects in 'frames.{self.prompt_field}'{span}: nothing to propagate"),
                    plan.sample_id, plan.filepath), plan)
        except Exception as err:
            self._failed.append(f"{plan.describe()}: {error_text(err, getattr(err, 'deaot_frame', None))}")
            raise
        self._done.append(sample.id)
        labels = {number: self._frame_labels(dets, seg) for number, (dets, seg) in sorted(target.labels.items())}
        self._note_segmentation(sample, plan, labels)
        return labels

    @property
    def _label_keys(self) -> tuple[str, ...]:
        """The keys of each frame's labels dict (when more than the Detections are returned)."""
        return ("detections",) + (("segmentation",) if self.segmentation else ()) + \
            (("polylines",) if self.polylines else ())

    def _frame_labels(self, detections, segmentation):
        """One frame's return value: its Detections, or a dict with the other labels asked for."""
        if not (self.segmentation or self.polylines):
            return detections
        labels = dict(detections=detections, segmentation=segmentation)
        if self.polylines:
            labels["polylines"] = frame_polylines(detections)
        return {key: labels[key] for key in self._label_keys}

    @property
    def _run_options(self) -> PropagationOptions:
        """The options of one ``predict``: the prompt field as keyframes field; failures raise
        (apply_model's ``skip_failures`` decides what happens to them)."""
        return self.options.replace(keyframes_field=self.prompt_field, output_field=None, write_segmentation=None,
                                    skip_failures=False)

    @classmethod
    def _plan(cls, sample, field: str) -> SamplePlan:
        """The sample (a clip's video, with the clip) as the propagation plans it, with its
        keyframes field as apply_model's view shows it."""
        metadata = sample.metadata
        frame_count = getattr(metadata, "total_frame_count", None) if metadata else None
        clip = Clip(sample.id, str(sample.sample_id), *map(int, sample.support)) \
            if isinstance(sample, foc.ClipView) else None
        return SamplePlan(0, clip.sample_id if clip else sample.id, sample.filepath, frame_count, clip=clip,
                          label_frames=sample_label_frames(sample, field),
                          mask_targets=cls._mask_targets(sample, field))

    def _note_segmentation(self, sample, plan: SamplePlan, labels: dict[int, Any]) -> None:
        """Remember, per dataset, one returned Segmentation's id (to find the field apply_model
        stores them in, which the model is not told) and the mask targets of its objects."""
        if not self.segmentation or not labels:
            return
        dataset = root_dataset(getattr(sample, "_view", None) or sample.dataset, clips=True)
        _, ids, targets = self._segmentations.setdefault(dataset.name, (dataset, set(), {}))
        ids.add(next(iter(labels.values()))["segmentation"].id)
        for value, label in segmentation_targets([plan.registry]).items():
            targets.setdefault(value, label)  # the first video's label wins, as in propagate

    def _set_mask_targets(self) -> None:
        """Give each frame field that holds a Segmentation returned by this run the mask targets
        ``0: "background"`` and each object's ``index``: its label, as :func:`deaot_vos.propagate`
        does (without the background target FiftyOne's evaluation scores every frame 1.0)."""
        for dataset, ids, targets in self._segmentations.values():
            dataset.reload()
            for field in written_fields(dataset, fo.Segmentation, ids):
                merge_mask_targets(dataset, field, targets)
        self._segmentations = {}

    @staticmethod
    def _mask_targets(sample, field: str):
        """The keyframes field's mask targets, from the sample's view when it has one (a clip's
        own dataset has none; its view answers with those of the source dataset)."""
        return mask_targets_for(getattr(sample, "_view", None) or sample.dataset, field)


def build_video_model(model: str, checkpoint: Optional[str] = None, prompt_field: Optional[str] = None,
                      segmentation: bool = False, polylines: bool = False, **knobs) -> DeAOTVideoModel:
    """A :class:`DeAOTVideoModel` for the official ``model`` name with ``checkpoint`` (path or
    URL; None: :func:`deaot_vos.resolve_checkpoint`'s order), ``prompt_field`` as the default
    keyframes field and the settings ``knobs`` a zoo model takes
    (:meth:`PropagationOptions.zoo_keywords`); TypeError on another name."""
    unknown = sorted(set(knobs) - set(PropagationOptions.zoo_keywords()))
    if unknown:
        raise TypeError(f"unknown DeAOT zoo model argument(s) {', '.join(unknown)}; accepted: prompt_field, "
                        f"segmentation, polylines, {', '.join(PropagationOptions.zoo_keywords())}")
    keyframes = prompt_field[len("frames."):] if prompt_field and prompt_field.startswith("frames.") else prompt_field
    options = PropagationOptions(keyframes_field=keyframes, model=model, checkpoint=checkpoint, **knobs)
    return DeAOTVideoModel(options, segmentation=segmentation, polylines=polylines)
