"""A propagation running (a real CLI process, held mid-run at a deterministic point) while an
evaluation or an export reads the same dataset in another process.

While the run stages its values the output field is stable and readers see the previous output.
A reader whose reads straddle the run's final swap would see the old output on some videos and the
new one on others: it reads again (each attempt is one version of the field for every video).
The swap is placed between two reads deterministically: the reader's first read of a label field
releases the held worker and waits for it to exit."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_journal import _loads, _persistent, _worker
from test_reliability import _assert_complete, _no_tmp, run, scripted  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("fiftyone_db", "torch_threads")


def _wait_for(marker: Path, proc) -> None:
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.fixture
def outputs(make_video, tmp_path, run, scripted):
    """Two videos with a complete output ``out`` (the worker's stand-in tracker, run here) copied
    to ``gt``; yields (dataset, start) where ``start()`` clears ``out`` and starts a CLI
    propagation into it, held mid-run, returning (process, marker)."""
    import fiftyone as fo
    import deaot_vos

    ds = _persistent("t_concurrent_readers", make_video, videos=2)
    deaot_vos.propagate(ds, "kf", "out", overwrite=True, **run)
    ds.clone_frame_field("out", "gt")

    def start():
        ds.clear_frame_field("out")  # the old output: empty; the run's: complete
        worker, marker = _worker(ds, "slow", 0, tmp_path, run["checkpoint"], wait=False)
        _wait_for(marker, worker)  # the run is mid-video, its first values staged
        return worker, marker

    yield ds, start
    fo.delete_dataset(ds.name)


def _finish(worker, marker) -> None:
    Path(str(marker) + ".go").touch()
    _, err = worker.communicate(timeout=180)
    assert worker.returncode == 0, err[-3000:]


def _swap_after_first_read(monkeypatch, module, worker, marker, after: int = 1) -> list:
    """Make ``module.read_id_maps`` let the held run finish (its swap included) after ``after``
    reads; returns the list of fields read."""
    original = module.read_id_maps
    reads = []

    def read_id_maps(sample_collection, sample_id, filepath, field, *args, **kwargs):
        reads.append(field)
        if len(reads) == after + 1:
            _finish(worker, marker)
        return original(sample_collection, sample_id, filepath, field, *args, **kwargs)

    monkeypatch.setattr(module, "read_id_maps", read_id_maps)
    return reads


def test_readers_while_the_run_stages_see_the_previous_output_and_an_export_straddling_the_swap_one_version(
        outputs, tmp_path, monkeypatch):
    import deaot_vos.formats.vos as vos
    from deaot_vos.evaluation import evaluate_vos

    ds, start = outputs
    worker, marker = start()
    # while the run stages its values, readers see the previous (empty) output, and what they write stays
    results = evaluate_vos(ds, "out", "gt", eval_key="ev")
    assert [s["summary"]["J&F-Mean"] for s in results.sequences] == [pytest.approx(0.0)] * 2
    staged = vos.export_vos(ds, tmp_path / "staged", "out")
    assert [s["annotated"] for s in staged["sequences"].values()] == [0, 0]
    # the run's swap happens after the export read the first video
    reads = _swap_after_first_read(monkeypatch, vos, worker, marker)
    exported = vos.export_vos(ds, tmp_path / "export", "out")
    annotated = [s["annotated"] for s in exported["sequences"].values()]
    assert annotated == [8, 8], annotated  # the new output on both videos (not [0, 8])
    assert reads == ["out"] * 4  # read again after the swap
    ds.reload()
    assert _loads(ds) and _no_tmp(ds)
    _assert_complete(ds)
    assert ds.list_evaluations() == ["ev"] and ds.values("ev_JF") == [pytest.approx(0.0)] * 2
    assert {"ev_J", "ev_F"} <= set(ds.get_frame_field_schema())


def test_an_evaluation_straddling_the_swap_reads_one_version(outputs, monkeypatch):
    import deaot_vos.evaluation as evaluation

    ds, start = outputs
    worker, marker = start()
    reads = _swap_after_first_read(monkeypatch, evaluation, worker, marker, after=2)  # video 1: gt, out
    results = evaluation.evaluate_vos(ds, "out", "gt", eval_key="ev")
    per_video = [s["summary"]["J&F-Mean"] for s in results.sequences]
    assert per_video == [pytest.approx(1.0)] * 2, per_video  # the new output on both videos (not [0, 1])
    assert reads == ["gt", "out"] * 4
    ds.reload()
    assert ds.values("ev_JF") == [pytest.approx(1.0)] * 2 and _no_tmp(ds)
    _assert_complete(ds)
