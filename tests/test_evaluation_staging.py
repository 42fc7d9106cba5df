"""The segmentation evaluation run stages its label maps through the propagation's protocol:
reserved temporary names (``<label-map field>_deaot_tmp``), output claims and the journal.

- a user field named like a temporary field is refused before anything is written, and left alone;
- a user field named like the old staging scheme (``deaot_staging_<key>_...``) is never touched;
- an evaluation process killed while staging, or while committing its label maps, is undone by
  the next run with that key (real processes, kill points injected deterministically).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import detection

pytestmark = pytest.mark.usefixtures("fiftyone_db")

REPO = Path(__file__).resolve().parents[1]
T = 6


def _dataset(name, make_video, videos=2):
    """Videos with ground truth on every frame; the prediction is the ground truth."""
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    ds.persistent = True  # visible to the evaluation process
    for v in range(videos):
        path, maps = make_video(f"{name}_{v}", T, objects=2, height=48, width=64)
        sample = fo.Sample(filepath=path)
        for n in range(1, T + 1):
            dets = fo.Detections(detections=[detection(f"obj{k}", maps[n - 1] == k, index=k) for k in (1, 2)])
            sample.frames[n]["gt"] = dets
            sample.frames[n]["pred"] = dets.copy()
        ds.add_sample(sample)
    return ds


def _user_field(ds, name):
    import fiftyone as fo

    sample = ds.first()
    sample.frames[1][name] = fo.Classification(label="mine")
    sample.save()


def _user_value(ds, name):
    ds.reload()
    return ds.first().frames[1][name].label if name in ds.get_frame_field_schema() else None


def _temporaries(ds):
    ds.reload()
    return sorted(f for f in ds.get_frame_field_schema() if f.endswith("_deaot_tmp"))


def test_a_user_field_named_like_a_staging_field_is_refused_or_left_alone(make_video):
    import fiftyone as fo
    from deaot_vos.evaluation import evaluate_vos

    ds = _dataset("eval_staging_names", make_video, videos=1)
    try:
        # the old staging scheme's name is an ordinary user field now: never deleted
        _user_field(ds, "deaot_staging_seg_gt_labelmap")
        results = evaluate_vos(ds, "pred", "gt", eval_key="ev", segmentation_key="seg")
        assert results.summary()["J&F-Mean"] == pytest.approx(1.0)
        assert _user_value(ds, "deaot_staging_seg_gt_labelmap") == "mine"
        # a field with a reserved temporary name: refused up front, nothing written, field untouched
        _user_field(ds, "seg2_pred_labelmap_deaot_tmp")
        with pytest.raises(ValueError, match="seg2_pred_labelmap_deaot_tmp.* reserved"):
            evaluate_vos(ds, "pred", "gt", eval_key="ev2", segmentation_key="seg2")
        assert _user_value(ds, "seg2_pred_labelmap_deaot_tmp") == "mine"
        assert not {"ev2", "seg2"} & set(ds.list_evaluations())
        assert "seg2_gt_labelmap" not in ds.get_frame_field_schema()
    finally:
        fo.delete_dataset(ds.name)


# the evaluation in a process of its own, killed (SIGKILL) at an injected point:
# "staging": once the first video's label maps are staged; "commit": once they are renamed into
# place and the segmentation run is being computed
_EVALUATE = r'''
import os, signal, sys
import deaot_vos.segmentation_run as sr
from deaot_vos.evaluation import evaluate_vos
import fiftyone as fo

point = sys.argv[2]
if point == "staging":
    original_add = sr.LabelMapRun.add
    def add(self, *args, **kwargs):
        original_add(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    sr.LabelMapRun.add = add
else:
    def evaluate(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    sr.LabelMapRun._evaluate = evaluate
evaluate_vos(fo.load_dataset(sys.argv[1]), "pred", "gt", eval_key="ev", segmentation_key="seg", overwrite=True)
'''


@pytest.mark.parametrize("point", ["staging", "commit"])
def test_a_killed_evaluation_run_is_undone_by_the_next_one(point, make_video):
    import fiftyone as fo
    from deaot_vos.evaluation import evaluate_vos
    from deaot_vos.segmentation_run import label_map_fields

    ds = _dataset(f"eval_staging_kill_{point}", make_video)
    try:
        evaluate_vos(ds, "pred", "gt", eval_key="ev", segmentation_key="seg")  # an earlier run
        env = dict(os.environ, OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, "-c", _EVALUATE, ds.name, point], capture_output=True, text=True,
                             timeout=300, cwd=REPO, env=env)
        assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
        ds.reload()
        if point == "staging":
            assert _temporaries(ds) == [name + "_deaot_tmp" for name in label_map_fields("seg")]
        # the next run with the key recovers and scores as a clean run does
        results = evaluate_vos(ds, "pred", "gt", eval_key="ev", segmentation_key="seg", overwrite=True)
        assert results.summary()["J&F-Mean"] == pytest.approx(1.0)
        assert _temporaries(ds) == []
        seg = ds.load_evaluation_results("seg", cache=False)
        assert seg.metrics()["J&F-Mean"] == pytest.approx(1.0)
        gt_maps, _ = label_map_fields("seg")
        assert ds.count(f"frames.{gt_maps}") == 2 * T
        masks = [m.mask for m in ds.values(f"frames.{gt_maps}", unwind=True)]
        assert all(isinstance(m, np.ndarray) and m.max() == 2 for m in masks)
    finally:
        fo.delete_dataset(ds.name)
