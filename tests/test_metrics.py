"""Tests for deaot_core.metrics.davis against the official DAVIS 2017 numbers in tests/data/jf.

Every ``*.npz`` in tests/data/jf is checked against the ``cases`` of the ``*.json`` files
there (format described in the reference README), so more cases of the same format can be
dropped into that folder.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deaot_core.metrics import davis as M

DATA = Path(__file__).parent / "data" / "jf"
TOL = 1e-9


def _load_expected() -> tuple[dict, list[tuple[str, dict]]]:
    cases: dict = {}
    globals_: list[tuple[str, dict]] = []
    for jf in sorted(DATA.glob("*.json")):
        doc = json.loads(jf.read_text())
        for name, case in doc.get("cases", {}).items():
            cases[name] = case
        if "global" in doc:
            globals_.append((jf.name, doc["global"]))
    return cases, globals_


EXPECTED, GLOBALS = _load_expected()
NPZ = sorted(p.stem for p in DATA.glob("*.npz"))


def _case(name: str) -> dict:
    for cname, case in EXPECTED.items():
        if cname == name or Path(case.get("file", "")).stem == name:
            return case
    raise AssertionError(f"{name}.npz has no entry in any tests/data/jf/*.json")


_CACHE: dict = {}


def _load(name: str):
    if name not in _CACHE:
        z = np.load(DATA / f"{name}.npz")
        gt, pred = z["gt"], z["pred"]
        _CACHE[name] = (gt, pred, M.sequence_metrics(gt, pred))
    return _CACHE[name]


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _close(a, b, tol: float = TOL) -> bool:
    a, b = _num(a), _num(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


def test_data_present():
    assert len(NPZ) >= 4
    assert GLOBALS, "expected.json with a 'global' entry is missing"


# --------------------------------------------------------------------------- reference cases


@pytest.mark.parametrize("name", NPZ)
def test_case_structure(name):
    case = _case(name)
    gt, pred, res = _load(name)
    t = case["T"]
    assert gt.shape == pred.shape == (t, case["H"], case["W"])
    assert res["K"] == case["K"]
    n = t - 2
    assert case["eval_frame_indices"] == list(range(1, t - 1))
    assert M.bound_pixels(case["H"], case["W"]) == case["bound_pix"]
    scored_max = int(pred[1:-1].max())
    assert scored_max == case["num_pred_objects_read"]
    ids = case["decay_bin_ids"]
    assert ids in (M.decay_bins(n).tolist(), M.decay_bins(n, uint8_wrap=False).tolist())
    if n < 256 and "decay_bins_inclusive" in case:
        assert case["decay_bins_inclusive"] == [[ids[i], ids[i + 1]] for i in range(4)]


@pytest.mark.parametrize("name", NPZ)
def test_per_frame_scored_exact(name):
    case = _case(name)
    _, _, res = _load(name)
    assert res["J"].shape == res["F"].shape == (case["K"], case["T"] - 2)
    assert res["J"].dtype == res["F"].dtype == np.float64
    # bit-exact, not approximately equal
    assert res["J"].tolist() == case["per_frame"]["J"]
    assert res["F"].tolist() == case["per_frame"]["F"]


@pytest.mark.parametrize("name", NPZ)
def test_per_frame_functions_all_frames_exact(name):
    case = _case(name)
    gt, pred, _ = _load(name)
    gt = np.where(gt == 255, 0, gt)
    allj, allf = case["per_frame_all_frames"]["J"], case["per_frame_all_frames"]["F"]
    for k in range(1, case["K"] + 1):
        g, p = gt == k, pred == k
        # batch form
        assert M.per_frame_j(g, p).tolist() == allj[k - 1]
        assert M.per_frame_f(g, p).tolist() == allf[k - 1]
        # single-frame form, first and last frame included
        for t in (0, case["T"] - 1, case["T"] // 2):
            assert M.per_frame_j(g[t], p[t]) == allj[k - 1][t]
            assert M.per_frame_f(g[t], p[t]) == allf[k - 1][t]
        # scored columns of the all-frames table equal the protocol table
        assert allj[k - 1][1:-1] == case["per_frame"]["J"][k - 1]


@pytest.mark.parametrize("name", NPZ)
def test_object_statistics(name):
    case = _case(name)
    _, _, res = _load(name)
    assert len(res["objects"]) == len(case["objects"]) == case["K"]
    for got, exp in zip(res["objects"], case["objects"]):
        for key in M.STAT_KEYS:
            assert _close(got[key], exp[key]), (name, exp.get("object_id"), key, got[key], exp[key])


@pytest.mark.parametrize("name", NPZ)
def test_sequence_summary(name):
    case = _case(name)
    _, _, res = _load(name)
    assert list(res["summary"]) == list(M.SUMMARY_KEYS)
    for key in M.SUMMARY_KEYS:
        assert _close(res["summary"][key], case["summary"][key]), (name, key)


def _decay_pairs(spec, objs_unwrapped):
    """Yield (got, expected) pairs from a 'decay_without_uint8_wrap' entry of unknown layout."""
    if isinstance(spec, list):
        for o, e in zip(objs_unwrapped, spec):
            if isinstance(e, dict):
                for key in ("J-Decay", "F-Decay"):
                    if key in e:
                        yield o[key], e[key]
    elif isinstance(spec, dict):
        for key, val in spec.items():
            base = key if key.endswith("-Decay") else f"{key}-Decay"
            if base not in ("J-Decay", "F-Decay"):
                continue
            vals = val if isinstance(val, list) else [val]
            for o, e in zip(objs_unwrapped, vals):
                yield o[base], e


@pytest.mark.parametrize("name", NPZ)
def test_uint8_quirk_case(name):
    case = _case(name)
    if "official_quirk_uint8_decay" not in case.get("flags", []):
        pytest.skip("not a uint8-decay quirk case")
    gt, pred, res = _load(name)
    assert all(math.isnan(o["J-Decay"]) and math.isnan(o["F-Decay"]) for o in res["objects"])
    spec = case.get("decay_without_uint8_wrap")
    if spec is None:
        return
    unwrapped = M.sequence_metrics(gt, pred, uint8_decay_quirk=False)["objects"]
    pairs = list(_decay_pairs(spec, unwrapped))
    if not pairs:
        pytest.skip(f"unrecognised decay_without_uint8_wrap layout: {spec!r}")
    for got, exp in pairs:
        assert _close(got, exp)


@pytest.mark.parametrize("json_name,glob", GLOBALS, ids=[g[0] for g in GLOBALS])
def test_global_pooled_and_cli_csv(json_name, glob):
    seqs = {name: _load(Path(_case(name)["file"]).stem)[2] for name in glob["sequences"]}
    objs = [o for r in seqs.values() for o in r["objects"]]
    if "num_objects_pooled" in glob:
        assert len(objs) == glob["num_objects_pooled"]
    got = M.global_summary(objs)
    for key in M.SUMMARY_KEYS:
        assert _close(got[key], glob[key]), key
    g_csv, s_csv = M.official_csvs(seqs)
    assert g_csv == glob["official_cli_global_csv"]
    assert s_csv == glob["official_cli_per_sequence_csv"]
    # csv row names match the JSON's csv_name
    names = [o["csv_name"] for n in glob["sequences"] for o in _case(n)["objects"]]
    assert [r.split(",")[0] for r in s_csv.splitlines()[1:]] == names


def test_global_weighting_is_per_object_not_per_sequence():
    a = {k: 1.0 for k in M.STAT_KEYS}
    b = {k: 0.0 for k in M.STAT_KEYS}
    # one sequence with 3 objects (all 1.0) and one with 1 object (0.0) -> 0.75, not 0.5
    g = M.global_summary([a, a, a, b])
    assert g["J-Mean"] == 0.75 and g["J&F-Mean"] == 0.75


# --------------------------------------------------------------------------- definitions


def _bmap_loops(m: np.ndarray) -> np.ndarray:
    h, w = m.shape
    b = np.zeros((h, w), bool)
    for y, x in itertools.product(range(h), range(w)):
        if y < h - 1 and x < w - 1:
            b[y, x] = m[y, x] != m[y, x + 1] or m[y, x] != m[y + 1, x] or m[y, x] != m[y + 1, x + 1]
        elif y == h - 1 and x < w - 1:
            b[y, x] = m[y, x] != m[y, x + 1]
        elif x == w - 1 and y < h - 1:
            b[y, x] = m[y, x] != m[y + 1, x]
    return b


@pytest.mark.parametrize("shape", [(7, 9), (1, 6), (6, 1), (1, 1), (2, 2), (12, 5)])
def test_boundary_map_definition(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.0, 0.3, 0.7, 1.0):
        m = rng.random(shape) < density
        assert np.array_equal(M.boundary_map(m), _bmap_loops(m))
    stack = rng.random((3, *shape)) < 0.5
    assert np.array_equal(M.boundary_map(stack), np.stack([_bmap_loops(s) for s in stack]))


def test_boundary_map_border_and_full_frame():
    assert not M.boundary_map(np.ones((5, 6), bool)).any()
    assert not M.boundary_map(np.zeros((5, 6), bool)).any()
    m = np.zeros((5, 6), bool)
    m[1:3, 2:4] = True  # 2x2 square
    b = M.boundary_map(m)
    # background above/left, object pixels on the right/bottom edge
    expected = {(0, 1), (0, 2), (0, 3), (1, 1), (2, 1), (1, 3), (2, 2), (2, 3)}
    assert set(zip(*np.nonzero(b))) == expected


@pytest.mark.parametrize(
    "hw,r", [((480, 854), 8), ((241, 427), 4), ((150, 200), 2), ((720, 1280), 12), ((10, 10), 1), ((48, 64), 1)]
)
def test_bound_pixels(hw, r):
    assert M.bound_pixels(*hw) == r


def test_bound_pixels_absolute_and_disk():
    assert M.bound_pixels(480, 854, 3) == 3
    d = M.disk(2)
    assert d.shape == (5, 5) and d.sum() == 13  # not a square
    assert d[0, 0] == 0 and d[0, 2] == 1


def _f_bruteforce(g: np.ndarray, p: np.ndarray, r: int) -> float:
    """F from the README definitions, dilation by explicit disk offsets (no cv2)."""
    bg, bp = _bmap_loops(g), _bmap_loops(p)
    ng, np_ = int(bg.sum()), int(bp.sum())
    if np_ == 0 and ng > 0:
        return 0.0
    if np_ > 0 and ng == 0:
        return 0.0
    if np_ == 0 and ng == 0:
        return 1.0

    def dil(b):
        out = np.zeros_like(b)
        ys, xs = np.nonzero(b)
        h, w = b.shape
        for y, x in zip(ys, xs):
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    if dy * dy + dx * dx <= r * r and 0 <= y + dy < h and 0 <= x + dx < w:
                        out[y + dy, x + dx] = True
        return out

    prec = (bp & dil(bg)).sum() / float(np_)
    rec = (bg & dil(bp)).sum() / float(ng)
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_per_frame_f_matches_bruteforce(r):
    rng = np.random.default_rng(r)
    h, w = 23, 31
    for trial in range(6):
        g = np.zeros((h, w), bool)
        p = np.zeros((h, w), bool)
        y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
        g[y : y + rng.integers(2, 8), x : x + rng.integers(2, 8)] = True
        y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
        p[y : y + rng.integers(2, 8), x : x + rng.integers(2, 8)] = True
        if trial == 5:
            g, p = rng.random((h, w)) < 0.3, rng.random((h, w)) < 0.3
        assert M.per_frame_f(g, p, bound_th=r) == _f_bruteforce(g, p, r)


def test_empty_empty():
    z = np.zeros((9, 11), bool)
    assert M.per_frame_j(z, z) == 1.0
    assert M.per_frame_f(z, z) == 1.0


def test_empty_vs_nonempty():
    z = np.zeros((9, 11), bool)
    o = z.copy()
    o[3:5, 3:6] = True
    for a, b in ((z, o), (o, z)):
        assert M.per_frame_j(a, b) == 0.0
        assert M.per_frame_f(a, b) == 0.0


def test_full_frame_gt_vs_empty_pred():
    full = np.ones((9, 11), bool)
    z = np.zeros_like(full)
    assert M.per_frame_j(full, z) == 0.0
    assert M.per_frame_f(full, z) == 1.0  # neither mask has a boundary pixel
    almost = full.copy()
    almost[4, 5] = False
    assert M.per_frame_j(full, almost) > 0.9
    assert M.per_frame_f(full, almost) == 0.0


def test_per_frame_input_checks():
    with pytest.raises(ValueError):
        M.per_frame_j(np.zeros((3, 4)), np.zeros((4, 3)))
    with pytest.raises(ValueError):
        M.per_frame_f(np.zeros((2, 3, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError):
        M.per_frame_j(np.zeros(5), np.zeros(5))
    # non-bool input: non-zero counts as foreground
    assert M.per_frame_j(np.array([[0, 2], [0, 0]]), np.array([[0, 1], [0, 0]])) == 1.0


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    "n,ids",
    [
        (1, [0, 0, 0, 0, 0]),
        (2, [0, 0, 1, 1, 1]),
        (3, [0, 1, 1, 2, 2]),
        (4, [0, 1, 2, 2, 3]),
        (5, [0, 1, 2, 3, 4]),
        (28, [0, 7, 14, 20, 27]),
    ],
)
def test_decay_bins(n, ids):
    assert M.decay_bins(n).tolist() == ids


def test_decay_small_n():
    v = np.array([0.9, 0.3, 0.1])
    assert M.object_statistics(v[:1], v[:1])["J-Decay"] == 0.0
    assert M.object_statistics(v[:2], v[:2])["J-Decay"] == pytest.approx(0.9 - 0.3, abs=1e-15)
    assert M.object_statistics(v, v)["J-Decay"] == pytest.approx((0.9 + 0.3) / 2 - 0.1, abs=1e-15)


def test_recall_is_strict():
    j = np.array([0.5, 0.5, 0.5000001, 0.2])
    s = M.object_statistics(j, j)
    assert s["J-Recall"] == 0.25 and s["F-Recall"] == 0.25


def _official_style_decay(v: np.ndarray) -> float:
    """The README's uint8 decay formula evaluated literally with this numpy (an oracle)."""
    with np.errstate(all="ignore"):
        ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.uint8)
        q0 = v[ids[0] : ids[1] + 1]
        q3 = v[ids[3] : ids[4] + 1]
    if len(q0) == 0 or len(q3) == 0:
        return float("nan")
    return float(np.mean(q0) - np.mean(q3))


