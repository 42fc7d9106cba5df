"""FiftyOne remote zoo model source ``deaot/vos``: DeAOT / AOT video object segmentation for
``dataset.apply_model(model, label_field=..., prompt_field="frames.<keyframes field>")``.

FiftyOne copies this folder alone into its model zoo directory and imports this file, so the code
lives in the installed ``deaot_vos`` package (pip distribution ``fiftyone-deaot-vos``); this file
only hands over to :mod:`deaot_vos.zoo`.
"""
import importlib


def _source():
    try:
        return importlib.import_module("deaot_vos.zoo")
    except ImportError as err:
        if err.name not in ("deaot_vos", "deaot_core"):
            raise
        raise ImportError("the DeAOT zoo models need the deaot_vos package (pip distribution fiftyone-deaot-vos): "
                          "pip install the repository of this model source (see its README, section Install)"
                          ) from err


def download_model(model_name, model_path):
    """Puts the checkpoint of ``model_name`` at ``model_path`` (see ``deaot_vos.zoo.download_model``)."""
    _source().download_model(model_name, model_path)


def load_model(model_name, model_path, **kwargs):
    """The ``deaot_vos.zoo_model.DeAOTVideoModel`` of ``model_name`` (see ``deaot_vos.zoo.load_model``)."""
    return _source().load_model(model_name, model_path, **kwargs)
