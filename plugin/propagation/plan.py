"""Everything a propagation checks before it writes anything, done once: the fields, the
group slice, the model and checkpoint; and what a sample's plan is (:class:`SamplePlan`; its
keyframes parse into exactly the masks given, :func:`parse_keyframes`). Each sample is read and
checked by :mod:`.sample_path`; the parsed keyframes are kept for the run."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import fiftyone as fo

from ..fields import mask_targets_for, root_dataset
from ..keyframe_prompts import check_prompt_model, needs_prompting, prompted_keyframe
from ..labels import KEYFRAME_TYPES, PROMPT_TYPES, Keyframe, KeyframeError, ObjectRegistry, parse_keyframe
from ..weights import resolve_checkpoint, resolve_device
from ..video_io import VideoError
from .clips import Clip, is_clip_view
from .errors import OutputExistsError
from .options import PropagationOptions


def _embedded_type(schema: dict, name: str):
    field = schema.get(name)
    return getattr(field, "document_type", None) if field is not None else None


def check_video_collection(sample_collection, purpose: str = "") -> None:
    """ValueError unless ``sample_collection`` holds videos."""
    if sample_collection.media_type != fo.core.media.VIDEO:
        raise ValueError(f"'{root_dataset(sample_collection, clips=True).name}' is not a video collection (media type "
                         f"{sample_collection.media_type!r}){purpose}")


def _check_keyframes_field(dataset: fo.Dataset, schema: dict, keyframes_field: str) -> None:
    kf_type = _embedded_type(schema, keyframes_field)
    usable = sorted(n for n in schema if _embedded_type(schema, n) in KEYFRAME_TYPES + PROMPT_TYPES)
    hint = f" (frame fields that could be: {', '.join(usable)})" if usable else \
        " (it has no Detections, Segmentation, Polylines or Keypoints frame field)"
    if keyframes_field not in schema:
        raise ValueError(f"keyframes field: dataset '{dataset.name}' has no frame field '{keyframes_field}'{hint}")
    if kf_type not in KEYFRAME_TYPES + PROMPT_TYPES:
        raise ValueError(f"keyframes field: frame field '{keyframes_field}' of dataset '{dataset.name}' holds "
                         f"{getattr(kf_type, '__name__', None) or type(schema[keyframes_field]).__name__}, not "
                         f"Detections (instance masks or boxes), Segmentation, Polylines or Keypoints{hint}")


def check_distinct_fields(keyframes_field: str, output_fields: list[str],
                          what: str = "keyframes_field, output_field, write_segmentation and write_polylines") -> None:
    """ValueError unless the keyframes field and the output fields are all different fields
    (the output would overwrite the keyframes); names with or without ``frames.``."""
    def bare(name: str) -> str:
        return name[len("frames."):] if name.startswith("frames.") else name

    names = [bare(keyframes_field)] + [bare(name) for name in output_fields]
    if len(set(names)) != len(names):
        raise ValueError(f"{what} must be different fields (got {', '.join(repr(n) for n in names)}): writing the "
                         f"output into the keyframes field would overwrite the keyframes")


def output_kinds(output_field: str, write_segmentation: str | None = None,
                 write_polylines: str | None = None) -> list[tuple[str, type]]:
    """(field, label type) of each output a run writes: the Detections, then the optional
    Segmentation and Polylines fields."""
    return [(name, kind) for name, kind in ((output_field, fo.Detections), (write_segmentation, fo.Segmentation),
                                            (write_polylines, fo.Polylines)) if name]


def check_fields(sample_collection, keyframes_field: str, output_field: str,
                 write_segmentation: str | None = None, overwrite: bool = False,
                 write_polylines: str | None = None) -> tuple[str, str, str | None]:
    """Validate the fields' types and that they differ; the names are as
    :class:`PropagationOptions` normalised them (no ``frames.`` prefix). Returns them as
    (keyframes, output, segmentation).

    Raises ``OutputExistsError`` naming the field when an output exists and not ``overwrite``.
    """
    dataset = root_dataset(sample_collection, clips=True)
    check_video_collection(sample_collection)
    if keyframes_field is None or output_field is None:
        raise ValueError("keyframes_field and output_field are required")
    schema = dataset.get_frame_field_schema()
    _check_keyframes_field(dataset, schema, keyframes_field)
    outputs = output_kinds(output_field, write_segmentation, write_polylines)
    check_distinct_fields(keyframes_field, [name for name, _ in outputs])
    for name, kind in outputs:
        if name is None or name not in schema:
            continue
        if not overwrite:
            raise OutputExistsError(f"frame field '{name}' already exists on dataset '{dataset.name}'", field=name,
                                    alternative="choose another output field")
        existing = _embedded_type(schema, name)
        if existing is not kind:
            raise ValueError(f"frame field '{name}' exists with type {getattr(existing, '__name__', existing)}, "
                             f"not {kind.__name__}; delete it or choose another field")
    return keyframes_field, output_field, write_segmentation


def check_group_slices(sample_collection, dataset: fo.Dataset) -> None:
    """Refuse, before any work, a view of a grouped dataset with samples outside the dataset's
    active slice: frames are read and written through the dataset, which only sees that slice."""
    if dataset.media_type != fo.core.media.GROUP:
        return
    active = dataset.group_slice
    videos = sample_collection._source_collection if is_clip_view(sample_collection) else sample_collection
    slices = sorted(set(videos.values(dataset.group_field + ".name")) - {active})
    if slices:
        raise ValueError(
            f"the view holds samples of group slice(s) {', '.join(repr(x) for x in slices)} of grouped dataset "
            f"'{dataset.name}', whose active slice is {active!r}: propagation reads and writes frames through the "
            f"active slice; run one slice at a time with that slice active, e.g. dataset.group_slice = "
            f"{slices[0]!r}; propagate(dataset.select_group_slices({slices[0]!r}), ...)")


def check_clip_view_fields(sample_collection, keyframes_field: str) -> None:
    """Refuse a clip view that hides the keyframes field (a ``to_trajectories`` view keeps only
    its trajectory field): its clips would have no keyframes."""
    if is_clip_view(sample_collection) and keyframes_field not in (sample_collection.get_frame_field_schema() or {}):
        raise ValueError(f"keyframes field: the clip view ({type(sample_collection).__name__}) of dataset "
                         f"'{root_dataset(sample_collection, clips=True).name}' hides frame field '{keyframes_field}' "
                         f"(a to_trajectories view keeps only its trajectory field); use to_clips(...) on the "
                         f"trajectory field instead, or propagate from the trajectory field itself")


@dataclasses.dataclass
class SamplePlan:
    """One sample (or one clip of a clip view) to propagate. ``label_frames``: its keyframes
    field as the view shows it ((frame number, label), sorted; None until read); once loaded
    (:func:`.sample_path.load_sample`), ``keyframes`` maps FiftyOne frame numbers (1-based, the
    video's) to parsed keyframes and ``frames``/``width``/``height`` describe the video (``video``:
    the opened reader when the run keeps it open for the pass); ``existing`` are the frame
    numbers its root-dataset frames had before the run (a view may hide some); ``clip``: the
    clip, whose frames alone are propagated and written; ``result``: its
    :class:`.sample_path.SampleResult` once decided (set by the checks when it will not run)."""

    position: int
    sample_id: str  # the video sample's id (also for a clip)
    filepath: str
    frame_count: Optional[int]  # metadata.total_frame_count
    clip: Optional[Clip] = None
    label_frames: Optional[list] = None
    corrections: Optional[list] = None  # marked labels of the existing output (.corrections)
    mask_targets: Optional[dict] = None
    keyframes: dict[int, Keyframe] = dataclasses.field(default_factory=dict)
    registry: Optional[ObjectRegistry] = None
    existing: set = dataclasses.field(default_factory=set)
    frames: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    video: Any = None  # VideoReader
    result: Any = None  # sample_path.SampleResult

    @property
    def runnable(self) -> bool:
        return self.result is None

    @property
    def loaded(self) -> bool:
        return self.registry is not None

    @property
    def view_id(self) -> str:
        """The id the view knows this unit by: the clip's id in a clip view, else the sample's."""
        return self.clip.clip_id if self.clip is not None else self.sample_id

    @property
    def support(self) -> Optional[tuple[int, int]]:
        """The clip's frames (first, last), or None for a whole video."""
        return self.clip.support if self.clip is not None else None

    @property
    def offset(self) -> int:
        """Video frame number = local frame number + offset (0 for a whole video)."""
        return self.clip.offset if self.clip is not None else 0

    def describe(self) -> str:
        """``sample <id> (<file>)``, with ``, clip <id> (frames a-b)`` for a clip."""
        where = f"sample {self.sample_id} ({os.path.basename(self.filepath)})"
        return where + (f", {self.clip.describe()}" if self.clip is not None else "")

    def local(self) -> "SamplePlan":
        """This plan with its keyframes numbered within its clip (frame 1 = the clip's first
        frame), as the core propagates a clip; itself for a whole video."""
        if not self.offset:
            return self
        return dataclasses.replace(self, keyframes={n - self.offset: kf for n, kf in self.keyframes.items()})


