"""Box and point keyframes -> masks, made on the keyframe's own decoded frame.

A keyframe ``fo.Detection`` without an instance mask (a box) and each ``fo.Keypoint`` of an
``fo.Keypoints`` keyframe (points) are *prompts*. :func:`prompted_keyframe` returns the keyframe
with every prompt replaced by a detection carrying a mask, made

- by a prompt model (``prompt_model``: a FiftyOne zoo model name, or a loaded model, that takes
  box and point prompts: FiftyOne's Segment Anything / SAM 2 image models), run on this frame;
- without a model (``prompt_model`` None or ``"offline"``): boxes by
  :func:`deaot_vos.box_masks.masks_from_boxes`; points need a model (:class:`KeyframeError`).

Points' polarity is FiftyOne's SAM convention: a keypoint's ``sam_labels`` attribute (or
``sam2_labels``) lists 1 (foreground) or 0 (background) per point; without one every point is
foreground; points with a NaN coordinate are ignored.

The user's labels are never changed: a box becomes a copy of its detection whose box is kept as
given and whose mask (inside the box) is the produced one; a keypoint becomes a detection with its
``label``, ``index`` and attributes, boxed around its mask. Objects keep the identity rule of
masks (``index``, else label and order).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import numpy as np

import fiftyone as fo

from .labels import KeyframeError, render_detection, bbox_of, describe_label_item, pixel_box

OFFLINE = "offline"  # the prompt_model value (also None or blank) for boxes without a model
_PROMPTS = "deaot_prompts"  # the prompt field of the in-memory sample a model reads
_POLARITY = ("sam_labels", "sam2_labels")


def normalize_prompt_model(value: Any) -> Any:
    """``value`` as the ``prompt_model`` setting holds it: None for the offline route (None, blank,
    ``"offline"``), a stripped zoo name, or a loaded FiftyOne model as given. ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        name = value.strip()
        return None if name.lower() in ("", OFFLINE) else name
    if callable(getattr(value, "predict", None)):
        return value
    raise ValueError(f"prompt_model must be a FiftyOne zoo model name, a loaded model or {OFFLINE!r}, "
                     f"got {type(value).__name__}")


def check_prompt_model(prompt_model: Any) -> None:
    """ValueError naming the setting when ``prompt_model`` is a name the FiftyOne model zoo does
    not know (read from its manifests; nothing is loaded)."""
    if not isinstance(prompt_model, str):
        return
    import fiftyone.zoo.models as fozm

    try:
        fozm.get_zoo_model(prompt_model)
    except ValueError as err:
        raise ValueError(f"prompt_model: {err}; give a FiftyOne zoo model that takes box and point prompts (e.g. "
                         f"segment-anything-2-hiera-tiny-image-torch), or leave it blank for boxes without a "
                         f"model") from None


def is_box(item) -> bool:
    """A detection without an instance mask (neither ``mask`` nor ``mask_path``)."""
    return isinstance(item, fo.Detection) and item.mask is None and not getattr(item, "mask_path", None)


def needs_prompting(value) -> bool:
    """Whether the keyframe label holds prompts (boxes or keypoints)."""
    if isinstance(value, fo.Keypoints):
        return bool(value.keypoints)
    return isinstance(value, fo.Detections) and any(is_box(d) for d in value.detections or [])


def prompted_keyframe(value, frame_number: int, image: Callable[[], np.ndarray], prompt_model: Any = None):
    """``value`` with its prompts turned into masks (see the module docstring): a new
    ``fo.Detections``, or ``value`` itself when it holds no prompt. ``image()`` decodes the frame
    ((H, W, 3) uint8 RGB), only when needed. :class:`KeyframeError` names the frame and the
    object: a bad box or point, points without a prompt model, a model that gave no mask."""
    if not needs_prompting(value):
        return value
    prompt_model = normalize_prompt_model(prompt_model)
    if isinstance(value, fo.Keypoints):
        return _keypoint_detections(value, frame_number, image, prompt_model)
    items = list(value.detections)
    positions = [i for i, det in enumerate(items) if is_box(det)]
    frame = image()
    height, width = frame.shape[:2]
    names = {i: describe_label_item("detection", i, items[i]) for i in positions}
    boxes = {i: pixel_box(items[i], height, width, names[i], frame_number) for i in positions}
    if prompt_model is None:
        masks = _offline_masks(frame, [boxes[i] for i in positions])
    else:
        prompts = fo.Detections(detections=[items[i] for i in positions])
        masks = _model_masks(prompt_model, frame, prompts, [names[i] for i in positions], frame_number)
    for i, mask in zip(positions, masks):
        items[i] = _boxed_copy(items[i], mask, boxes[i], names[i], frame_number)
    return fo.Detections(detections=items)


