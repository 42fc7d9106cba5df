"""Propagation errors, and how a video's error names its sample and frame."""
from __future__ import annotations

import os

from ..labels import KeyframeError
from ..overwrite import NeedsOverwrite
from ..video_io import VideoError


class OutputExistsError(NeedsOverwrite, ValueError):
    """The output field exists and ``overwrite`` is False (``.field`` names it; ``worded("cli")``
    / ``worded("app")`` say how that interface asks for ``overwrite``)."""


class NoKeyframesError(ValueError):
    """No sample of the collection has a keyframe (a non-empty label in the keyframes field)."""


def add_context(err: BaseException, sid: str, path: str, frame: int | None = None) -> BaseException:
    """Name the sample (and frame) in ``err``: in the message of our own error types, as a
    note on others (shown in tracebacks). Returns ``err``."""
    where = f"sample {sid} ({os.path.basename(path)})"
    if isinstance(err, KeyframeError):
        return err.with_context(sid, path)
    if isinstance(err, (VideoError, NoKeyframesError)) and err.args and str(sid) not in str(err.args[0]):
        err.args = (f"{where}: {err.args[0]}",) + tuple(err.args[1:])
        err.sample_id = sid
        return err
    if hasattr(err, "add_note") and not getattr(err, "_deaot_noted", False):
        err.add_note(f"while propagating {where}" + (f" at frame {frame}" if frame else "") + f": {path}")
        err._deaot_noted = True
    return err


def error_text(err: BaseException, frame: int | None = None) -> str:
    """``<type>: <message>`` of a sample's error, with the frame unless the message has it."""
    text = f"{type(err).__name__}: {err}"
    if frame and not isinstance(err, (KeyframeError, VideoError)):
        text += f" (at frame {frame})"
    return text