@dataclasses.dataclass
class RunPlan:
    """A checked run: options with normalised names, the resolved device and weights, the
    keyframes' mask targets and every sample's plan (``failures``: the samples that failed)."""

    dataset: fo.Dataset
    options: PropagationOptions
    device: str
    choice: Any  # models.ModelChoice
    mask_targets: Optional[dict]
    samples: list[SamplePlan] = dataclasses.field(default_factory=list)
    failures: list[BaseException] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.samples)


def plan_run(sample_collection, dataset: fo.Dataset, options: PropagationOptions, overwrite: bool) -> RunPlan:
    """Check the fields (``overwrite``: existing outputs may be replaced), the group slice, the
    weights and the prompt model's name; returns the plan without its samples
    (:func:`.sample_path.check_samples` adds them)."""
    keyframes_field, output_field, segmentation = check_fields(
        sample_collection, options.keyframes_field, options.output_field, options.write_segmentation, overwrite,
        options.write_polylines)
    check_group_slices(sample_collection, dataset)
    check_clip_view_fields(sample_collection, keyframes_field)
    device = resolve_device(options.device)
    choice = resolve_checkpoint(options.model, options.checkpoint, allow_random=options.allow_random_weights)
    check_prompt_model(options.prompt_model)
    mask_targets = mask_targets_for(dataset, keyframes_field)
    return RunPlan(dataset, options, device, choice, mask_targets)


