"""Saved tracker states (:meth:`deaot_core.Tracker.state`), so an incremental re-run resumes the
forward pass at a keyframe instead of recomputing the video from its first keyframe.

A store maps a key (:meth:`deaot_core.schedule.Schedule.state_key`, which hashes everything
the state depends on) to a state; a missing or unreadable state only costs recomputation.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional, Protocol

import torch

from .hub import cache_dir

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 4 * 2 ** 30
STALE_TEMP_SECONDS = 3600  # a temporary file this old is a killed writer's leftover


class StateStore(Protocol):
    def get(self, key: str) -> Optional[dict]: ...

    def put(self, key: str, state: dict) -> None: ...


class MemoryStates:
    """States kept in a dict (one process; tests and benchmarks)."""

    def __init__(self) -> None:
        self.states: dict[str, dict] = {}

    def get(self, key: str) -> Optional[dict]:
        return self.states.get(key)

    def put(self, key: str, state: dict) -> None:
        self.states[key] = state


def default_states_dir() -> Path:
    """``<cache_dir()>/states``."""
    return cache_dir() / "states"


class DirectoryStates:
    """States as ``<key>.pt`` files in ``root`` (default :func:`default_states_dir`), written
    atomically (a temporary file renamed into place: readers never see half a file, two writers
    of one key both write the same content). When the files exceed ``max_bytes``, the least
    recently used go first."""

    def __init__(self, root: str | Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root) if root is not None else default_states_dir()
        self.max_bytes = int(max_bytes)

    def _path(self, key: str) -> Path:
        if not key or not all(c.isalnum() or c in "-_" for c in key):
            raise ValueError(f"a state key must be letters, digits, '-' or '_', got {key!r}")
        return self.root / f"{key}.pt"

    def get(self, key: str) -> Optional[dict]:
        path = self._path(key)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            os.utime(path)  # recently used
            return state
        except FileNotFoundError:
            return None
        except Exception as err:  # a damaged file: recompute instead
            log.warning("saved tracker state %s is unreadable (%s); it is deleted and recomputed", path, err)
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, state: dict) -> None:
        path = self._path(key)
        self.root.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(handle, "wb") as out:
                torch.save(state, out)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self.prune()

    def prune(self) -> None:
        """Delete the least recently used states beyond ``max_bytes`` and stale temporary files."""
        now, files = time.time(), []
        for path in self.root.iterdir():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if path.suffix == ".tmp":
                if now - stat.st_mtime > STALE_TEMP_SECONDS:
                    path.unlink(missing_ok=True)
            elif path.suffix == ".pt":
                files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
