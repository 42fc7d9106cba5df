"""Entry point of the ``@deaot/vos`` FiftyOne plugin (FiftyOne imports this file).

The code lives in two packages with names no other plugin uses: ``deaot_core`` (pure PyTorch)
and ``deaot_vos`` (the FiftyOne side, in ``plugin/``). They are normally installed
(``pip install -e .``, which ``make`` does). Without an install they are loaded from this folder
under those same names; nothing is put on ``sys.path``, so another plugin's top-level packages
(``plugin``, ``operators``, ...) never meet ours.
"""
import importlib
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGES = {"deaot_core": "deaot_core", "deaot_vos": "plugin"}  # import name -> folder here


def _load_from_checkout(name: str, folder: str) -> None:
    """Import the package in ``folder`` of this checkout under ``name`` (no sys.path change)."""
    init = os.path.join(_HERE, folder, "__init__.py")
    spec = importlib.util.spec_from_file_location(name, init,
                                                  submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _ensure_packages() -> None:
    for name, folder in _PACKAGES.items():
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError as err:
            if err.name != name:  # the package was found but one of its imports failed
                raise
            _load_from_checkout(name, folder)


_ensure_packages()

from .operators import OPERATORS  # noqa: E402


def register(p):
    for operator in OPERATORS:
        p.register(operator)
