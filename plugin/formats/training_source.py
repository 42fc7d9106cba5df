"""Training clips from a FiftyOne dataset, for ``python -m deaot_vos train --data fiftyone:<dataset>:<field>``
(:func:`source_from_spec`; the core trainer takes the :class:`FiftyOneVOS` as its clip source).

Video datasets: frame-level label fields (``frames.<field>``) holding ``fo.Segmentation``
label maps (each non-zero value an object), ``fo.Detections`` with instance masks, or filled
``fo.Polylines``, parsed exactly as the propagation operator parses keyframes
(:mod:`deaot_vos.label_frames`: objects matched across frames by ``index``, else by label and
order; renumbered 1..K per sample). Only frames where the field is set are used as ground truth; a set but empty
label means "all background". Frames are decoded with decord.

Image datasets: each sample's image and its label field become a static pre-training
sequence (random affine warps, ``deaot_core.data.synthetic.static_sequence``).

:class:`FiftyOneVOS` samples training clips from the sequences: a reference frame with at
least one object, then ``num_frames - 1`` later labelled frames at random gaps (1..max_gap
labelled frames apart), played backwards half of the time, rescaled (0.7-1.3) and cropped to
the training size, objects renumbered 1..K from the reference frame.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

import fiftyone as fo

from deaot_core.config import get_config
from deaot_core.data.augment import random_scale_crop
from deaot_core.data.synthetic import Clip, clip_rng, relabel_from_reference, static_sequence

from ..fields import describe_sample, frame_field_name, frame_size, mask_targets_for, root_dataset
from ..label_frames import IdMaps, parse_id_maps, read_label_frames, renumber_ids
from ..video_io import open_video

log = logging.getLogger(__name__)

MAX_IDS = 254  # ids 1..254 fit uint8; 255 marks "ignore"
FIFTYONE_PREFIX = "fiftyone:"
WHAT = "train_field"  # the field argument, in messages


@dataclass
class VOSSequence:
    """Ground truth of one sample: label maps of its labelled frames at media resolution."""

    name: str
    filepath: str
    media_type: str  # "video" or "image"
    frame_numbers: list[int]  # 1-based, sorted (image samples: [1])
    labels: list[np.ndarray]  # (H, W) uint8 per labelled frame, ids consistent within the sample
    total_frames: int | None = None
    object_names: dict[int, str | None] = field(default_factory=dict)

    @property
    def num_objects(self) -> int:
        return max((int(l[l != 255].max()) if (l != 255).any() else 0) for l in self.labels) if self.labels else 0


def _has_object(label_map: np.ndarray) -> bool:
    return bool(((label_map > 0) & (label_map != 255)).any())


def _label_field(dataset, field_name: str) -> tuple[str, bool]:
    """(the field's name (:func:`deaot_vos.fields.frame_field_name`), whether it is a frame field)."""
    name = frame_field_name(field_name, WHAT)
    if dataset.media_type == "video":
        if not dataset.has_frame_field(name):
            raise ValueError(f"dataset {dataset.name!r} has no frame field {name!r}; frame fields: "
                             f"{sorted(dataset.get_frame_field_schema())}")
        return name, True
    if dataset.media_type == "image":
        if not dataset.has_sample_field(name):
            raise ValueError(f"dataset {dataset.name!r} has no field {name!r}")
        return name, False
    raise ValueError(f"dataset {dataset.name!r} has media type {dataset.media_type!r}; need videos or images")


def _compact_ids(maps: IdMaps, name: str) -> tuple[list[np.ndarray], dict[int, str | None]]:
    """The id maps with the objects' indexes renumbered 1..K (uint8, consistent within the
    sample; beyond :data:`MAX_IDS` objects dropped) and the new id -> label."""
    indexes = sorted({int(v) for m in maps.maps.values() for v in np.unique(m) if v != 0})
    if len(indexes) > MAX_IDS:
        log.warning("%s: %d objects, keeping the first %d", name, len(indexes), MAX_IDS)
        indexes = indexes[:MAX_IDS]
    numbering = {index: new_id for new_id, index in enumerate(indexes, start=1)}
    labels = [renumber_ids(maps.maps[n], numbering)[0] for n in maps.frames]
    return labels, {new_id: maps.labels.get(index) for index, new_id in numbering.items()}


def _read_sequence(collection, sample_id: str, filepath: str, metadata, field_name: str, is_video: bool,
                   mask_targets) -> VOSSequence | None:
    """One sample's labelled frames (:func:`deaot_vos.label_frames.read_label_frames`) as a
    :class:`VOSSequence`; None when none is labelled."""
    media_type = "video" if is_video else "image"
    frames = read_label_frames(collection, sample_id, field_name)
    if not frames:
        log.info("%s: no labelled frame in %r; skipped", filepath, field_name)
        return None
    height, width = frame_size(sample_id, filepath, metadata, media_type)
    maps = parse_id_maps(frames, height, width, mask_targets, require_index=False,
                         context=(sample_id, filepath, field_name, WHAT))
    labels, names = _compact_ids(maps, describe_sample(sample_id, filepath))
    total = getattr(metadata, "total_frame_count", None) if is_video and metadata is not None else None
    return VOSSequence(name=str(sample_id), filepath=filepath, media_type=media_type, frame_numbers=list(maps.frames),
                       labels=labels, total_frames=total, object_names=names)


def read_sequences(dataset, field_name: str, mask_targets: dict | None = None) -> list[VOSSequence]:
    """Every sample of ``dataset`` (a FiftyOne dataset or view, or its name) with labels in
    ``field_name`` as a :class:`VOSSequence`. Samples without any labelled frame are skipped."""
    if isinstance(dataset, str):
        dataset = fo.load_dataset(dataset)
    name, is_video = _label_field(dataset, field_name)
    if mask_targets is None:
        mask_targets = mask_targets_for(root_dataset(dataset), name, frame_field=is_video)
    ids, paths, metas = dataset.values(["id", "filepath", "metadata"])
    sequences = [_read_sequence(dataset, sid, path, meta, name, is_video, mask_targets)
                 for sid, path, meta in zip(ids, paths, metas)]
    sequences = [seq for seq in sequences if seq is not None]
    if not sequences:
        raise ValueError(f"no sample of {dataset.name!r} has labels in {field_name!r}")
    return sequences


class FiftyOneVOS:
    """Indexable source of training clips from :class:`VOSSequence` s; item i is a function of
    (seed, i) (and the decoded frames)."""

    def __init__(self, sequences: list[VOSSequence], num_frames: int = 5, height: int = 225, width: int = 225,
                 seed: int = 0, max_gap: int = 3, reverse_prob: float = 0.5,
                 scale_range: tuple[float, float] = (0.7, 1.3), max_objects: int = 10, cache_videos: int = 4):
        if not sequences:
            raise ValueError("no training sequences")
        self.sequences = sequences
        self.num_frames, self.height, self.width = num_frames, height, width
        self.seed, self.max_gap, self.reverse_prob = seed, max(1, int(max_gap)), reverse_prob
        self.scale_range, self.max_objects = scale_range, max_objects
        # Sequences are drawn in proportion to their labelled frames.
        weights = np.array([len(s.frame_numbers) for s in sequences], np.float64)
        self.weights = weights / weights.sum()
        self._has_objects = [[_has_object(l) for l in s.labels] for s in sequences]
        self._readers: OrderedDict[str, Any] = OrderedDict()
        self._cache_videos = cache_videos

    def __getstate__(self) -> dict:
        # data worker processes (spawned) open their own video readers
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()
        return state

    @classmethod
    def from_dataset(cls, dataset, field_name: str, **kwargs) -> "FiftyOneVOS":
        return cls(read_sequences(dataset, field_name), **kwargs)

    def __len__(self) -> int:
        return 2 ** 62

    # -- media -----------------------------------------------------------------------------------
    def _reader(self, seq: VOSSequence):
        reader = self._readers.get(seq.filepath)
        if reader is None:
            reader = open_video(seq.filepath, seq.total_frames)
            self._readers[seq.filepath] = reader
            while len(self._readers) > self._cache_videos:
                self._readers.popitem(last=False)
        else:
            self._readers.move_to_end(seq.filepath)
        return reader

    def _frames(self, seq: VOSSequence, numbers: list[int]) -> np.ndarray:
        reader = self._reader(seq)
        by_number = {n: reader.frame(n) for n in sorted(set(numbers))}
        frames = np.stack([by_number[n] for n in numbers])
        h, w = seq.labels[0].shape
        if frames.shape[1:3] != (h, w):  # labels were rendered at the metadata size
            frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames])
        return frames

    # -- sampling --------------------------------------------------------------------------------
    def _pick(self, seq_index: int, rng: np.random.Generator) -> list[int]:
        """Positions (into frame_numbers) of the reference + following frames."""
        has_objects = self._has_objects[seq_index]
        count = len(has_objects)
        order = list(range(count))
        if rng.random() < self.reverse_prob:
            order.reverse()
        with_objects = [i for i, pos in enumerate(order) if has_objects[pos]]
        if not with_objects:
            return []
        # Prefer references that leave room for the clip; fall back to any with objects.
        room = [i for i in with_objects if i + self.num_frames - 1 < count] or with_objects
        start = room[int(rng.integers(len(room)))]
        picks, cur = [start], start
        for _ in range(self.num_frames - 1):
            gap = int(rng.integers(1, self.max_gap + 1))
            cur = min(cur + gap, count - 1)
            picks.append(cur)
        return [order[i] for i in picks]

    def __getitem__(self, index: int) -> Clip:
        rng = clip_rng([self.seed, 104729], index)
        for _ in range(20):
            seq_index = int(rng.choice(len(self.sequences), p=self.weights))
            seq = self.sequences[seq_index]
            if seq.media_type == "image":
                image = cv2.imread(seq.filepath, cv2.IMREAD_COLOR)
                if image is None:
                    raise FileNotFoundError(f"cannot read image {seq.filepath}")
                image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
                label = seq.labels[0]
                if image.shape[:2] != label.shape:
                    image = cv2.resize(image, (label.shape[1], label.shape[0]), interpolation=cv2.INTER_LINEAR)
                clip = static_sequence(image, label, rng, self.num_frames, self.height, self.width, self.max_objects)
                if clip.num_objects > 0:
                    return clip
                continue
            positions = self._pick(seq_index, rng)
            if not positions:
                continue
            numbers = [seq.frame_numbers[p] for p in positions]
            frames = self._frames(seq, numbers)
            labels = np.stack([seq.labels[p] for p in positions])
            frames, labels = random_scale_crop(frames, labels, rng, self.height, self.width, self.scale_range)
            labels = relabel_from_reference(labels, rng, self.max_objects)
            if _has_object(labels[0]):
                return Clip(np.ascontiguousarray(frames), np.ascontiguousarray(labels))
        raise RuntimeError("could not sample a clip with an object in its reference frame in 20 tries; "
                           "are the labels empty?")


def source_from_spec(cfg) -> FiftyOneVOS:
    """The :class:`FiftyOneVOS` that ``cfg.data`` = ``fiftyone:<dataset>:<field>`` names, sized by the
    training config ``cfg`` (a ``deaot_core.train.TrainConfig``: seq_len, height, width, seed, max_gap,
    model); ``ValueError`` for another form."""
    parts = cfg.data.split(":")
    if len(parts) != 3 or parts[0] + ":" != FIFTYONE_PREFIX or not parts[1] or not parts[2]:
        raise ValueError(f"--data needs the form {FIFTYONE_PREFIX}<dataset_name>:<field>, got {cfg.data!r}")
    max_objects = get_config(cfg.model).max_objects
    return FiftyOneVOS.from_dataset(parts[1], parts[2], num_frames=cfg.seq_len, height=cfg.height, width=cfg.width,
                                    seed=cfg.seed, max_gap=cfg.max_gap, max_objects=max_objects)
