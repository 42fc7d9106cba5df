"""Where to label next, on the FiftyOne side: score every frame of a propagated output field with
:func:`deaot_core.review_signals.review_scores` and point the App at the best frames to label next.

:func:`suggest_keyframes` reads the output of :func:`deaot_vos.propagate` (every frame's
``fo.Detections`` carries ``deaot_keyframe`` and, on frames fused by a bidirectional run, each
``fo.Detection`` an ``agreement``), writes the frame-level float field ``<output>_review``
(higher = more likely wrong) and saves the view ``<score field>-top`` of the top frames per video.

The saved view matches the top frames by frame id (``match_frames``): the top frames differ per
video, frame ids name exactly the frames scored, and videos without a suggestion are left out. Not
``select_frames``: the App reads only frame 1 of each video for its grid when a view's frame stages
are selections, so a video whose top frames do not include frame 1 vanished from the grid and
could not be opened. It stays a video view: the App's per-frame grid (``to_frames``) needs frame
images on disk (``to_frames(sample_frames=True)`` samples them with ffmpeg).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

import fiftyone as fo
import fiftyone.core.fields as fof
from bson import ObjectId
from fiftyone import ViewField as F

from deaot_core.review_signals import REVIEW_SIZE, FrameReview, colour_cut_scores, review_scores, top_frames

from .fields import LabelFieldError, check_label_field, describe_sample, frame_field_name, root_dataset
from .label_frames import parse_id_maps, read_label_frames
from .propagation.video_pass import AGREEMENT_ATTRIBUTE, KEYFRAME_ATTRIBUTE
from .video_io import VideoError, open_video

__all__ = ["suggest_keyframes", "check_suggestion", "SuggestionCancelled", "default_score_field", "top_view_name"]

ProgressCallback = Callable[[float, str], Optional[bool]]


class SuggestionCancelled(Exception):
    """Raised when the progress callback asked to stop; nothing was written."""


def default_score_field(output_field: str) -> str:
    """``<output>_review``: the score field when none is given."""
    return f"{frame_field_name(output_field, 'output_field')}_review"


def top_view_name(score_field: str) -> str:
    """``<score field>-top``: the saved view of the top frames."""
    return f"{score_field}-top"


def check_suggestion(sample_collection, output_field: str, score_field: Optional[str] = None) -> tuple[str, str]:
    """(output field, score field), normalised; ``ValueError`` naming the field when the output is
    not a Detections frame field or the score field exists with a type other than float."""
    output, kind = check_label_field(sample_collection, output_field, "output_field")
    if kind is not fo.Detections:
        raise LabelFieldError(f"frame field '{output}' (output_field) holds {kind.__name__}, not the Detections "
                              f"that propagate_masks writes: suggestions read the output of a propagation")
    score = frame_field_name(score_field or default_score_field(output), "score_field")
    if score == output:
        raise ValueError(f"score_field '{score}' is the output field itself: choose another name")
    existing = (root_dataset(sample_collection).get_frame_field_schema() or {}).get(score)
    if existing is not None and not isinstance(existing, fof.FloatField):
        raise ValueError(f"frame field '{score}' (score_field) already exists as {type(existing).__name__}, not a "
                         f"FloatField: it is left as it is; choose another score_field")
    return output, score


@dataclass
class VideoReview:
    """One video's scores: ``scores`` (T,) for frame numbers 1..T, keyframe and top frame numbers."""

    sample_id: str
    filepath: str
    scores: np.ndarray
    keyframes: list[int]
    top: list[int]

    def row(self) -> dict[str, Any]:
        return dict(id=self.sample_id, filepath=self.filepath, frames=len(self.scores), keyframes=self.keyframes,
                    top=[dict(frame=n, score=round(float(self.scores[n - 1]), 4)) for n in self.top])


