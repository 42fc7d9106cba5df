"""Corrections made in the output field, and edits a run did not make.

The App's annotation marks every label the user draws or edits ``keyframe=True``; a run never
marks the Detections it computes. So a label of an existing output field marked ``keyframe=True``
is the user's correction of that object on that frame: :func:`read_corrections` reads them and
:func:`add_corrections` makes each one a keyframe of the run (on a frame that is a keyframe
already, the correction replaces that object's mask), matched to the object by its ``index``
(the run's own). The run writes the corrected label back unchanged (:func:`keep_corrections`:
its id, attributes and tags, ``keyframe=True``), so the next run finds it again.

Every frame the run writes also carries a digest of its labels (:data:`LABELS_DIGEST_ATTRIBUTE`):
a stored frame whose labels no longer match it was edited after the run (the App rewrites the
boxes of neighbouring frames when a keyframe is edited), so an incremental run recomputes it
instead of keeping it (:func:`edited_since_written`).
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

import fiftyone as fo

from ..fields import KEYFRAME_MARK
from ..label_frames import keep_marked_keyframes, read_label_frames
from ..labels import Keyframe, KeyframeError, parse_keyframe

LABELS_DIGEST_ATTRIBUTE = "deaot_labels"  # on each output fo.Detections: digest of its labels as written


def read_corrections(sample_collection, sample, keyframes_field: str, output_field: str) -> list[tuple[int, fo.Detections]]:
    """(frame number, Detections of the marked labels) of ``sample``'s existing output field as
    ``sample_collection`` (the run's view) shows it (a clip: on its frames), sorted; empty when
    the output is not a Detections field of the view or is the keyframes field."""
    field = sample_collection.get_frame_field_schema().get(output_field)
    if output_field == keyframes_field or getattr(field, "document_type", None) is not fo.Detections:
        return []
    first, last = sample.support or (1, None)
    frames = [(n, v) for n, v in read_label_frames(sample_collection, sample.view_id, output_field)
              if n >= first and (last is None or n <= last) and isinstance(v, fo.Detections)]
    return keep_marked_keyframes(frames, "on")


def _merge(base: Keyframe | None, correction: Keyframe) -> Keyframe:
    """``base`` with the corrected objects' masks replaced by the correction's."""
    correction.corrected = set(correction.objects)
    if base is None:
        return correction
    label_map = base.label_map.copy()
    label_map[np.isin(label_map, correction.objects)] = 0
    painted = correction.label_map > 0
    label_map[painted] = correction.label_map[painted]
    objects = base.objects + [o for o in correction.objects if o not in base.objects]
    return dataclasses.replace(base, label_map=label_map, objects=objects, exact={**base.exact, **correction.exact},
                               labels={**base.labels, **correction.labels},
                               corrected=base.corrected | correction.corrected)


def add_corrections(sample, corrections: list[tuple[int, Any]], height: int, width: int, output_field: str) -> None:
    """Parse ``corrections`` (:func:`read_corrections`) into ``sample``'s keyframes, after its
    keyframes field was parsed: a label's ``index`` names the object that has that output index
    (a new index or none: a new object). KeyframeError as for any keyframe, saying that the label
    is a correction in ``output_field``."""
    registry = sample.registry
    registry.alias_indexes()
    for number, value in corrections:
        try:
            correction = parse_keyframe(value, number, height, width, registry)
        except KeyframeError as err:
            raise KeyframeError(f"a correction (marked keyframe=True) in the output field '{output_field}': "
                                f"{err.detail}", number) from err
        if correction is not None:
            sample.keyframes[number] = _merge(sample.keyframes.get(number), correction)
    registry.assign_indexes()


def keep_corrections(detections: fo.Detections, keyframe: Keyframe, registry) -> None:
    """Replace the computed copy of each corrected object of ``keyframe`` in ``detections`` by the
    user's label itself (same id, attributes and tags) with its output ``index`` (which identifies
    it from then on: an App ``instance`` link is dropped), confidence 1 and ``keyframe=True``."""
    by_index = {registry.by_id[o].index: keyframe.exact[o] for o in keyframe.corrected if o in keyframe.exact}
    kept = []
    for detection in detections.detections:
        given = by_index.get(detection.index)
        if given is not None:
            index = detection.index
            detection = fo.Detection.from_dict(given.to_dict())
            detection.index, detection.confidence, detection.instance = index, 1.0, None
            detection[KEYFRAME_MARK] = True
        kept.append(detection)
    detections.detections = kept


def labels_digest(detections: fo.Detections) -> str:
    """A digest of the geometry of a frame's labels (what the App rewrites on the frames around an
    edited keyframe): each label's index, box, mask and keyframe mark. Class names, attributes
    and tags are not in it, so renaming an object on a frame does not make a run recompute (and
    overwrite) that frame."""
    digest = hashlib.sha1()
    for det in detections.detections:
        mask = det.mask
        mask_part = (np.asarray(mask).shape, np.packbits(np.asarray(mask) > 0).tobytes()) if mask is not None \
            else det.mask_path
        mark = det[KEYFRAME_MARK] if det.has_field(KEYFRAME_MARK) else None
        digest.update(repr((det.index, [float(v) for v in det.bounding_box or []], mask_part, mark)).encode())
    return digest.hexdigest()[:20]


def edited_since_written(detections: fo.Detections) -> bool:
    """Whether a stored output frame's labels differ from those the run wrote (an output without
    a digest: no)."""
    if not detections.has_field(LABELS_DIGEST_ATTRIBUTE) or not detections[LABELS_DIGEST_ATTRIBUTE]:
        return False
    return labels_digest(detections) != detections[LABELS_DIGEST_ATTRIBUTE]
