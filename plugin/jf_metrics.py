"""J&F, J-Mean and F-Mean of a FiftyOne ``segmentation`` evaluation of videos: what the custom
metrics ``@deaot/vos/jf_mean``, ``j_mean`` and ``f_mean`` (``operators/jf_metrics.py``) compute.

FiftyOne hands a custom metric the evaluated collection and the run's results; a video dataset's
segmentation run names frame fields (``frames.<field>``). J&F is not a per-frame pixel score but
a per-object score over a sequence, so the metric reads the run's two label-map fields video by
video and scores them with the DAVIS 2017 protocol exactly as :func:`deaot_vos.evaluation.evaluate_vos`
does (annotated ground-truth frames, first = reference, objects by pixel value); its value is the
official global ``J&F-Mean`` / ``J-Mean`` / ``F-Mean`` over every object of every video.

FiftyOne computes the three metrics one after the other on the same results; the scores are
computed once and kept for that results object while the collection is unchanged.
"""
from __future__ import annotations

import weakref

import fiftyone as fo

from .evaluation import EXTRA_OBJECTS, EvaluationError, evaluate_vos

__all__ = ["segmentation_run_summary", "metric_value"]

_SUMMARIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # results -> (fingerprint, summary)


def _frame_field(collection, path: str, which: str) -> str:
    if collection.media_type != fo.core.media.VIDEO:
        raise EvaluationError(f"J&F scores video sequences; the {which} '{path}' of this segmentation run is on "
                              f"{collection.media_type} samples")
    prefix = collection._FRAMES_PREFIX
    if not path.startswith(prefix):
        raise EvaluationError(f"J&F scores video frames; the {which} '{path}' of this segmentation run is a sample "
                              f"field, not a frame field ({prefix}<name>)")
    return path[len(prefix):]


def _fingerprint(samples) -> tuple:
    """Changes when a sample or frame of ``samples`` is added, removed or edited."""
    return (samples._dataset.name, str(samples.view()._serialize()), samples.count(), samples.count("frames"),
            samples.max("last_modified_at"), samples.max("frames.last_modified_at"))


def segmentation_run_summary(samples, results, bound_th: float = 0.008, extra_objects: str = "error") -> dict:
    """The official global summary (``J&F-Mean``, ``J-Mean``, ...) of the segmentation run whose
    ``results`` were computed on the video collection ``samples``: its ``gt_field`` and
    ``pred_field`` label maps scored with the DAVIS protocol. Raises ``EvaluationError`` on input
    J&F cannot score (image samples, sample-level fields, a label map that cannot be read, ...)."""
    if extra_objects not in EXTRA_OBJECTS:
        raise ValueError(f"extra_objects must be one of {EXTRA_OBJECTS}, got {extra_objects!r}")
    pred = _frame_field(samples, results.config.pred_field, "pred_field")
    gt = _frame_field(samples, results.config.gt_field, "gt_field")
    fingerprint = (pred, gt, float(bound_th), extra_objects, _fingerprint(samples))
    cached = _SUMMARIES.get(results)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    summary = evaluate_vos(samples, pred, gt, bound_th=bound_th, extra_objects=extra_objects).summary()
    _SUMMARIES[results] = (fingerprint, summary)
    return summary


def metric_value(key: str, samples, results, bound_th: float = 0.008, extra_objects: str = "error") -> float | None:
    """One entry of :func:`segmentation_run_summary` (``None`` for NaN: no object was scored)."""
    value = segmentation_run_summary(samples, results, bound_th, extra_objects)[key]
    return None if value != value else float(value)
