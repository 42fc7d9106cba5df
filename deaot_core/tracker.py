"""Streaming video object segmentation: ``Tracker.step(frame, mask)`` one frame at a time."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Collection

import numpy as np
import torch
import torch.nn.functional as F

from .devices import (IMAGE_MEAN, IMAGE_STD, PRECISIONS, check_precision, device_fallbacks, native_cpu_precision,
                      resolve_device)
from .engine import GroupEngine
from .modeling.model import VOSModel
from .threads import ThreadGovernor

MIN_EDGE = 16  # the smallest network input side (one feature cell at stride 16)
MIN_TEST_SCALE, MAX_TEST_SCALE = 0.1, 4.0


def _number(value) -> float:
    """``value`` as a float; NaN for anything that is not a number (bools included)."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _optional_int(name: str, value, minimum: int) -> int | None:
    if value is None:
        return None
    number = _number(value)
    if not (math.isfinite(number) and number.is_integer() and number >= minimum):
        raise ValueError(f"{name} must be a number >= {minimum} (a whole number, or None), got {value!r}")
    return int(number)


def _optional_edge(name: str, value) -> float | None:
    if value is None:
        return None
    if not (math.isfinite(_number(value)) and _number(value) >= MIN_EDGE):
        raise ValueError(f"{name} must be a number >= {MIN_EDGE} (pixels, or None), got {value!r}")
    return value


def _test_scales(value) -> tuple[float, ...]:
    """A tuple of scales from a sequence, a number or a comma-separated string."""
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, (int, float)) else value
    try:
        if any(isinstance(item, bool) for item in items):
            raise TypeError("a bool is not a scale")
        scales = tuple(float(item) for item in items)
    except (TypeError, ValueError):
        raise ValueError(f"test_scales must be numbers in [{MIN_TEST_SCALE}, {MAX_TEST_SCALE}] "
                         f"(e.g. 0.8,1.0,1.2), got {value!r}") from None
    if not scales or any(not (MIN_TEST_SCALE <= s <= MAX_TEST_SCALE) for s in scales):  # NaN fails too
        raise ValueError(f"test_scales must be one or more numbers in [{MIN_TEST_SCALE}, {MAX_TEST_SCALE}], "
                         f"got {value!r}")
    return scales


@dataclass(frozen=True)
class TrackerOptions:
    """How a :class:`Tracker` runs, validated once here (see :class:`Tracker` for each option).

    ``test_scales`` also accepts one number or a comma-separated string ("0.8,1,1.2"); it is
    kept as a tuple of floats."""

    long_term_gap: int | None = None
    max_long_term_frames: int | None = None
    max_short_edge: float | None = None
    max_long_edge: float | None = 1040
    precision: str = "fp32"
    short_term_skip: int | None = None
    channels_last: bool | None = None
    compile: bool = False
    test_scales: tuple[float, ...] = (1.0,)
    test_flip: bool = False
    threads: int | None = None
    batch_groups: bool | None = None
    group_size: int | None = None

    def __post_init__(self) -> None:
        check_precision(self.precision)
        normalised = dict(
            long_term_gap=_optional_int("long_term_gap", self.long_term_gap, 1),
            max_long_term_frames=_optional_int("max_long_term_frames", self.max_long_term_frames, 1),
            short_term_skip=_optional_int("short_term_skip", self.short_term_skip, 1),
            threads=_optional_int("threads", self.threads, 1),
            group_size=_optional_int("group_size", self.group_size, 1),
            max_short_edge=_optional_edge("max_short_edge", self.max_short_edge),
            max_long_edge=_optional_edge("max_long_edge", self.max_long_edge),
            channels_last=None if self.channels_last is None else bool(self.channels_last),
            compile=bool(self.compile), test_flip=bool(self.test_flip), test_scales=_test_scales(self.test_scales),
            batch_groups=None if self.batch_groups is None else bool(self.batch_groups))
        for name, value in normalised.items():
            object.__setattr__(self, name, value)

    def replace(self, **changes) -> "TrackerOptions":
        """A copy with ``changes`` applied (validated again), e.g. a smaller ``max_long_edge``."""
        return dataclasses.replace(self, **changes)