@pytest.mark.parametrize("n", [200, 254, 255, 256, 257, 258, 298, 341, 342, 500, 1020, 1100])
def test_decay_uint8_wrap_matches_literal_formula(n):
    with np.errstate(all="ignore"):
        wraps = np.array([256.0, 300.0, 1100.0]).astype(np.uint8).tolist() == [0, 44, 76]
    if n > 256 and not wraps:
        pytest.skip("this platform does not wrap float->uint8 casts modulo 256")
    v = np.random.default_rng(n).random(n)
    got = M.object_statistics(v, v)["J-Decay"]
    assert _close(got, _official_style_decay(v), 1e-12)
    if 256 <= n <= 341:
        assert math.isnan(got)  # last bin is an empty slice after the wrap
    if n <= 255:
        assert not math.isnan(got)
    unwrapped = M.object_statistics(v, v, uint8_wrap=False)["J-Decay"]
    ids = M.decay_bins(n, uint8_wrap=False)
    assert unwrapped == pytest.approx(v[ids[0] : ids[1] + 1].mean() - v[ids[3] : ids[4] + 1].mean(), abs=1e-15)


def test_uint8_quirk_synthetic_sequence():
    # T = 259 -> N = 257 scored frames: official Decay is NaN, Mean/Recall are unaffected
    t, h, w = 259, 6, 7
    gt = np.zeros((t, h, w), np.uint8)
    gt[:, 1:4, 1:4] = 1
    pred = gt.copy()
    pred[100:, 1:4, 1:3] = 1
    pred[100:, 1:4, 3] = 0
    res = M.sequence_metrics(gt, pred)
    o = res["objects"][0]
    assert math.isnan(o["J-Decay"]) and math.isnan(o["F-Decay"])
    assert not math.isnan(o["J-Mean"]) and 0 < o["J-Mean"] < 1
    assert math.isnan(res["summary"]["J-Decay"]) and not math.isnan(res["summary"]["J&F-Mean"])
    g_csv, _ = M.official_csvs({"long": res})
    assert g_csv.splitlines()[1].split(",")[3] == ""  # pandas writes NaN as an empty field
    o2 = M.sequence_metrics(gt, pred, uint8_decay_quirk=False)["objects"][0]
    assert o2["J-Decay"] > 0 and o2["J-Mean"] == o["J-Mean"]


