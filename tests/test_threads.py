"""CPU threads under contention: the governor sees other processes' load (real busy processes),
fixes or restores torch's thread count around each tracker step, and the thread count never
changes what an incremental run considers up to date."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import pytest
import torch

import deaot_core
from deaot_core.threads import CoreLoad, ThreadGovernor, _busy_and_total, usable_cores


@contextlib.contextmanager
def busy_processes(count: int, seconds: float = 20):
    procs = [subprocess.Popen([sys.executable, "-c", f"import time\nend = time.time() + {seconds}\n"
                               "while time.time() < end: pass"]) for _ in range(count)]
    try:
        time.sleep(0.3)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_usable_cores_follow_the_affinity_mask():
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


def test_core_load_counts_another_process_but_not_this_one():
    load = CoreLoad()
    with busy_processes(1):
        load.measure()
        time.sleep(1.0)
        others = load.measure()
    assert others is not None and others >= 0.7  # the busy process: about one core
    # this process spinning is its own time, not another process's
    cpus = os.sched_getaffinity(0)
    load.measure()
    busy_before, total_before = _busy_and_total(cpus)
    mine_before = time.process_time()
    end = time.time() + 1.0
    while time.time() < end:
        pass
    others = load.measure()
    busy_after, total_after = _busy_and_total(cpus)
    everyone = (busy_after - busy_before) / ((total_after - total_before) / len(cpus))
    mine = time.process_time() - mine_before
    assert mine > 0.15 and others == pytest.approx(max(0.0, everyone - mine), abs=0.06)

def test_the_governor_drops_to_the_free_cores_while_other_processes_are_busy(torch_threads):
    ceiling = min(usable_cores(), 4)
    if ceiling < 2:
        pytest.skip("one usable core: nothing to choose")
    torch.set_num_threads(ceiling)
    governor = ThreadGovernor()
    assert governor.ceiling == ceiling
    with busy_processes(ceiling - 1):
        governor.threads  # starts a measurement window inside the busy period
        time.sleep(1.2)
        assert governor.threads == 1
        with governor.use() as threads:
            assert threads == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == ceiling  # restored


def test_a_fixed_thread_count_is_used_inside_each_step_and_restored(torch_threads):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = deaot_core.build_model("DeAOTT")
    seen = []
    model.encoder.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    tracker = deaot_core.Tracker(model, threads=1)
    frame = torch.randint(0, 255, (48, 64, 3), dtype=torch.uint8).numpy()
    mask = torch.zeros(48, 64, dtype=torch.long)
    mask[10:20, 10:30] = 1
    tracker.step(frame, mask.numpy())
    tracker.step(frame)
    assert seen == [1, 1] and torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="threads"):
        deaot_core.TrackerOptions(threads=0)
    with pytest.raises(ValueError, match="threads"):
        ThreadGovernor(1.5)


@pytest.mark.usefixtures("fiftyone_db")
def test_the_thread_count_does_not_make_an_incremental_run_recompute(make_video, tiny_checkpoint, tmp_path,
                                                                      monkeypatch, torch_threads):
    import fiftyone as fo

    import deaot_vos
    from helpers import detection

    monkeypatch.setenv("DEAOT_CACHE", str(tmp_path / "cache"))
    path, maps = make_video("threads", 6, objects=2)
    ds = fo.Dataset()
    sample = fo.Sample(filepath=path)
    sample.frames[1]["kf"] = fo.Detections(detections=[detection(str(i), maps[0] == i) for i in (1, 2)])
    ds.add_sample(sample)
    options = dict(model="DeAOTT", checkpoint=tiny_checkpoint, device="cpu", incremental=True)
    first, = deaot_vos.propagate(ds, "kf", "out", threads=1, **options)["samples"]
    again, = deaot_vos.propagate(ds, "kf", "out", threads=2, **options)["samples"]
    assert (first["frames_recomputed"], again["frames_recomputed"], again["frames_reused"]) == (6, 0, 6)
    assert deaot_vos.PropagationOptions.from_params({"keyframes_field": "kf", "threads": 3}).threads == 3
    assert deaot_vos.PropagationOptions.from_params({"keyframes_field": "kf", "threads": ""}).threads is None