def network_size(height: int, width: int, max_short_edge: float | None, max_long_edge: float | None,
                 align_corners: bool, stride: int = 16, scale: float = 1.0) -> tuple[int, int]:
    """Input size of the official test-time resize policy for an (height, width) frame.

    The short edge is limited to ``max_short_edge``, then the long edge to ``max_long_edge``;
    then both sides are multiplied by ``scale`` (the official multi-scale test) and each is
    rounded to the nearest 16k+1 (align_corners) or multiple of 16.
    """
    h, w = float(height), float(width)
    if max_short_edge is not None and min(h, w) > max_short_edge:
        limit = float(max_short_edge) / min(h, w)
        h, w = h * limit, w * limit
    if max_long_edge is not None and max(h, w) > max_long_edge:
        limit = float(max_long_edge) / max(h, w)
        h, w = h * limit, w * limit
    sides = []
    for side in (int(h * scale), int(w * scale)):
        if align_corners and (side - 1) % stride:
            side = int(np.around((side - 1) / stride) * stride + 1)
        elif not align_corners and side % stride:
            side = int(np.around(side / stride) * stride)
        sides.append(max(side, stride + 1 if align_corners else stride))
    return sides[0], sides[1]


def _resize_image(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of an (H, W, 3) image to ``size`` (h, w), as the official pipeline (OpenCV)."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - OpenCV ships with FiftyOne
        tensor = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
        return F.interpolate(tensor, size=size, mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    return cv2.resize(frame.astype(np.float32), dsize=(size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def merge_groups(logits: list[torch.Tensor], max_objects: int) -> torch.Tensor:
    """Official soft aggregation of identity groups: (B, 1+max_objects, H, W) each ->
    (B, 1+max_objects*G, H, W) logits; background = product of the groups' backgrounds."""
    if len(logits) == 1:
        return logits[0]
    probs = [torch.softmax(x, dim=1) for x in logits]
    background = torch.prod(torch.cat([p[:, :1] for p in probs], dim=1), dim=1, keepdim=True)
    merged = torch.cat([background] + [p[:, 1:1 + max_objects] for p in probs], dim=1)
    return torch.logit(merged.clamp(1e-5, 1 - 1e-5))


class _CompiledModel:
    """A view of a ``VOSModel`` whose per-frame passes (encoder, propagation, decoder) run
    through ``torch.compile``; everything else is the model's own. The model is not changed.

    With ``freeze`` the weights become constants of the compiled graphs (inductor "freezing":
    batch norms folded into convolutions, weights pre-packed for the CPU kernels), which is
    what makes the ResNet encoders faster on CPU. Do not change the weights of a model while a
    tracker compiled from it is in use (a new tracker sees the new weights).
    """

    def __init__(self, model: VOSModel, freeze: bool = True) -> None:
        self._model = model
        options = {"freezing": True} if freeze else None
        self.encode_image = torch.compile(model.encode_image, options=options)
        self.propagate = torch.compile(model.propagate, options=options)
        self.decode = torch.compile(model.decode, options=options)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


@dataclass
class _View:
    """One test-time view of the video (a network input scale, maybe mirrored) with its own memory.

    ``groups`` are the memory engines; engine i runs ``sizes[i]`` consecutive identity groups as
    one batch (the official engine has one per group: all sizes 1 without ``batch_groups``)."""

    scale: float
    flip: bool
    input_size: tuple[int, int] | None = None
    groups: list[GroupEngine] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def batches(self, parts: list[tuple[torch.Tensor, int]]):
        """(engine, labels (B, h, w), counts) per engine, from one (labels (1, h, w), count) per group."""
        start = 0
        for engine, size in zip(self.groups, self.sizes):
            chunk = parts[start:start + size]
            start += size
            yield engine, torch.cat([labels for labels, _ in chunk]), [count for _, count in chunk]


class Tracker:
    """Propagates object masks through a video, one frame per ``step``.

    Objects are ids 1..K in (H, W) label maps; any K (groups of ``group_size`` identities
    run through the same network and are merged). The first ``step`` needs a mask; a mask on a
    later frame adds the objects that appear there and is authoritative for the ids it gives
    (``step``'s ``objects``). For a whole video with the caller's own ids, see
    :func:`deaot_core.propagate_video`.

    Args:
        model: a ``VOSModel`` (``deaot_core.build_model``) with weights loaded.
        device: "cpu", "cuda", "cuda:1", "mps" or "auto" (:func:`deaot_core.resolve_device`); what
            ``mps`` lacks falls back with a ``RuntimeWarning`` (:func:`deaot_core.devices.device_fallbacks`).
        options: a :class:`TrackerOptions`; or give its fields as keyword arguments (they
            replace the fields of ``options`` when both are given). The fields:
        long_term_gap: frames between long-term memory frames (default: the variant's).
        max_long_term_frames: cap on long-term memory frames (None = unbounded, as official).
        max_short_edge / max_long_edge: the official resize limits (defaults: None / 1040).
        precision: "fp32", or "fp16" / "bf16" autocast (CUDA, CPU, mps). On CPUs with AMX, bf16 (with
            channels-last) is the fast path (speed and agreement: BENCHMARKS.md). On a CPU without
            native kernels for it (:func:`native_cpu_precision`, e.g. AVX2-only) it is emulated,
            much slower than fp32: a ``RuntimeWarning`` says so.
        channels_last: run convolutions in channels-last layout. None (default): on for fp16 /
            bf16, where oneDNN's and cuDNN's fast reduced-precision kernels want it, off for fp32,
            whose contiguous kernels keep the official numerics (channels-last fp32 rounds
            differently).
        compile: run the encoder, the propagation and the decoder through ``torch.compile``
            with the weights frozen into the graphs (opt-in: the first frames of a video and every
            new memory length compile first; results agree with eager to float rounding; figures
            in BENCHMARKS.md). The model's weights must not change while the tracker is used.
        test_scales / test_flip: test-time augmentation as the official evaluator's ``--ms`` and
            ``--flip``: one view of the video per scale (times the resized input size), and with
            ``test_flip`` a mirrored view of each. Every view keeps its own memory, written with
            its own prediction; the output is the mean of the views' probabilities. Costs one
            full pass (and one memory) per view. Default: one view, scale 1, no flip.
        batch_groups: run the identity groups created on the same frame (e.g. 44 objects: 5 groups
            of 10) as one batch instead of one after the other: what they share (DeAOT's visual
            branch: the first layer's attention weights, memory keys, the decoder's shortcuts; the
            label patches of the identity embedding) is computed once; the same results to float
            rounding. On the CPU the per-group rest still runs group by group, which keeps each
            group's maps in the cache. Groups added later by a new object start their own batch.
            None (default): on; False: the official one-engine-per-group order.
        group_size: identities per group (at most the model's ``max_objects``, 10). None
            (default): the checkpoint's ``group_size`` (what its own measurements favour: 5 for
            the shipped demo weights), else its ``identity_slots`` (the slots its training used),
            else ``max_objects``. Smaller groups mean more groups: the work per frame grows with
            their number.
        threads: CPU threads for torch inside ``step``. None (default): automatic, the cores
            this process may use less those other processes keep busy, measured again every half
            second (:class:`deaot_core.ThreadGovernor`); a number fixes it. Results do not depend
            on it beyond float rounding.
    """

    def __init__(self, model: VOSModel, device: str | torch.device = "cpu", options: TrackerOptions | None = None,
                 **option_values):
        if options is None:
            options = TrackerOptions(**option_values)
        elif not isinstance(options, TrackerOptions):
            raise TypeError(f"options must be a TrackerOptions (or give its fields as keyword arguments), "
                            f"got {type(options).__name__}")
        elif option_values:
            options = options.replace(**option_values)
        self.options = options
        self.device = torch.device(resolve_device(device))
        precision, use_compile, notes = device_fallbacks(self.device, options.precision, options.compile)
        for note in notes:  # what the device lacks (mps) falls back, said once per tracker
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        channels_last = options.channels_last
        if channels_last is None:
            channels_last = options.precision != "fp32"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        if use_compile:
            self.model = _CompiledModel(self.model)
        self.cfg = model.cfg
        self.long_term_gap = int(options.long_term_gap or self.cfg.long_term_gap)
        self.short_term_skip = int(options.short_term_skip or self.cfg.short_term_skip)
        self.max_long_term_frames = options.max_long_term_frames
        self.max_short_edge, self.max_long_edge = options.max_short_edge, options.max_long_edge
        self.precision = precision
        if self.device.type == "cpu" and not native_cpu_precision(self.precision):
            warnings.warn(f"precision={self.precision!r}: this CPU has no native {self.precision} kernels "
                          f"({torch.backends.cpu.get_cpu_capability()}), so it is emulated and runs about 10x "
                          f"slower than 'fp32' here", RuntimeWarning, stacklevel=2)
        self.test_scales, self.test_flip = options.test_scales, options.test_flip
        self.threads = ThreadGovernor(options.threads)
        self.batch_groups = options.batch_groups if options.batch_groups is not None else True
        self.group_size = int(options.group_size or getattr(model, "preferred_group_size", None)
                              or getattr(model, "identity_slots", None) or self.cfg.max_objects)
        if not 1 <= self.group_size <= self.cfg.max_objects:
            raise ValueError(f"group_size must be 1..{self.cfg.max_objects} (the model's identity slots), "
                             f"got {self.group_size}")
        self._mean = torch.tensor(IMAGE_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGE_STD, device=self.device).view(1, 3, 1, 1)
        self.reset()

    # -- state ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the video: the next ``step`` starts a new one."""
        # Official order: each scale, followed by its mirrored view when flipping.
        self.views = [_View(scale, flip) for scale in self.test_scales
                      for flip in ((False, True) if self.test_flip else (False,))]
        self.num_objects = 0
        self.frame_index = -1
        self.frame_size: tuple[int, int] | None = None
        self._label: torch.Tensor | None = None

    @property
    def groups(self) -> list[GroupEngine]:
        """The memory engines of the first view, one per batch of identity groups."""
        return self.views[0].groups

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(h, w) network input size of the first view (None before the first frame)."""
        return self.views[0].input_size

    @property
    def label(self) -> np.ndarray:
        """(H, W) int64 label map kept for the last frame (the prediction merged with its mask)."""
        if self._label is None:
            raise RuntimeError("no frame has been processed yet")
        return self._label.cpu().numpy().astype(np.int64)

    @property
    def long_term_frames(self) -> int:
        """Frames held in long-term memory (the first group's)."""
        return self.groups[0].long_term_frames if self.groups else 0

    def state(self, device: str | torch.device | None = "cpu") -> dict:
        """Everything the next ``step`` depends on, as plain data (tensors moved to ``device``,
        None: left where they are; numbers, lists, dicts: ``torch.save``-able and loadable with
        ``weights_only=True``), for :meth:`load_state` on a tracker of the same model and
        options: the continuation is then the same as if this tracker had gone on."""
        label = self._label if self._label is None or device is None else self._label.to(device)
        return dict(frame_index=self.frame_index, num_objects=self.num_objects,
                    frame_size=None if self.frame_size is None else list(self.frame_size), label=label,
                    views=[dict(scale=v.scale, flip=v.flip,
                                input_size=None if v.input_size is None else list(v.input_size),
                                groups=[g.state(device) for g in v.groups]) for v in self.views])

    def load_state(self, state: dict) -> None:
        """Continue from a :meth:`state` of a tracker with the same model and options (ValueError
        when its test-time views differ)."""
        views = [(float(v["scale"]), bool(v["flip"])) for v in state["views"]]
        if views != [(v.scale, v.flip) for v in self.views]:
            raise ValueError(f"the state has the test-time views {views}, this tracker "
                             f"{[(v.scale, v.flip) for v in self.views]}")
        self.reset()
        self.frame_index, self.num_objects = int(state["frame_index"]), int(state["num_objects"])
        self.frame_size = None if state["frame_size"] is None else tuple(int(x) for x in state["frame_size"])
        self._label = None if state["label"] is None else state["label"].to(self.device)
        for view, saved in zip(self.views, state["views"]):
            view.input_size = None if saved["input_size"] is None else tuple(int(x) for x in saved["input_size"])
            for group_state in saved["groups"]:
                group = GroupEngine(self.model, self.long_term_gap, self.short_term_skip, self.max_long_term_frames)
                group.load_state(group_state, self.device)
                view.groups.append(group)
                view.sizes.append(len(group.num_objects))

    # -- helpers --------------------------------------------------------------------------------
    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _prepare_images(self, frame: np.ndarray) -> list[torch.Tensor]:
        """One normalised (1, 3, h, w) network input per view."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frame must be an (H, W, 3) uint8 RGB array, got {frame.dtype} {frame.shape}")
        if self.frame_size is None:
            self.frame_size = frame.shape[:2]
            for view in self.views:
                view.input_size = network_size(*self.frame_size, self.max_short_edge, self.max_long_edge,
                                               self.cfg.align_corners, scale=view.scale)
        elif frame.shape[:2] != self.frame_size:
            raise ValueError(f"frame {self.frame_index + 1} is {frame.shape[:2]}, the video is {self.frame_size}")
        by_size: dict[tuple[int, int], torch.Tensor] = {}
        images = []
        for view in self.views:
            if view.input_size not in by_size:
                size = view.input_size
                image = frame if tuple(frame.shape[:2]) == size else _resize_image(frame, size)
                image = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float()
                by_size[size] = (image / 255.0 - self._mean) / self._std
            image = by_size[view.input_size]
            if view.flip:
                image = torch.flip(image, dims=[3])
            images.append(image.contiguous(memory_format=self.memory_format))
        return images

    def _prepare_mask(self, mask) -> torch.Tensor:
        mask = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
        if mask.ndim != 2 or tuple(mask.shape) != tuple(self.frame_size):
            raise ValueError(f"mask must be an (H, W) label map of the frame's size {tuple(self.frame_size)}, "
                             f"got shape {tuple(mask.shape)}")
        if mask.is_floating_point() or mask.dtype == torch.bool:
            if mask.dtype != torch.bool and not torch.equal(mask, mask.round()):
                raise ValueError("mask must hold integer object ids")
        mask = mask.to(self.device).long()
        if mask.numel() and int(mask.min()) < 0:
            raise ValueError("mask ids must be >= 0 (0 = background)")
        return mask

    @staticmethod
    def _to_input(view: _View, label: torch.Tensor) -> torch.Tensor:
        """(H, W) label at frame size -> (1, h, w) at the view's input size (nearest, mirrored)."""
        if tuple(label.shape) != tuple(view.input_size):
            label = F.interpolate(label[None, None].float(), size=view.input_size, mode="nearest")[0, 0].long()
        return (torch.flip(label, dims=[1]) if view.flip else label)[None]

    def _split(self, view: _View, label: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        """Per group: (labels with ids 1..max_objects, object count), as the official engine."""
        per_group = self.group_size
        parts = []
        for g in range(sum(view.sizes)):
            start = g * per_group
            inside = (label > start) & (label <= start + per_group)
            parts.append((torch.where(inside, label - start, torch.zeros_like(label)),
                          min(per_group, self.num_objects - start)))
        return parts

    def _batched(self, feats: list[torch.Tensor], size: int) -> list[torch.Tensor]:
        """The (1, C, h, w) features of a frame for a batch of ``size`` identity groups. DeAOT takes
        them as they are: its visual branch (the first layer's attention weights, the decoder's
        shortcuts) is computed once for all groups; AOT's layers mix identities from the first."""
        if size == 1 or self.cfg.is_deaot:
            return feats
        return [f.expand(size, -1, -1, -1).contiguous(memory_format=self.memory_format) for f in feats]

    def _add_reference(self, view: _View, feats, label: torch.Tensor) -> None:
        missing = max(1, math.ceil(self.num_objects / self.group_size)) - sum(view.sizes)
        if missing > 0:  # new groups: one batch (or one engine each, as the official engine)
            for size in [missing] if self.batch_groups else [1] * missing:
                view.groups.append(GroupEngine(self.model, self.long_term_gap, self.short_term_skip,
                                               self.max_long_term_frames))
                view.sizes.append(size)
        for engine, labels, counts in view.batches(self._split(view, self._to_input(view, label))):
            engine.add_reference(self._batched(feats, len(counts)), labels, counts, self.frame_index)

    def _view_probs(self, view: _View, feats) -> torch.Tensor:
        """(1+K', H, W) probabilities of one view at frame size, in the frame's orientation."""
        logits = []
        for engine, size in zip(view.groups, view.sizes):
            engine.propagate(self._batched(feats, size))
            low = engine.decode()
            # unused ids sit at -1e10: their softmax weight is exactly 0, so dropping them before
            # the full-size upsampling changes no value and saves most of its work
            low = low[:, :1 + (max(engine.num_objects) if view.sizes == [1] else self.group_size)]
            if view.flip:
                low = torch.flip(low, dims=[3])
            high = F.interpolate(low, size=self.frame_size, mode="bilinear", align_corners=self.cfg.align_corners)
            logits.extend(high.split(1))
        return torch.softmax(merge_groups(logits, self.group_size), dim=1)[0]

    @staticmethod
    def _argmax(probs: torch.Tensor) -> torch.Tensor:
        # argmax over a trailing contiguous dim is ~20x faster on CPU than over dim 0.
        return probs.permute(1, 2, 0).contiguous().argmax(dim=-1)

    # -- the API --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, frame: np.ndarray, mask=None, objects: Collection[int] | None = None) -> torch.Tensor:
        """Process the next frame.

        frame: (H, W, 3) uint8 RGB; mask: (H, W) integer label map (0 = background) or None.
        objects: the ids ``mask`` gives (None: the ids with pixels in it); an id listed without
        pixels in ``mask`` is given as absent. The mask is authoritative for the ids it gives:
        they take exactly its pixels, their predicted pixels elsewhere become background; other
        objects keep their prediction.

        Returns (K+1, H, W) float32 probabilities on the tracker's device, channel 0 background,
        over the K objects tracked before this frame's mask (the model's own prediction, averaged
        over the test-time views; on the first frame, the one-hot of the mask). ``label`` holds
        the label map after the mask.
        """
        with self.threads.use():
            return self._step(frame, mask, objects)

    def _step(self, frame: np.ndarray, mask, objects: Collection[int] | None) -> torch.Tensor:
        images = self._prepare_images(frame)
        mask_t = self._prepare_mask(mask) if mask is not None else None
        if objects is not None and mask_t is None:
            raise ValueError("objects needs a mask (the ids it gives)")
        self.frame_index += 1
        with self._autocast():
            feats = [self.model.encode_image(image) for image in images]
            if not self.groups:
                if mask_t is None:
                    raise ValueError("the first frame needs a mask")
                return self._start(feats, mask_t)
            view_probs = [self._view_probs(view, view_feats) for view, view_feats in zip(self.views, feats)]
            probs = view_probs[0] if len(view_probs) == 1 else torch.stack(view_probs).mean(dim=0)
            label = self._argmax(probs)
            # With several views, each view's memory takes the view's own prediction, as the
            # official evaluator does; a single view's own prediction is ``label``.
            own_labels = [self._argmax(p) for p in view_probs] if len(view_probs) > 1 else []
            output = probs[:self.num_objects + 1]
            given = self._given_ids(mask_t, objects) if mask_t is not None else None
            if given is not None and given.numel():
                label = self._apply_mask(label, mask_t, given)
                own_labels = [self._apply_mask(x, mask_t, given) for x in own_labels]
            if mask_t is not None and bool((mask_t > 0).any()):
                self.num_objects = max(self.num_objects, int(label.max()))
                for view, view_feats, view_label in zip(self.views, feats, own_labels or [label]):
                    self._add_reference(view, view_feats, view_label)
            else:
                for view, view_label in zip(self.views, own_labels or [label]):
                    for engine, labels, _ in view.batches(self._split(view, self._to_input(view, view_label))):
                        engine.update_memory(self.frame_index, labels)
            self._label = label
        return output.float()

    def _start(self, feats: list, mask: torch.Tensor) -> torch.Tensor:
        """The first frame: ``mask`` is the reference of every view; returns its one-hot."""
        self.num_objects = int(mask.max())
        for view, view_feats in zip(self.views, feats):
            self._add_reference(view, view_feats, mask)
        self._label = mask
        ids = torch.arange(self.num_objects + 1, device=self.device).view(-1, 1, 1)
        return (mask[None] == ids).float()

    def _given_ids(self, mask: torch.Tensor, objects: Collection[int] | None) -> torch.Tensor:
        """The ids ``mask`` gives: those with pixels, and ``objects`` (1-D int64 on the device)."""
        present = torch.unique(mask[mask > 0])
        if objects is None:
            return present
        listed = torch.as_tensor([int(i) for i in objects], dtype=torch.long, device=self.device)
        if listed.numel() and int(listed.min()) < 1:
            raise ValueError(f"objects must be ids >= 1, got {sorted(int(i) for i in objects)}")
        return torch.unique(torch.cat([present, listed]))

    @staticmethod
    def _apply_mask(label: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``label`` with the given ``ids`` taken from ``mask``: their pixels elsewhere become
        background; other objects keep their label."""
        given = torch.isin(label, ids)
        return torch.where(mask > 0, mask, torch.where(given, torch.zeros_like(label), label))