# --------------------------------------------------------------------------- protocol


def _tiny_sequence():
    t, h, w = 5, 8, 10
    gt = np.zeros((t, h, w), np.uint8)
    gt[:, 1:4, 1:4] = 1
    gt[:, 5:7, 5:9] = 2
    return gt, gt.copy()


def test_protocol_frames_k_and_padding():
    gt, pred = _tiny_sequence()
    pred[0] = 7  # first and last pred frames are never read
    pred[-1] = 9
    pred[1:-1][pred[1:-1] == 2] = 0  # object 2 never predicted: zero padding
    res = M.sequence_metrics(gt, pred)
    assert res["K"] == 2 and res["J"].shape == (2, 3)
    assert np.all(res["J"][0] == 1) and np.all(res["F"][0] == 1)
    assert np.all(res["J"][1] == 0) and np.all(res["F"][1] == 0)


def test_k_from_first_frame_void_and_late_labels():
    gt, pred = _tiny_sequence()
    gt[0, 0, 0] = 255  # void does not count for K
    gt[2, 7, 0] = 3  # label appearing later is ignored
    gt[3, 0, 9] = 255  # void on a scored frame -> background
    res = M.sequence_metrics(gt, pred)
    assert res["K"] == 2
    assert np.all(res["J"] == 1)
    gt2, pred2 = _tiny_sequence()
    gt2[0] = 0
    gt2[0, 0, 0] = 1  # only object 1 in the first frame
    res2 = M.sequence_metrics(gt2, np.where(pred2 == 2, 0, pred2))
    assert res2["K"] == 1 and len(res2["objects"]) == 1