def _offline_masks(frame: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
    """Full-frame (H, W) bool masks of pixel ``boxes`` (clipped to the frame by the callee)."""
    from .box_masks import masks_from_boxes

    return list(masks_from_boxes(frame, np.array(boxes, dtype=float)))


def _boxed_copy(det: fo.Detection, mask: np.ndarray, box: tuple[int, int, int, int], what: str,
                frame_number: int) -> fo.Detection:
    """A copy of the box ``det`` whose mask is the part of the full-frame ``mask`` inside its
    (pixel) box; KeyframeError when that part is empty."""
    height, width = mask.shape
    x0, y0, x1, y1 = box
    crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    crop[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = mask[cy0:cy1, cx0:cx1]
    if not crop.any():
        raise KeyframeError(f"{what}: the mask made from its box is empty inside the box", frame_number)
    copy = det.copy()
    copy.mask = crop
    return copy


def _keypoint_detections(value: fo.Keypoints, frame_number: int, image: Callable[[], np.ndarray],
                         prompt_model: Any) -> fo.Detections:
    """One detection per keypoint, its mask made by ``prompt_model`` from the keypoint's points."""
    items = list(value.keypoints)
    names = [describe_label_item("keypoint", i, kp) for i, kp in enumerate(items)]
    if prompt_model is None:
        raise KeyframeError(f"{len(items)} keypoint object(s) ({names[0]}{', ...' if len(items) > 1 else ''}): points "
                            f"become masks only through a prompt model; set prompt_model (--prompt-model, the "
                            f"form's 'Prompt model') to a FiftyOne SAM / SAM 2 image zoo model, e.g. "
                            f"segment-anything-2-hiera-tiny-image-torch", frame_number)
    for kp, what in zip(items, names):
        _check_points(kp, what, frame_number)
    frame = image()
    masks = _model_masks(prompt_model, frame, value, names, frame_number)
    height, width = frame.shape[:2]
    dets = []
    for kp, mask in zip(items, masks):  # never empty (_model_masks)
        ys, xs = np.nonzero(mask)
        rows, cols = slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1)
        attributes = {k: v for k, v in kp.iter_attributes() if k not in _POLARITY}
        dets.append(fo.Detection(**attributes, label=kp.label, index=kp.index, tags=list(kp.tags or []),
                                 mask=mask[rows, cols].copy(), bounding_box=bbox_of(cols, rows, width, height)))
    return fo.Detections(detections=dets)


def _check_points(kp: fo.Keypoint, what: str, frame_number: int) -> None:
    """KeyframeError unless ``kp`` has a finite point and, if given, one polarity per point."""
    points = list(kp.points or [])
    finite = 0
    for point in points:
        try:
            values = [float(v) for v in point]
        except (TypeError, ValueError):
            values = []
        if len(values) != 2:
            raise KeyframeError(f"{what} has an invalid point {point!r} (expected relative [x, y])", frame_number)
        finite += all(math.isfinite(v) for v in values)
    if not finite:
        raise KeyframeError(f"{what} has no point (every point is missing or NaN)", frame_number)
    polarity = _polarity(kp)
    if polarity is not None and len(polarity) != len(points):
        raise KeyframeError(f"{what} has {len(points)} points but {len(polarity)} sam_labels (one 1/0 per point)",
                            frame_number)


def _polarity(kp: fo.Keypoint) -> Optional[list]:
    for name in _POLARITY:
        if kp.has_field(name) and kp[name] is not None:
            return list(kp[name])
    return None


@functools.lru_cache(maxsize=2)
def load_prompt_model(name: str):
    """The FiftyOne zoo model ``name`` (loaded once per process)."""
    import fiftyone.zoo as foz

    return foz.load_zoo_model(name)


def _model_masks(prompt_model: Any, frame: np.ndarray, prompts, names: list[str],
                 frame_number: int) -> list[np.ndarray]:
    """(H, W) bool mask of each prompt (``fo.Detections`` boxes or ``fo.Keypoints``), in order,
    from one call of the prompt model on ``frame``. Each prompt travels as a copy labelled with
    its position, so the model's detections map back to their prompt."""
    model = load_prompt_model(prompt_model) if isinstance(prompt_model, str) else prompt_model
    height, width = frame.shape[:2]
    is_points = isinstance(prompts, fo.Keypoints)
    copies = []
    for position, item in enumerate(prompts.keypoints if is_points else prompts.detections):
        copy = item.copy()
        copy.label = str(position)
        if is_points:
            _set_polarity(copy, _polarity(item), model)
        copies.append(copy)
    prompts = fo.Keypoints(keypoints=copies) if is_points else fo.Detections(detections=copies)
    output = _predict(model, frame, prompts, is_points)
    masks = [np.zeros((height, width), dtype=bool) for _ in copies]
    for det in getattr(output, "detections", None) or []:
        position = int(det.label) if isinstance(det.label, str) and det.label.isdigit() else -1
        if 0 <= position < len(masks) and (det.mask is not None or getattr(det, "mask_path", None)):
            try:
                masks[position] |= render_detection(det, height, width)
            except KeyframeError:  # an empty or degenerate mask: left empty, refused below
                pass
    for mask, what in zip(masks, names):
        if not mask.any():
            raise KeyframeError(f"{what}: the prompt model ({_model_name(prompt_model)}) gave no mask for it",
                                frame_number)
    return masks


def _model_name(prompt_model: Any) -> str:
    return prompt_model if isinstance(prompt_model, str) else type(prompt_model).__name__


def _set_polarity(kp: fo.Keypoint, polarity: Optional[list], model) -> None:
    """Polarity where the installed FiftyOne reads it: ``sam_labels`` (FiftyOne >= 1.7 reads it
    first); its older SAM wrappers read ``sam2_labels`` once ``sam_labels`` exists, so both."""
    for name in _POLARITY:
        if kp.has_field(name):
            kp[name] = None
    if polarity is None:
        return
    kp["sam_labels"] = [int(v) for v in polarity]
    if not _takes_get_item(model):
        kp["sam2_labels"] = [int(v) for v in polarity]


def _takes_get_item(model) -> bool:
    import fiftyone.utils.torch as fout

    with_prompts = getattr(fout, "TorchImageModelWithPrompts", None)
    return with_prompts is not None and isinstance(model, with_prompts)


def _predict(model, frame: np.ndarray, prompts, is_points: bool):
    """The model's labels for ``frame`` prompted with ``prompts``, called as FiftyOne's own
    ``apply_model`` calls an image model on video frames (nothing is read from or written to a
    dataset): a model taking prompts through a GetItem gets the frame-based GetItem; an older
    one (``SamplesMixin``) reads them from an in-memory sample's prompt field."""
    import fiftyone.core.models as fom
    import fiftyone.core.utils as fou

    if _takes_get_item(model):
        key = "point_prompt_field" if is_points else "box_prompt_field"
        config = model.config
        get_item_cls = config.get_item_cls if config.get_item_cls.endswith("ForVideo") \
            else config.get_item_cls + "ForVideo"
        with fou.SetAttributes(config, get_item_cls=get_item_cls):
            get_item = model.build_get_item(field_mapping={key: _PROMPTS})
        item = get_item({"image": frame, key: prompts})
        with model:
            return model.predict(item)
    if isinstance(model, fom.SamplesMixin):
        sample = fo.Sample(filepath="keyframe.png", **{_PROMPTS: prompts})
        with fou.SetAttributes(model, needs_fields={"prompt_field": _PROMPTS}), model:
            return model.predict(frame, sample=sample)
    raise ValueError(f"prompt_model: {type(model).__name__} takes no box or point prompts (use a FiftyOne "
                     f"Segment Anything / SAM 2 image model)")