def _check_in_video(number: int, reader, meta_count) -> None:
    """KeyframeError for a keyframe beyond the video's frames."""
    count = reader.num_frames
    if number > count:
        capped = (f" (metadata.total_frame_count is {int(meta_count)}, decord decodes {reader.decoded_frames})"
                  if meta_count and int(meta_count) != reader.decoded_frames else "")
        raise KeyframeError(f"keyframe on frame {number} but the video has only {count} frames{capped}: "
                            f"labels of another video, or a wrong frame rate/trim?", number)


def parse_keyframes(sample_plan: SamplePlan, label_frames, reader, mask_targets=None,
                    with_segmentation: bool = False, prompt_model: Any = None) -> None:
    """Parse ``label_frames`` ((frame number, label), sorted) into ``sample_plan``'s keyframes and
    object registry; ``reader`` (an opened video) gives the frame size and count, and the frames
    of keyframes holding boxes or points, which ``prompt_model`` turns into masks first
    (:func:`deaot_vos.keyframe_prompts.prompted_keyframe`). KeyframeError on a label that cannot
    be used, on a keyframe beyond the video's frames and, with ``with_segmentation``, on an
    object index a segmentation label map cannot hold."""
    registry = ObjectRegistry()
    meta_count = sample_plan.frame_count
    for number, value in label_frames:
        if needs_prompting(value):
            _check_in_video(number, reader, meta_count)
            value = prompted_keyframe(value, number, lambda: reader.frame(number), prompt_model)
        kf = parse_keyframe(value, number, reader.height, reader.width, registry, mask_targets)
        if kf is None:
            continue
        _check_in_video(number, reader, meta_count)
        sample_plan.keyframes[number] = kf
    registry.assign_indexes()
    if with_segmentation:
        for info in registry.by_id.values():
            if not 1 <= info.index < 2 ** 31:
                raise KeyframeError(f"object {info.label!r} has index {info.index}, which a segmentation label map "
                                    f"cannot hold (0 is background); use indexes >= 1 or no segmentation field",
                                    info.first_frame)
    sample_plan.registry = registry


def name_clip(err: BaseException, sample_plan: SamplePlan) -> BaseException:
    """Name ``sample_plan``'s clip (if any) in ``err`` (after :func:`.errors.add_context` named the
    sample): in the message of our errors (keyframe, video, label errors: ValueError or
    VideoError), as a note on others. Returns ``err``."""
    clip = sample_plan.clip
    if clip is None or getattr(err, "clip_id", None) == clip.clip_id:
        return err
    err.clip_id = clip.clip_id
    if isinstance(err, (ValueError, VideoError)) and err.args and isinstance(err.args[0], str):
        err.args = (f"{clip.describe()} of {err.args[0]}",) + tuple(err.args[1:])
    elif hasattr(err, "add_note"):
        err.add_note(f"in {clip.describe()} of sample {sample_plan.sample_id}")
    return err
