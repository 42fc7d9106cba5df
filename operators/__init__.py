"""Thin FiftyOne operators of the ``@deaot/vos`` plugin; the work is done in ``plugin/``."""
from .propagate_masks import PropagateMasks

OPERATORS = (PropagateMasks,)

__all__ = ["OPERATORS", "PropagateMasks"]
