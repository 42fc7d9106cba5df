"""Reliability (issue 14): output-field claims, the swap journal, views that hide frames,
reserved temporary names, group slices, signals during the swap.

Concurrency and crash tests run real CLI processes against the test database. Crash points
inside the final swap are injected deterministically: the worker counts the database writes
(every pymongo write, FiftyOne's included) from the start of the swap and dies with
``os._exit`` at write k, for every k until the swap completes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_reliability import (_assert_complete, _base, _no_tmp, _outputs, _snapshot, run,  # noqa: F401 (fixtures)
                              scripted)

pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")

REPO = Path(__file__).resolve().parents[1]

# A CLI worker with the colour-labelling stand-in tracker (tests/fakes.py) and
# optional deterministic faults. argv: repo, dataset, mode, arg, marker path, checkpoint.
_WORKER = r'''
import os, signal, sys, time
mode, arg, marker = sys.argv[3], sys.argv[4], sys.argv[5]
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from fakes import Script
from deaot_vos.propagation.trackers import TrackerPool

def hold_at_step_3(tracker, frame):
    if mode == "slow" and len(script.steps) == 3:  # hold on until the test says go (at most 120 s)
        open(marker, "w").close()
        deadline = time.time() + 120
        while not os.path.exists(marker + ".go") and time.time() < deadline:
            time.sleep(0.05)

script = Script(fail=hold_at_step_3)
TrackerPool.default_factory = script

import pymongo.collection as pc
import deaot_vos.propagation.staging as pp
writes = {"on": False, "n": 0}
def counted(name):
    original = getattr(pc.Collection, name)
    def wrapper(self, *a, **k):
        if writes["on"]:
            if mode == "kill-at" and writes["n"] == int(arg):
                os._exit(9)
            writes["n"] += 1
            if mode == "sigint-twice" and writes["n"] == int(arg):
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
        return original(self, *a, **k)
    setattr(pc.Collection, name, wrapper)
for name in ("insert_one", "insert_many", "update_one", "update_many", "replace_one", "delete_one",
             "delete_many", "find_one_and_update", "find_one_and_replace", "find_one_and_delete", "bulk_write"):
    counted(name)
deferred = pp.signals_deferred
class Counting:
    def __init__(self, received):
        self.inner = deferred(received)
    def __enter__(self):
        writes["on"] = True
        return self.inner.__enter__()
    def __exit__(self, *exc):
        try:
            return self.inner.__exit__(*exc)
        finally:
            writes["on"] = False
            print(f"swap writes: {writes['n']}", file=sys.stderr)
pp.signals_deferred = Counting

if mode == "sigint-before-swap":  # Ctrl-C while the last values are written, before the swap
    import fiftyone.core.collections as foc
    original = foc.SampleCollection.set_values
    calls = {"n": 0}
    def set_values(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == int(arg):
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *a, **k)
    foc.SampleCollection.set_values = set_values

from deaot_vos.cli import main
sys.exit(main(["propagate", "--dataset", sys.argv[2], "--keyframes-field", "kf", "--output-field", "out",
               "--overwrite", "--model", "DeAOTT", "--checkpoint", sys.argv[6], "--device", "cpu",
               "--write-every", "3"]))
'''


def _worker(ds, mode, arg, tmp_path, ckpt, wait=True):
    marker = tmp_path / f"marker-{mode}-{arg}"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(REPO), ds.name, mode, str(arg), str(marker), ckpt],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc, marker
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out, err


def _persistent(name, make_video, **kwargs):
    ds = _base(name, make_video, **kwargs)
    ds.persistent = True  # visible to the worker processes
    return ds


def _contents(ds, field="out"):
    """(sample id, frame number) -> the objects of ``field`` without their ids (each run makes
    new label ids)."""
    sids, numbers, values = ds.values(["id", "frames.frame_number", f"frames.{field}"])
    return {(sid, n): [(d.label, d.index, tuple(d.bounding_box), np.asarray(d.mask).tobytes()) for d in v.detections]
            for sid, nums, vals in zip(sids, numbers, values) for n, v in zip(nums, vals) if v is not None}


def _loads(ds):
    """Every sample and frame loads (an undeclared field in the documents would raise)."""
    import fiftyone as fo

    ds.reload()
    fresh = fo.load_dataset(ds.name)
    fresh.reload()
    for sample in fresh.iter_samples():
        for _ in sample.frames.values():
            pass
    return True


# -- 1. views that hide frames -----------------------------------------------------------------

def _hiding_views(ds):
    from fiftyone import ViewField as F

    frame_ids = ds.values("frames.id", unwind=True)
    return {"match_frames": ds.match_frames(F("kf").exists()), "select_frames": ds.select_frames(frame_ids[:6])}


@pytest.mark.parametrize("how", ["cancel", "error", "skip_failures"])
@pytest.mark.parametrize("view_kind", ["match_frames", "select_frames"])
def test_rollback_on_a_view_that_hides_frames_keeps_them(view_kind, how, make_video, scripted, run):
    """A run on a view that hides frames is cancelled / fails / fails one video with
    skip_failures: every frame of the root dataset, hidden ones included, is as it was."""
    import deaot_vos

    ds = _base(f"t_hide_{view_kind}_{how}", make_video, videos=2)
    before = _snapshot(ds, strict=False)
    view = _hiding_views(ds)[view_kind]
    assert view.count("frames") < ds.count("frames")
    if how == "cancel":
        with pytest.raises(deaot_vos.PropagationCancelled):
            deaot_vos.propagate(view, "kf", "out", overwrite=True, write_every=1,
                             progress=lambda f, label: len(scripted.steps) < 12, **run)
    else:
        first = ds.first().id
        scripted.fail = lambda tr, frame: RuntimeError("boom") if len(scripted.steps) == 4 else None
        if how == "error":
            with pytest.raises(RuntimeError, match="boom"):
                deaot_vos.propagate(view, "kf", "out", overwrite=True, write_every=1, **run)
        else:  # the first video fails; the second one is written
            summary = deaot_vos.propagate(view, "kf", "out", overwrite=True, write_every=1, skip_failures=True, **run)
            assert [f["id"] for f in summary["failed"]] == [first]
            after = _snapshot(ds, strict=False)
            ids = {str(d["_id"]) for d in after[0]}
            assert ids == {str(d["_id"]) for d in before[0]}
            kept = [d for d in after[1] if str(d["_sample_id"]) == first]
            assert kept == [d for d in before[1] if str(d["_sample_id"]) == first]
            return
    assert _snapshot(ds, strict=False) == before and _no_tmp(ds)


def test_operator_on_a_view_that_hides_frames_keeps_them_on_failure(make_video, scripted, run):
    """Through the operator (its target view hides frames): a failure changes nothing."""
    import fiftyone.operators as foo
    from fiftyone import ViewField as F

    ds = _base("t_hide_operator", make_video)
    before = _snapshot(ds, strict=False)
    view = ds.match_frames(F("kf").exists())
    scripted.fail = lambda tr, frame: RuntimeError("boom") if len(scripted.steps) == 3 else None
    with pytest.raises(Exception, match="boom"):
        foo.execute_operator("@deaot/vos/propagate_masks", dict(dataset=ds, view=view, params=dict(
            keyframes_field="kf", output_field="out", overwrite=True, model="DeAOTT", checkpoint=run["checkpoint"],
            device="cpu", write_every=1)))
    assert _snapshot(ds, strict=False) == before and _no_tmp(ds)


# -- 2. one run per output field ------------------------------------------------------------------

def test_second_run_into_the_same_field_is_refused_naming_the_owner(make_video, tmp_path, run):
    """Two CLI runs into one field at once: the second is refused (naming field and owner's pid),
    the first completes, the dataset loads and holds the complete output."""
    import fiftyone as fo

    ds = _persistent("t_two_runs", make_video, videos=2)
    try:
        first, marker = _worker(ds, "slow", 0, tmp_path, run["checkpoint"], wait=False)
        deadline = time.time() + 120
        while not marker.exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
        code, _, err = _worker(ds, "fast", 0, tmp_path, run["checkpoint"])
        assert code == 1, err[-3000:]
        assert "frame field 'out'" in err and f"pid {first.pid}" in err and "another propagation" in err, err[-2000:]
        assert first.poll() is None  # the first run was still going
        Path(str(marker) + ".go").touch()
        _, err1 = first.communicate(timeout=180)
        assert first.returncode == 0, err1[-3000:]
        assert _loads(ds) and _no_tmp(ds)
        _assert_complete(ds)
    finally:
        fo.delete_dataset(ds.name)


def test_a_dead_owners_claim_is_taken_over_and_a_live_one_is_not(make_video, scripted, run):
    """A claim whose process still runs refuses a run; once that process is gone the claim is
    taken over (its staging journal undone) and the run succeeds."""
    import deaot_vos
    from deaot_vos.propagation import journal

    ds = _base("t_claim_takeover", make_video)
    before = _snapshot(ds, strict=False)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = dict(journal.this_owner(), pid=holder.pid, proc_start=journal._process_start(holder.pid))
        journal._runs().insert_one(dict(_id=f"{ds._doc.id}:out", run="other", dataset_id=ds._doc.id, dataset=ds.name,
                                        field="out", owner=owner, phase="staging", tmp="out_deaot_tmp"))
        with pytest.raises(deaot_vos.propagation.FieldBusyError, match=f"pid {holder.pid}"):
            deaot_vos.propagate(ds, "kf", "out", overwrite=True, **run)
        assert _snapshot(ds, strict=False) == before
    finally:
        holder.kill()
        holder.wait()
    summary = deaot_vos.propagate(ds, "kf", "out", overwrite=True, **run)
    assert summary["written"] and _no_tmp(ds) and journal.claim_for(ds, "out") is None
    _assert_complete(ds)


# -- 3. a kill at every write of the final swap --------------------------------------------------

def test_a_kill_at_every_write_of_the_swap_is_finished_by_the_next_run(make_video, tmp_path, run):
    """The worker dies (os._exit) at the k-th database write after the swap began, for every k
    until a run completes. Each time the dataset still loads, and the next run (here one that is
    refused for an existing output) first finishes the swap (or, killed before the journal said
    "commit", undoes the run): the output is the complete new output (or the old one), no
    temporary field remains."""
    import fiftyone as fo
    import deaot_vos

    ds = _persistent("t_swap_kills", make_video)
    try:
        code, _, err = _worker(ds, "fast", 0, tmp_path, run["checkpoint"])  # the reference result
        assert code == 0, err[-3000:]
        expected = _contents(ds)
        total = int(err.rsplit("swap writes: ", 1)[1].split()[0])
        assert total >= 4  # journal, delete (documents, schema), rename (documents, schema), ...
        for k in range(total + 1):
            ds.clear_frame_field("out")  # so that the old output differs from the new one
            old = _contents(ds)
            code, _, err = _worker(ds, "kill-at", k, tmp_path, run["checkpoint"])
            if k == total:
                assert code == 0, err[-3000:]
            else:
                assert code == 9, (k, err[-3000:])
                assert _loads(ds), k
                with pytest.raises(deaot_vos.OutputExistsError):
                    deaot_vos.propagate(ds, "kf", "out", **run)
            assert _loads(ds) and _no_tmp(ds), k
            # write 0 records the commit in the journal: a kill before it is undone, after it finished
            assert _contents(ds) == (expected if k >= 1 else old), k
    finally:
        fo.delete_dataset(ds.name)


def test_double_ctrl_c_during_the_swap_finishes_it_and_says_so(make_video, tmp_path, run):
    import fiftyone as fo

    ds = _persistent("t_swap_sigint", make_video)
    try:
        code, _, err = _worker(ds, "sigint-twice", 2, tmp_path, run["checkpoint"])
        assert code == 0, err[-3000:]
        assert "no field was changed" not in err
        assert "during the final swap" in err and "new output" in err, err[-2000:]
        assert _loads(ds) and _no_tmp(ds)
        _assert_complete(ds)
    finally:
        fo.delete_dataset(ds.name)


def test_ctrl_c_during_the_last_writes_before_the_swap_writes_nothing(make_video, tmp_path, run):
    """The signal arrives after the last frame, while its values are written: the run stops
    before the swap, and "no field was changed" is true."""
    import fiftyone as fo

    ds = _persistent("t_sigint_last_write", make_video)
    try:
        before = _snapshot(ds, strict=False)
        # 9 steps at 3 frames per write: 3 set_values calls, the last one after the last frame
        code, _, err = _worker(ds, "sigint-before-swap", 3, tmp_path, run["checkpoint"])
        assert code == 130 and "cancelled: no field was changed" in err, err[-3000:]
        assert _snapshot(ds, strict=False) == before and _no_tmp(ds)
    finally:
        fo.delete_dataset(ds.name)


# -- 9. reserved temporary names -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["out_deaot_tmp", "out_deaot_old"])
def test_a_user_field_with_a_reserved_name_is_refused_and_kept(name, make_video, scripted, run):
    import fiftyone as fo
    import deaot_vos

    ds = _base(f"t_reserved_{name}", make_video)
    sample = ds.first()
    sample.frames[4][name] = fo.Detections(detections=[fo.Detection(label="mine", bounding_box=[0, 0, .5, .5])])
    sample.save()
    before = _snapshot(ds, strict=False)
    with pytest.raises(ValueError, match=f"'{name}'.*reserved"):
        deaot_vos.propagate(ds, "kf", "out", overwrite=True, **run)
    with pytest.raises(ValueError, match="reserved"):  # as keyframes it is refused too
        deaot_vos.propagate(ds, name, "new_out", **run)
    assert _snapshot(ds, strict=False) == before and not scripted.steps


def test_reserved_output_names_are_refused_before_any_work(make_video, scripted, run):
    import deaot_vos

    ds = _base("t_reserved_outputs", make_video)
    before = _snapshot(ds, strict=False)
    for kwargs in (dict(output_field="out_deaot_tmp"), dict(output_field="x", write_segmentation="out_deaot_tmp"),
                   dict(output_field="x", write_segmentation="x_deaot_tmp")):
        with pytest.raises(ValueError, match="reserved"):
            deaot_vos.propagate(ds, "kf", overwrite=True, **kwargs, **run)
    assert _snapshot(ds, strict=False) == before and not scripted.steps


# -- 8. group slices -----------------------------------------------------------------------------

def _grouped(make_video):
    import fiftyone as fo
    from helpers import detection as _det

    name = "t_groups"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    ds.add_group_field("group", default="left")
    samples = []
    for g in range(2):
        group = fo.Group()
        for slice_ in ("left", "right"):
            path, maps = make_video(f"g{g}_{slice_}", 8, objects=2, height=48, width=64)
            sample = fo.Sample(filepath=path, group=group.element(slice_))
            m = maps[1]
            sample.frames[2]["kf"] = fo.Detections(detections=[_det("red", m == 1), _det("green", m == 2)])
            samples.append(sample)
    ds.add_samples(samples)
    return ds


def test_a_non_default_group_slice_is_refused_before_any_work_and_the_hint_works(make_video, scripted, run):
    import deaot_vos

    ds = _grouped(make_video)
    before = [_snapshot(ds.select_group_slices(s), strict=False) for s in ("left", "right")]
    for view in (ds.select_group_slices("right"), ds.select_group_slices(["left", "right"])):
        with pytest.raises(ValueError, match="group slice.*'right'.*active slice is 'left'"):
            deaot_vos.propagate(view, "kf", "out", **run)
    assert [_snapshot(ds.select_group_slices(s), strict=False) for s in ("left", "right")] == before
    assert not scripted.steps
    summary = deaot_vos.propagate(ds.select_group_slices("left"), "kf", "out", **run)  # the active slice works
    assert summary["written"] and [r["status"] for r in summary["samples"]] == ["ok", "ok"]
    ds.group_slice = "right"  # the message's advice
    summary = deaot_vos.propagate(ds.select_group_slices("right"), "kf", "out", overwrite=True, **run)
    assert [r["status"] for r in summary["samples"]] == ["ok", "ok"]
    for slice_ in ("left", "right"):
        view = ds.select_group_slices(slice_)
        assert all(n in view.values("frames.frame_number", unwind=True) for n in range(1, 9))
        assert view.count("frames.out") == 2 * 8, slice_
    ds.group_slice = "left"
