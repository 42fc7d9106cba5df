"""PropagationOptions: one validated object for the Python API, the operator form, the CLI and
queued tasks; the reader adapter the core's propagate_video reads frames through."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from deaot_vos.propagation import DEFAULT_OUTPUT, PropagationOptions


def test_names_and_knobs_are_normalised_and_validated_once():
    options = PropagationOptions(" frames.kf ", "out", write_segmentation="", test_scales="0.8, 1.2")
    assert (options.keyframes_field, options.output_field, options.write_segmentation) == ("kf", "out", None)
    assert options.test_scales == (0.8, 1.2) and options.output_fields == ["out"]
    for bad in (dict(precision="fp64"), dict(max_long_edge=8), dict(write_every=0), dict(long_term_gap=True),
                dict(test_scales="9"), dict(output_field="a.b"), dict(output_field="out_deaot_tmp")):
        with pytest.raises(ValueError):
            PropagationOptions("kf", **dict(dict(output_field="out"), **bad))
    with pytest.raises(TypeError):
        PropagationOptions("kf", "out", no_such_option=1)


def test_params_round_trip_json_safe():
    options = PropagationOptions("kf", "out", write_segmentation="seg", test_scales=(0.1 + 0.2, 1, 1.3),
                                 max_long_edge=None, long_term_gap=3, skip_failures=True, write_every=8,
                                 allow_random_weights=True, compile_model=True, test_flip=True, bidirectional=True,
                                 incremental=True, keyframe_marks="on")
    params = json.loads(json.dumps(options.to_params()))
    assert isinstance(params["test_scales"], str)  # the operator form's type (queued tasks are validated by it)
    assert PropagationOptions.from_params(params) == options
    assert PropagationOptions.from_params(dict(params, delegate=True, deaot_job="x", sample_ids=["a"])) == options


def test_operator_params_defaults():
    options = PropagationOptions.from_params(dict(keyframes_field="kf", checkpoint=" ", write_segmentation="",
                                                  max_long_edge="", test_scales=[1.3]))
    assert options.output_field == DEFAULT_OUTPUT and options.checkpoint is None
    assert options.write_segmentation is None and options.max_long_edge is None and options.test_scales == (1.3,)
    assert PropagationOptions.from_params(dict(keyframes_field="kf")).max_long_edge == 1040


def test_cli_arguments_are_declared_once():
    parser = argparse.ArgumentParser()
    PropagationOptions.add_arguments(parser)
    args = parser.parse_args(["--keyframes-field", "kf", "--output-field", "out", "--compile", "--test-scales",
                              "0.8", "1.0", "--max-long-edge", "480", "--skip-failures", "--bidirectional",
                              "--incremental", "--keyframe-marks", "off"])
    options = PropagationOptions.from_args(args)
    assert options == PropagationOptions("kf", "out", compile_model=True, test_scales=(0.8, 1.0), max_long_edge=480,
                                         skip_failures=True, bidirectional=True, incremental=True,
                                         keyframe_marks="off")
    assert options.tracker_options(max_long_edge=32).max_long_edge == 32 and options.tracker_options().compile
    assert options.tracker_options().test_scales == (0.8, 1.0) and options.tracker_options().max_long_edge == 480


def test_video_frames_read_forward_and_backward_in_order(make_video):
    from deaot_vos.propagation.video_pass import FrameCursor, VideoFrames
    from deaot_vos.video_io import open_video

    path, _ = make_video("frames", 20)
    cursor = FrameCursor()
    frames = VideoFrames(open_video(path), cursor)
    assert len(frames) == 20
    forward = list(frames.iter_frames(range(3, 20)))
    backward = list(frames.iter_frames(range(3, -1, -1)))
    assert [i for i, _ in forward] == list(range(3, 20)) and [i for i, _ in backward] == [3, 2, 1, 0]
    assert cursor.frame == 1  # the frame number (1-based) last handed over
    assert np.array_equal(backward[0][1], frames[3]) and np.array_equal(forward[-1][1], frames[19])
