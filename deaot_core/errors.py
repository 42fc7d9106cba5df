"""Errors of the core that several modules raise."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be fetched or loaded into the requested model."""


class ModelUnavailableError(RuntimeError):
    """No usable weights for the requested model (none found, or the file vanished / failed to download)."""
