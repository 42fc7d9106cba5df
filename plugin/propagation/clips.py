"""Clip views (``to_clips``, ``to_trajectories``): each clip propagates within its own frames, from
the keyframes inside it, as a video of its own; only its frames are written.

A clip view's ids are clip ids, not sample ids: everything that reads or writes the root dataset
keys by the clip's video sample (:attr:`Clip.sample_id`) and restricts itself to the clip's
frame numbers (its ``support``, 1-based and inclusive, the video's own numbering). Clips of the
same video that share frames are refused (:func:`check_overlaps`): two runs of one frame would
race for one output value.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

import fiftyone.core.clips as foc

__all__ = ["Clip", "ClipFrames", "ClipOverlapError", "is_clip_view", "view_rows", "check_overlaps", "clip_frames"]


class ClipOverlapError(ValueError):
    """Two clips of the same video share frames (the message names both clips and the sample)."""


@dataclasses.dataclass(frozen=True)
class Clip:
    """One clip of a clip view: its id, its video sample's id and its frames ``first..last``."""

    clip_id: str
    sample_id: str
    first: int
    last: int

    @property
    def offset(self) -> int:
        """Video frame number = clip frame number + offset."""
        return self.first - 1

    @property
    def support(self) -> tuple[int, int]:
        return self.first, self.last

    def describe(self) -> str:
        """``clip <id> (frames a-b)``: how messages name a clip."""
        return f"clip {self.clip_id} (frames {self.first}-{self.last})"


def is_clip_view(sample_collection) -> bool:
    """Whether ``sample_collection`` is a clip view (``to_clips``; ``to_trajectories`` is one too)."""
    return isinstance(sample_collection, foc.ClipsView)


def view_rows(sample_collection) -> list[tuple[str, str, Optional[int], Optional[Clip]]]:
    """(video sample id, filepath, ``metadata.total_frame_count``, the clip or None) of each
    sample of the collection (of each clip, for a clip view), in view order."""
    if not is_clip_view(sample_collection):
        rows = sample_collection.values(["id", "filepath", "metadata.total_frame_count"])
        return [(sid, path, count, None) for sid, path, count in zip(*rows)] if rows and rows[0] else []
    rows = sample_collection.values(["id", "sample_id", "support", "filepath", "metadata.total_frame_count"])
    return [(str(sid), path, count, Clip(str(cid), str(sid), int(support[0]), int(support[1])))
            for cid, sid, support, path, count in zip(*rows)]


def check_overlaps(rows) -> None:
    """:class:`ClipOverlapError` naming both clips when two clips of one video share frames."""
    by_sample: dict[str, list[tuple[Clip, str]]] = {}
    for _, path, _, clip in rows:
        if clip is not None:
            by_sample.setdefault(clip.sample_id, []).append((clip, path))
    for sample_id, clips in by_sample.items():
        clips.sort(key=lambda item: item[0].support)
        for (a, path), (b, _) in zip(clips, clips[1:]):
            if b.first <= a.last:
                raise ClipOverlapError(
                    f"{a.describe()} and {b.describe()} of sample {sample_id} ({os.path.basename(path)}) share "
                    f"frames {b.first}-{min(a.last, b.last)}: each frame gets one output, so clips of one video must "
                    f"not overlap; propagate them in separate runs (e.g. clips.select(...)) or merge them")


class ClipFrames:
    """Frames ``first..last`` (1-based) of an opened video as a video of their own: frame 1 is
    ``first``; the interface of :class:`deaot_vos.video_io.VideoReader` that the video pass uses."""

    def __init__(self, video, first: int, last: int):
        self.video, self.offset = video, first - 1
        self.num_frames = max(0, min(last, video.num_frames) - self.offset)
        self.height, self.width, self.path = video.height, video.width, video.path

    def frame(self, number: int) -> np.ndarray:
        if not 1 <= number <= self.num_frames:
            raise IndexError(f"frame {number} outside 1..{self.num_frames} of the clip")
        return self.video.frame(number + self.offset)

    def forward(self, start: int, stop: Optional[int] = None):
        stop = self.num_frames if stop is None else min(stop, self.num_frames)
        for number, frame in self.video.forward(start + self.offset, stop + self.offset):
            yield number - self.offset, frame

    def backward(self, start: int, stop: int = 1, chunk: int = 16):
        for number, frame in self.video.backward(min(start, self.num_frames) + self.offset, stop + self.offset, chunk):
            yield number - self.offset, frame


def clip_frames(video, clip: Optional[Clip]):
    """The frames a propagation of ``clip`` (None: the whole video) runs over: ``video`` itself
    or a :class:`ClipFrames` of it."""
    if clip is None or (clip.offset == 0 and clip.last >= video.num_frames):
        return video
    return ClipFrames(video, clip.first, clip.last)
