"""Entry point of the ``@deaot/vos`` FiftyOne plugin (FiftyOne imports this file).

Point ``FIFTYONE_PLUGINS_DIR`` at a folder containing this checkout. The checkout's directory
is put on ``sys.path`` so that ``plugin`` and ``deaot_core`` import as top-level packages, the
same way ``python -m plugin`` sees them.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from .operators import OPERATORS  # noqa: E402


def register(p):
    for operator in OPERATORS:
        p.register(operator)
