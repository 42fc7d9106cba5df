"""FiftyOne remote zoo model source ``deaot/vos``: DeAOT / AOT video object segmentation for
``dataset.apply_model(model, label_field=..., prompt_field="frames.<keyframes field>")``, and for
the App's "Apply zoo model" operator (``@voxel51/zoo/apply_zoo_model``) through
:func:`resolve_input` / :func:`parse_parameters`.

FiftyOne copies this file and ``manifest.json`` alone into its model zoo directory. The code lives
in the ``deaot_vos`` and ``deaot_core`` packages: imported when installed (pip distribution
``fiftyone-deaot-vos``), else loaded from the folder of the ``@deaot/vos`` plugin, wherever
FiftyOne keeps it. The manifest lists only packages the registry installs.
"""
import importlib
import importlib.util
import os
import sys

PLUGIN_NAME = "@deaot/vos"
_PACKAGES = {"deaot_core": "deaot_core", "deaot_vos": "plugin"}  # import name -> folder of the plugin


def _load_from_plugin(name, plugin_dir):
    init = os.path.join(plugin_dir, _PACKAGES[name], "__init__.py")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _plugin_dir():
    """The folder of the ``@deaot/vos`` plugin, or None when FiftyOne does not know it."""
    try:
        import fiftyone.plugins as fop

        return fop.find_plugin(PLUGIN_NAME)
    except Exception:  # not downloaded (FiftyOne raises ValueError), or no plugin support
        return None


def _ensure_packages():
    """Import ``deaot_core`` and ``deaot_vos``: installed ones first, else the plugin folder's."""
    plugin_dir = None
    for name in _PACKAGES:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError as err:
            if err.name != name:  # the package is there but one of its own imports failed
                raise
            plugin_dir = plugin_dir or _plugin_dir()
            if not plugin_dir:
                raise ImportError(f"the DeAOT zoo models need the {PLUGIN_NAME} plugin (fiftyone plugins download "
                                  f"<its repository URL>) or its pip distribution fiftyone-deaot-vos: see the "
                                  f"README, section Install") from err
            _load_from_plugin(name, plugin_dir)


def _source():
    _ensure_packages()
    return importlib.import_module("deaot_vos.zoo")


def download_model(model_name, model_path):
    """Puts the checkpoint of ``model_name`` at ``model_path`` (see ``deaot_vos.zoo.download_model``)."""
    _source().download_model(model_name, model_path)


def load_model(model_name, model_path, **kwargs):
    """The ``deaot_vos.zoo_model.DeAOTVideoModel`` of ``model_name`` (see ``deaot_vos.zoo.load_model``)."""
    return _source().load_model(model_name, model_path, **kwargs)


def resolve_input(model_name, ctx):
    """The App form of the model's load arguments (``@voxel51/zoo/apply_zoo_model`` shows it):
    the keyframes field, a choice of the dataset's frame fields that can hold keyframes, and the
    main engine knobs (``deaot_vos.zoo_form``)."""
    _ensure_packages()
    from deaot_vos import zoo_form

    return zoo_form.resolve_input(model_name, ctx)


def parse_parameters(model_name, ctx, params):
    """Turns the form's values in ``params`` into ``load_model`` keyword arguments, in place."""
    _ensure_packages()
    from deaot_vos import zoo_form

    zoo_form.parse_parameters(model_name, ctx, params)
