"""Saved tracker states (:meth:`deaot_core.Tracker.state`), so an incremental re-run resumes the
forward pass at a keyframe instead of recomputing the video from its first keyframe.

A store maps a key (:meth:`deaot_core.schedule.Schedule.state_key`, which hashes everything
the state depends on) to a state; a missing or unreadable state only costs recomputation.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
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


STATE_MAGIC = b"DEAOT-STATE sha256 "  # a state file: this, the payload's hex sha256, a newline, the payload
_warned_unwritable: set[str] = set()  # state folders already reported unwritable (once per process)


def encode_state(state: dict) -> bytes:
    """A state as stored: a header carrying the sha256 of the ``torch.save`` payload, then it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return STATE_MAGIC + hashlib.sha256(payload).hexdigest().encode("ascii") + b"\n" + payload


def decode_state(data: bytes) -> dict:
    """The state stored in ``data``; ``ValueError`` if its checksum does not verify (damaged)."""
    header, newline, payload = data.partition(b"\n")
    if not newline or not header.startswith(STATE_MAGIC):
        raise ValueError("no state header (damaged, or written by an older version)")
    if hashlib.sha256(payload).hexdigest().encode("ascii") != header[len(STATE_MAGIC):]:
        raise ValueError("its sha256 does not match its content (damaged bytes)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


class DirectoryStates:
    """States as ``<key>.pt`` files in ``root`` (default :func:`default_states_dir`), written
    atomically (a temporary file renamed into place: readers never see half a file, two writers
    of one key both write the same content) with a sha256 of their content, checked on load: a
    state that does not verify is deleted and recomputed. When the files exceed ``max_bytes``,
    the least recently used go first. A folder that cannot be written (disk full, a file in its
    place) costs only the saving: a warning, once, and the run goes on without saved states."""

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
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as err:
            log.warning("saved tracker state %s cannot be read (%s); it is recomputed", path, err)
            return None
        try:
            state = decode_state(data)
        except Exception as err:  # a damaged file: recompute instead
            log.warning("saved tracker state %s is unreadable (%s); it is deleted and recomputed", path, err)
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used
        return state

    def put(self, key: str, state: dict) -> None:
        """Save ``state`` under ``key``; when the folder cannot be written, warn (once) and go on."""
        path = self._path(key)
        try:
            self._write(path, key, encode_state(state))
            self.prune()
        except (OSError, RuntimeError) as err:  # a full disk, a file where the folder should be, ...
            if str(self.root) not in _warned_unwritable:
                _warned_unwritable.add(str(self.root))
                log.warning("cannot save tracker states in %s (%s): incremental runs go on without them "
                            "(they recompute from the keyframes)", self.root, err)

    def _write(self, path: Path, key: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

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
