"""Propagation settings are declared once (``PropagationOptions`` field metadata) and converted
once per entry shape: the operator form, the command line, queued params and the zoo keywords are
derived from the declaration; a run validates its options once and builds the core's
``TrackerOptions`` once; a field name FiftyOne cannot store is refused before any work."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from helpers import detection as _det

REPO = Path(__file__).resolve().parents[1]
URI = "@deaot/vos/propagate_masks"
ADDED_FIELD = ('    smoothing_radius: int = option(3, "Smoothing radius", "pixels of mask smoothing (a setting added '
               'by a test)", minimum=0)\n\n')

_NEW_OPTION_SCRIPT = r'''
import contextlib, io, json, sys

import deaot_vos
from deaot_vos.cli import build_parser
from deaot_vos.propagation import PropagationOptions
from deaot_vos.zoo_model import build_video_model
from fiftyone.operators.executor import ExecutionContext
from operators.propagate_masks import PropagateMasks

dataset_name, checkpoint, copy_dir = sys.argv[1:4]
assert deaot_vos.__file__.startswith(copy_dir), deaot_vos.__file__  # the edited copy runs
ctx = ExecutionContext(request_params=dict(dataset_name=dataset_name, view=[], params={}))
prop = PropagateMasks().resolve_input(ctx).type.properties["smoothing_radius"]
bad = ExecutionContext(request_params=dict(dataset_name=dataset_name, view=[], params=dict(smoothing_radius="x")))
bad = PropagateMasks().resolve_input(bad).type.properties["smoothing_radius"]
help_text = io.StringIO()
with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
    build_parser().parse_args(["propagate", "--help"])
args = build_parser().parse_args(["propagate", "--dataset", dataset_name, "--keyframes-field", "kf",
                                  "--output-field", "o", "--smoothing-radius", "5"])
options = PropagationOptions("kf", "o", smoothing_radius=7)
params = json.loads(json.dumps(options.to_params()))
model = build_video_model("DeAOTT", checkpoint=checkpoint, device="cpu", smoothing_radius=4)
print(json.dumps(dict(
    form=dict(label=prop.view.label, description=prop.view.description, default=prop.default, min=prop.type.min),
    form_error=[bad.invalid, bad.error_message],
    cli_help=" ".join(help_text.getvalue().split()), cli_value=PropagationOptions.from_args(args).smoothing_radius,
    params=params["smoothing_radius"], round_trip=PropagationOptions.from_params(params) == options,
    params_default=PropagationOptions.from_params(dict(keyframes_field="kf")).smoothing_radius,
    zoo_keywords=list(PropagationOptions.zoo_keywords()), zoo_value=model.options.smoothing_radius)))
'''


@pytest.fixture
def one_video(make_video, fiftyone_db):
    """A dataset of one 8-frame video with keyframes in ``kf`` on frame 1."""
    import fiftyone as fo

    name = "t_settings_once"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    for k in range(2):
        path, maps = make_video(f"settings{k}", 8)
        sample = fo.Sample(filepath=path)
        sample.frames[1]["kf"] = fo.Detections(detections=[_det("red", maps[0] == 1), _det("green", maps[0] == 2)])
        ds.add_sample(sample)
    yield ds
    fo.delete_dataset(name)


def _edited_copy(tmp_path: Path) -> Path:
    """The plugin package (as ``deaot_vos``) and the operators, copied, with one setting added to
    ``PropagationOptions``: the only edit."""
    root = tmp_path / "edited"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "plugin", root / "deaot_vos", ignore=ignore)
    shutil.copytree(REPO / "operators", root / "operators", ignore=ignore)
    source = root / "deaot_vos" / "propagation" / "options.py"
    text = source.read_text()
    anchor = "    def __post_init__(self) -> None:\n"
    assert text.count(anchor) == 1
    source.write_text(text.replace(anchor, ADDED_FIELD + anchor))
    return root


def test_a_new_option_appears_in_the_form_cli_params_and_zoo(one_video, tmp_path, tiny_checkpoint):
    root = _edited_copy(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(root))
    run = subprocess.run([sys.executable, "-c", _NEW_OPTION_SCRIPT, one_video.name, tiny_checkpoint, str(root)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["form"] == dict(label="Smoothing radius", default=3, min=0,
                                description="Pixels of mask smoothing (a setting added by a test)")
    assert seen["form_error"][0] and "smoothing_radius must be a whole number" in seen["form_error"][1]
    assert "--smoothing-radius SMOOTHING_RADIUS pixels of mask smoothing (a setting added by a test) (default: 3)" \
        in seen["cli_help"]
    assert seen["cli_value"] == 5
    assert seen["params"] == 7 and seen["round_trip"] and seen["params_default"] == 3
    assert "smoothing_radius" in seen["zoo_keywords"] and seen["zoo_value"] == 4


def _propagate_help() -> tuple[str, list[str]]:
    """``propagate --help`` (whitespace collapsed) and the flags it documents."""
    from deaot_vos.cli import build_parser

    parser = build_parser()
    sub = next(action for action in parser._actions if action.dest == "command").choices["propagate"]
    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        parser.parse_args(["propagate", "--help"])
    return " ".join(text.getvalue().split()), [flag for action in sub._actions for flag in action.option_strings]


def test_cli_help_documents_every_propagation_option():
    from deaot_vos.propagation import PropagationOptions
    from deaot_vos.propagation.option_specs import option_specs

    text, flags = _propagate_help()
    assert "--long-term-gap FRAMES frames between long-term memory entries (default: the model's)" in text
    assert "(default: None)" not in text
    body = text.index("options:")
    starts = sorted(text.index(f" {flag} ", body) for flag in flags if flag.startswith("--"))
    shown = [spec for spec in option_specs(PropagationOptions) if spec.shown_in("cli")]
    assert {"--long-term-gap", "--max-long-term-frames", "--max-short-edge", "--max-long-edge"} <= {
        spec.flag for spec in shown}
    for spec in shown:
        start = text.index(f" {spec.flag} ", body)
        entry = text[start:min([s for s in starts if s > start] + [len(text)])]
        assert "".join(spec.info.help.split()) in "".join(entry.split()), (spec.flag, entry)  # wrapped at hyphens
        if spec.info.required:
            assert "default" not in entry, entry
        elif spec.kind != "bool" and spec.default is not None:
            assert "(default: " in entry, entry
    assert "--max-long-edge PIXELS frames are resized so their long edge is at most this many pixels (default: 1040)" \
        in text
    assert "(default: 1.0)" in text[text.index("--test-scales SCALE [SCALE ...] test-time"):]


def test_every_form_setting_is_declared_with_its_default(one_video):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    from deaot_vos.propagation import DEFAULT_OUTPUT, PropagationOptions
    from deaot_vos.propagation.option_specs import option_specs

    props = foo.get_operator(URI).resolve_input(ExecutionContext(request_params=dict(
        dataset_name=one_video.name, view=[], params={}))).type.properties
    for spec in option_specs(PropagationOptions):
        assert (spec.name in props) == spec.shown_in("form"), spec.name
        if spec.shown_in("form") and spec.name != "keyframes_field":  # its default is the dataset's field
            assert props[spec.name].view.label == spec.info.label
            assert props[spec.name].default == spec.as_param(spec.form_default), spec.name
    assert props["output_field"].default == DEFAULT_OUTPUT and props["max_long_edge"].default == 1040
    assert props["test_scales"].default == "1.0" and props["max_short_edge"].type.min == 16


class _Counts:
    """Counts PropagationOptions validations and the TrackerOptions built from settings (not
    those the video pass builds for a video's provenance signature)."""

    def __init__(self, monkeypatch):
        import deaot_core
        from deaot_vos.propagation import PropagationOptions

        self.options = self.trackers = 0
        validate, build = PropagationOptions.__post_init__, deaot_core.TrackerOptions.__post_init__

        def counted_validate(options):
            self.options += 1
            validate(options)

        def counted_build(tracker_options):
            if not any(frame.name == "video_provenance" for frame in traceback.extract_stack()):
                self.trackers += 1
            build(tracker_options)

        monkeypatch.setattr(PropagationOptions, "__post_init__", counted_validate)
        monkeypatch.setattr(deaot_core.TrackerOptions, "__post_init__", counted_build)

    def take(self) -> tuple[int, int]:
        counts, self.options, self.trackers = (self.options, self.trackers), 0, 0
        return counts


@pytest.mark.usefixtures("torch_threads")
def test_settings_are_converted_once_per_run(one_video, tiny_checkpoint, monkeypatch):
    import deaot_vos
    from deaot_vos.cli import build_parser
    from deaot_vos.propagation import PropagationOptions, queue_propagation, run_task

    counts = _Counts(monkeypatch)
    settings = dict(model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu")
    summary = deaot_vos.propagate(one_video, "kf", "out", **settings)
    assert summary["written"] and counts.take() == (1, 1)  # the Python API, two videos

    args = build_parser().parse_args(["propagate", "--dataset", one_video.name, "--keyframes-field", "kf",
                                      "--output-field", "out", "--overwrite", "--model", "DeAOTT", "--checkpoint",
                                      tiny_checkpoint, "--device", "cpu", "--json"])
    with contextlib.redirect_stdout(io.StringIO()):
        assert args.handler(args) == 0
    assert counts.take() == (1, 1)  # the command line

    queued = queue_propagation(one_video, options=PropagationOptions("kf", "queued", **settings))
    assert counts.take() == (1, 1)
    params = json.loads(json.dumps(PropagationOptions("kf", "queued", overwrite=True, **settings).to_params()))
    counts.take()
    run_task(one_video, queued["job"], one_video.values("id")[:1], options=PropagationOptions.from_params(params))
    assert counts.take() == (1, 1)  # a queued task: its params, then the run


@pytest.mark.parametrize("name", ["$out", "a$b", "out\0x"])
def test_unstorable_output_field_is_refused_up_front(name, one_video, tiny_checkpoint, caplog, capsys):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    import deaot_vos
    from deaot_vos.propagation import PropagationOptions, queue_propagation

    message = f"invalid output_field {name!r}: FiftyOne field names cannot contain '$' or a null character"
    with pytest.raises(ValueError) as raised:
        PropagationOptions("kf", name)
    assert str(raised.value) == message
    with pytest.raises(ValueError, match="invalid write_segmentation"):
        PropagationOptions("kf", "out", write_segmentation=name)

    schema = sorted(one_video.get_frame_field_schema())
    progress = []
    for run in (lambda: deaot_vos.propagate(one_video, "kf", name, model="DeAOTT", checkpoint=tiny_checkpoint,
                                            device="cpu", progress=lambda *a: progress.append(a)),
                lambda: queue_propagation(one_video, "kf", name, model="DeAOTT", checkpoint=tiny_checkpoint)):
        with pytest.raises(ValueError) as raised:
            run()
        assert str(raised.value) == message
    assert not progress and "temporary field" not in caplog.text  # refused before any work
    from deaot_vos.cli import main

    assert main(["propagate", "--dataset", one_video.name, "--keyframes-field", "kf", "--output-field", name,
                 "--device", "cpu"]) == 1
    assert capsys.readouterr().err.strip() == f"error: {message}"
    one_video.reload()
    assert sorted(one_video.get_frame_field_schema()) == schema

    ctx = ExecutionContext(request_params=dict(dataset_name=one_video.name, view=[],
                                               params=dict(keyframes_field="kf", output_field=name)))
    output = foo.get_operator(URI).resolve_input(ctx).type.properties["output_field"]
    assert output.invalid and output.error_message == message
