"""Write-as-you-go: a video's labels are buffered and stored in bulk on a worker thread while
the tracker computes the next frames."""
from __future__ import annotations

import concurrent.futures
import logging
from typing import Any, Callable, Optional

import fiftyone as fo

from .durability import write_durably

log = logging.getLogger(__name__)


class BackgroundWriter:
    """Runs bulk writes one at a time on a worker thread, so the tracker computes the next
    frames while the database stores the previous ones. At most one write is in flight (memory
    stays bounded); a write's error is raised by the next ``submit``/``wait``."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="deaot-write")
        self._pending: concurrent.futures.Future | None = None

    def submit(self, fn: Callable[..., None], *args) -> None:
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self, raise_errors: bool = True) -> None:
        """Wait for the last write (its error is dropped with ``raise_errors=False``: the caller
        is already failing) and stop the thread."""
        try:
            self.wait()
        except Exception:
            if raise_errors:
                raise
            log.debug("a write failed while the run was already failing", exc_info=True)
        finally:
            self._pool.shutdown(wait=True)


class FrameLabelWriter:
    """Buffers one sample's frame labels (Detections, and a Segmentation when
    ``segmentation_field`` is set) and stores every ``write_every`` frames with ``set_values``
    (which also creates missing frame documents), each write in the database's journal before the
    next one starts (:mod:`.durability`). With ``polylines_field`` each frame's
    Detections are also stored as ``to_polylines(detections)`` (computed on the writer thread). Use as a context manager: leaving it waits
    for the last write; on an error no write is left in flight (a rollback may follow)."""

    def __init__(self, dataset: fo.Dataset, sample_id: str, output_field: str,
                 segmentation_field: Optional[str], write_every: int, polylines_field: Optional[str] = None,
                 to_polylines: Optional[Callable[[Any], Any]] = None):
        self.dataset, self.sample_id = dataset, sample_id
        self.output_field, self.segmentation_field = output_field, segmentation_field
        self.polylines_field, self.to_polylines = polylines_field, to_polylines
        self.write_every = int(write_every)
        self.written = 0
        self._buffer: dict[int, tuple[Any, Any]] = {}
        self._writer = BackgroundWriter()

    def add(self, frame_number: int, detections, segmentation=None) -> None:
        self._buffer[frame_number] = (detections, segmentation)
        if len(self._buffer) >= self.write_every:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        self._writer.submit(self._store, dict(self._buffer))
        self.written += len(self._buffer)
        self._buffer.clear()

    def _store(self, values: dict[int, tuple]) -> None:
        first, last = min(values), max(values)
        write_durably(lambda: self._set_values(values), f"frames {first}-{last} of sample {self.sample_id}")

    def _set_values(self, values: dict[int, tuple]) -> None:
        sid = self.sample_id
        self.dataset.set_values("frames." + self.output_field, {sid: {n: v[0] for n, v in values.items()}},
                                key_field="id")
        if self.segmentation_field is not None:
            self.dataset.set_values("frames." + self.segmentation_field,
                                    {sid: {n: v[1] for n, v in values.items()}}, key_field="id")
        if self.polylines_field is not None:
            self.dataset.set_values("frames." + self.polylines_field,
                                    {sid: {n: self.to_polylines(v[0]) for n, v in values.items()}}, key_field="id")

    def __enter__(self) -> "FrameLabelWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        ok = exc_type is None
        try:
            if ok:
                self.flush()
                self._writer.wait()
        finally:
            self._writer.close(raise_errors=ok)
