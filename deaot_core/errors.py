"""Errors of the core that several modules raise."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be fetched or loaded into the requested model."""
