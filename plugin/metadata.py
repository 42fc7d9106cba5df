"""Video metadata from our own decoder, so the App shows videos without ffmpeg/ffprobe.

FiftyOne's ``compute_metadata`` runs ffprobe; without it a video sample keeps no metadata and
the App refuses to play it. :func:`fill_video_metadata` reads the same fields with decord
(:func:`deaot_vos.video_io.video_metadata`) for the samples that lack them.
"""
from __future__ import annotations

from typing import Callable, Optional

import fiftyone as fo

from .fields import describe_sample, root_dataset
from .video_io import VideoError, video_metadata

#: what the App needs of a video's metadata
REQUIRED = ("frame_width", "frame_height", "frame_rate", "total_frame_count")


def lacks_metadata(metadata) -> bool:
    """Whether ``metadata`` (a sample's) misses a field the App needs to play the video."""
    return metadata is None or any(getattr(metadata, name, None) in (None, 0) for name in REQUIRED)


def fill_video_metadata(sample_collection, overwrite: bool = False,
                        progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Set ``metadata`` (``fo.VideoMetadata`` from decord) on every video of ``sample_collection``
    (a video dataset, a view or a clip view: their videos) that lacks it, or on all of them with
    ``overwrite``. A video that cannot be read is named in ``failed`` and left as it was.

    Returns ``{"filled": n, "kept": n, "failed": ["sample <id> (<path>): <reason>", ...]}``."""
    dataset = root_dataset(sample_collection, clips=True)
    media = dataset.media_type
    if media == fo.core.media.GROUP:  # a grouped dataset: the samples of its active slice
        media = (dataset.group_media_types or {}).get(dataset.group_slice)
    if media != "video":
        raise ValueError(f"dataset {dataset.name!r} holds {media} samples, not videos")
    ids = sample_collection.distinct("sample_id") if isinstance(sample_collection, fo.core.clips.ClipsView) \
        else sample_collection.values("id")
    videos = dataset.select(ids)
    ids, paths, metadatas = videos.values(["id", "filepath", "metadata"])
    filled, failed = {}, []
    for done, (sample_id, path, metadata) in enumerate(zip(ids, paths, metadatas), 1):
        if overwrite or lacks_metadata(metadata):
            try:
                filled[sample_id] = video_metadata(path)
            except (VideoError, OSError) as err:
                failed.append(f"{describe_sample(sample_id, path)}: {err}")
        if progress is not None:
            progress(done, len(ids))
    if filled:
        dataset.set_values("metadata", filled, key_field="id")
    return dict(filled=len(filled), kept=len(ids) - len(filled) - len(failed), failed=failed)