class _Progress:
    """``callback(fraction, label)`` over videos; False from the callback cancels."""

    def __init__(self, callback: Optional[ProgressCallback], total: int):
        self.callback, self.total = callback, max(1, total)

    def __call__(self, video: int, within: float, label: str) -> None:
        if self.callback is not None and self.callback((video + within) / self.total, label) is False:
            raise SuggestionCancelled("cancelled by the progress callback; nothing was written")


def _reduced_size(height: int, width: int) -> tuple[int, int]:
    """(h, w) with the long side at most :data:`REVIEW_SIZE`, same aspect."""
    scale = min(1.0, REVIEW_SIZE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _id_map(number: int, detections, full: tuple[int, int], small: tuple[int, int], context: tuple) -> np.ndarray:
    """One frame's output as a small id map (pixel = ``index``), rendered from the relative boxes at
    the small size; an object too small to render there is rendered at full size and subsampled."""
    try:
        return parse_id_maps([(number, detections)], *small, context=context).maps[number]
    except LabelFieldError:
        if small == full:
            raise
    label_map = parse_id_maps([(number, detections)], *full, context=context).maps[number]
    rows = (np.arange(small[0]) * full[0]) // small[0]
    cols = (np.arange(small[1]) * full[1]) // small[1]
    return label_map[rows][:, cols]


def _frame_review(detections, label_map: np.ndarray) -> FrameReview:
    """One output frame as the review reads it (confidences and agreements by ``index``)."""
    confidences, agreement = {}, {}
    for det in detections.detections or []:
        index = det.get_field("index") if det.has_field("index") else None
        if index is None:
            continue
        if det.confidence is not None:
            confidences[int(index)] = float(det.confidence)
        if det.has_field(AGREEMENT_ATTRIBUTE) and det[AGREEMENT_ATTRIBUTE] is not None:
            agreement[int(index)] = float(det[AGREEMENT_ATTRIBUTE])
    return FrameReview(label_map, confidences, agreement or None)


def _counted(frames: Iterable, count: int, step: Callable[[float], None]) -> Iterator:
    """``frames`` (number, image) as images, reporting the share decoded about 20 times."""
    every = max(1, count // 20)
    for number, image in frames:
        if number % every == 0:
            step(number / count)
        yield image


def _review_video(sample_collection, output: str, sample: tuple, top: int, spacing: int, scene_cuts: bool,
                  step: Callable[[float, str], None]) -> VideoReview:
    """Read, parse and score one video's output (``sample``: id, filepath, total_frame_count)."""
    sample_id, filepath, frame_count = sample
    where = describe_sample(sample_id, filepath)
    try:
        reader = open_video(filepath, frame_count)
    except VideoError as err:
        raise VideoError(f"{where}: {err}") from err
    count, full = reader.num_frames, (reader.height, reader.width)
    small = _reduced_size(*full)
    context = (sample_id, filepath, output, "output_field")
    labels = [(n, dets) for n, dets in read_label_frames(sample_collection, sample_id, output) if n <= count]
    keyframes = [n for n, dets in labels if dets.has_field(KEYFRAME_ATTRIBUTE) and dets[KEYFRAME_ATTRIBUTE]]
    if not keyframes:
        raise ValueError(f"{where}: frame field '{output}' (output_field) marks no keyframe ({KEYFRAME_ATTRIBUTE}): "
                         f"not written by propagate_masks? Suggestions need the output of a propagation")
    frames = [FrameReview(np.zeros(small, dtype=np.int64)) for _ in range(count)]
    for number, detections in labels:
        frames[number - 1] = _frame_review(detections, _id_map(number, detections, full, small, context))
        if number % max(1, count // 10) == 0:
            step(0.5 * number / count, f"{os.path.basename(filepath)}: frame {number}/{count}")
    cuts = None
    if scene_cuts:
        label = f"{os.path.basename(filepath)}: scene cuts"
        cuts = colour_cut_scores(_counted(reader.forward(1, count), count, lambda f: step(0.5 + 0.5 * f, label)))
    scores = review_scores(frames, [n - 1 for n in keyframes], cuts)
    chosen = [t + 1 for t in top_frames(scores, top, spacing)]
    return VideoReview(str(sample_id), filepath, scores, keyframes, chosen)


def _write(dataset, score: str, reviews: list[VideoReview]) -> str:
    """One bulk write of the scores (frames 1..T of each video) into the root dataset; then the
    saved view of the top frames. Returns the view's name."""
    if score not in (dataset.get_frame_field_schema() or {}):
        dataset.add_frame_field(score, fof.FloatField)
    values = {r.sample_id: {n: float(v) for n, v in enumerate(r.scores, start=1)} for r in reviews}
    if values:
        dataset.set_values("frames." + score, values, key_field="id")
    wanted = {(r.sample_id, n) for r in reviews for n in r.top}
    frame_ids = []
    if wanted:
        ids, numbers, fids = dataset.select([r.sample_id for r in reviews]).values(
            ["id", "frames.frame_number", "frames.id"])
        for sid, sample_numbers, sample_fids in zip(ids, numbers, fids):
            frame_ids += [fid for n, fid in zip(sample_numbers or [], sample_fids or []) if (sid, n) in wanted]
    name = top_view_name(score)
    top = dataset.match_frames(F("_id").is_in([ObjectId(fid) for fid in frame_ids]))
    dataset.save_view(name, top, overwrite=True)
    return name


def suggest_keyframes(sample_collection, output_field: str, score_field: Optional[str] = None, top: int = 5,
                      spacing: int = 3, scene_cuts: bool = True, progress: Optional[ProgressCallback] = None) -> dict:
    """Score every frame of ``output_field`` (a propagation's output) by how likely its masks are
    wrong, and suggest the frames to label next.

    For each video of ``sample_collection`` (as the view shows it), frames 1..T (T from the video;
    a frame without output counts as empty) get :func:`deaot_core.review_signals.review_scores` in [0, 1];
    keyframes score 0; a NaN or infinite confidence is unknown and counts as 0 (the most doubtful).
    The scores go to the frame-level float field ``score_field`` (default ``<output>_review``) of
    the root dataset, in one bulk write after every video is scored: an
    error or a cancel writes nothing. An existing float ``score_field`` is replaced (frames 1..T of
    each scored video; other samples keep theirs); one of another type is refused. The saved view
    ``<score_field>-top`` (replaced) selects each video's ``top`` best frames, at least ``spacing``
    frames apart (``match_frames`` on frame ids, see the module docstring).

    Args:
        scene_cuts: decode each video once for the colour-histogram scene-cut signal
        progress: ``progress(fraction, label)``; returning False cancels (``SuggestionCancelled``)

    Returns:
        ``{"output_field", "score_field", "view", "samples": [{"id", "filepath", "frames",
        "keyframes", "top": [{"frame", "score"}, ...]}, ...]}`` (top frames best first)
    """
    if int(top) < 1 or int(spacing) < 1:
        raise ValueError(f"top and spacing must be at least 1 (got top={top}, spacing={spacing})")
    output, score = check_suggestion(sample_collection, output_field, score_field)
    dataset = root_dataset(sample_collection)
    ids, paths, counts = sample_collection.values(["id", "filepath", "metadata.total_frame_count"])
    report = _Progress(progress, len(ids))
    reviews = []
    for i, sample in enumerate(zip(ids, paths, counts)):
        report(i, 0.0, f"[{i + 1}/{len(ids)}] {os.path.basename(sample[1])}")
        reviews.append(_review_video(sample_collection, output, sample, int(top), int(spacing), scene_cuts,
                                     lambda within, label, i=i: report(i, within, label)))
    report(len(ids), 0.0, "writing the scores")
    view = _write(dataset, score, reviews)
    if progress is not None:
        progress(1.0, "done")
    return dict(output_field=output, score_field=score, view=view, samples=[r.row() for r in reviews])