def test_no_objects():
    gt = np.zeros((4, 5, 6), np.uint8)
    res = M.sequence_metrics(gt, gt)
    assert res["K"] == 0 and res["J"].shape == (0, 2) and res["objects"] == []
    assert all(math.isnan(v) for v in res["summary"].values())


def test_errors():
    gt, pred = _tiny_sequence()
    with pytest.raises(ValueError, match="T >= 3"):
        M.sequence_metrics(gt[:2], pred[:2])
    with pytest.raises(ValueError, match="shapes differ"):
        M.sequence_metrics(gt, pred[:, :, :-1])
    with pytest.raises(ValueError, match="shape"):
        M.sequence_metrics(gt[0], pred[0])
    bad = pred.copy()
    bad[2, 0, 0] = 3
    with pytest.raises(ValueError, match=r"frame 2 contains label 3.*K=2"):
        M.sequence_metrics(gt, bad)
    bad = pred.copy()
    bad[1, 0, 0] = 255
    with pytest.raises(ValueError, match=r"frame 1 contains label 255"):
        M.sequence_metrics(gt, bad)
    with pytest.raises(ValueError, match="integer"):
        M.sequence_metrics(gt.astype(float), pred)
    with pytest.raises(ValueError, match="negative"):
        M.sequence_metrics(gt.astype(np.int32), pred.astype(np.int32) - 1)
    with pytest.raises(ValueError):
        M.decay_bins(0)


def test_import_is_light():
    """The J&F module itself needs numpy and OpenCV only: loaded on its own (without the
    ``deaot_core`` package, whose API imports torch) it pulls in neither FiftyOne nor torch."""
    code = (
        "import importlib.util, sys; "
        "spec = importlib.util.spec_from_file_location('davis', 'deaot_core/metrics/davis.py'); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "assert module.sequence_metrics; "
        "bad = [m for m in ('fiftyone', 'torch', 'deaot_vos') if m in sys.modules]; "
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
