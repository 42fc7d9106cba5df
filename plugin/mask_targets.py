"""Mask targets of the label maps the propagation writes (pixel value = object ``index``), and
how the zoo model finds the fields ``apply_model`` stored its labels in."""
from __future__ import annotations

import fiftyone as fo


def segmentation_targets(registries) -> dict[int, str]:
    """Mask targets of label maps whose pixel values are object indexes: 0 -> "background" and
    each object's ``index`` -> its label (the index as text when it has none; first seen wins)."""
    targets = {0: "background"}
    for registry in registries:
        for info in registry.by_id.values():
            targets.setdefault(int(info.index), str(info.label) if info.label is not None else str(info.index))
    return targets


def merge_mask_targets(dataset: fo.Dataset, field: str, targets: dict[int, str]) -> None:
    """Merge ``targets`` into the mask targets of frame field ``field`` (existing entries of other
    values are kept) and save the dataset."""
    key = "frames." + field
    merged = dict(dataset.mask_targets or {})
    merged[key] = {**(merged.get(key) or {}), **targets}
    dataset.mask_targets = merged
    dataset.save()


def written_fields(dataset: fo.Dataset, kind: type, label_ids) -> list[str]:
    """The frame fields of type ``kind`` of ``dataset`` that hold a label with one of the ids
    ``label_ids`` (how the zoo model finds where ``apply_model`` stored its labels)."""
    from bson import ObjectId

    oids = [ObjectId(i) for i in label_ids]
    schema = dataset.get_frame_field_schema() or {}
    names = [name for name, field in schema.items() if getattr(field, "document_type", None) is kind]
    frames = dataset._frame_collection
    return [name for name in names if frames.find_one({f"{name}._id": {"$in": oids}}, {"_id": 1}) is not None]
