"""DAVIS 2017 semi-supervised J&F evaluation, reproducing the official numbers.

Pure numpy (plus ``cv2.dilate`` for the boundary tolerance); no FiftyOne, no torch.

Protocol (official ``davis2017-evaluation`` semi-supervised task):

* K = largest label of the *first* GT frame after 255 -> 0; objects 1..K are scored,
  GT labels > K appearing later are ignored.
* Only frames 1..T-2 are scored (first and last frame dropped), N = T-2.
* A prediction label > K on a scored frame is an error (the official script aborts);
  objects absent from the prediction get all-zero masks.
* J = |G&P| / |G|P| (1 when both are empty).
* F = boundary F-measure with a disk tolerance of ceil(0.008 * diagonal) pixels.
* Per object: Mean, Recall (fraction of frames with value > 0.5, strict) and Decay
  (mean of the first quartile bin minus mean of the last; bin ids stored as uint8 in the
  official code, so long sequences give NaN).
* Global: every object of every sequence pooled with equal weight.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import cv2
import numpy as np

__all__ = [
    "STAT_KEYS",
    "SUMMARY_KEYS",
    "boundary_map",
    "bound_pixels",
    "disk",
    "per_frame_j",
    "per_frame_f",
    "decay_bins",
    "object_statistics",
    "sequence_metrics",
    "global_summary",
    "official_csvs",
]

#: keys of each per-object dict returned by :func:`sequence_metrics`
STAT_KEYS = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay", "J&F-Mean")
#: keys (and column order) of the official global table
SUMMARY_KEYS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")

_DEFAULT_BOUND_TH = 0.008
_CHUNK_PIXELS = 8 * 480 * 854  # frames per chunk in sequence_metrics ~ 8 at 480p


# --------------------------------------------------------------------------- boundaries


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary mask, ``(H, W)`` or batched ``(..., H, W)`` -> bool, same shape.

    A pixel is marked when it differs from its east, south or south-east neighbour
    (last row: east only; last column: south only; bottom-right pixel never).
    The image border is never a boundary. Non-zero input counts as foreground.
    """
    m = np.asarray(mask)
    if m.ndim < 2:
        raise ValueError(f"boundary_map needs at least 2 dims (H, W), got shape {m.shape}")
    if m.dtype != np.bool_:
        m = m != 0
    b = np.zeros(m.shape, dtype=bool)
    c = m[..., :-1, :-1]
    inner = b[..., :-1, :-1]
    np.not_equal(c, m[..., :-1, 1:], out=inner)
    inner |= c != m[..., 1:, :-1]
    inner |= c != m[..., 1:, 1:]
    np.not_equal(m[..., -1, :-1], m[..., -1, 1:], out=b[..., -1, :-1])
    np.not_equal(m[..., :-1, -1], m[..., 1:, -1], out=b[..., :-1, -1])
    return b


def bound_pixels(height: int, width: int, bound_th: float = _DEFAULT_BOUND_TH) -> float:
    """Tolerance radius in pixels: ``bound_th`` if >= 1, else ``ceil(bound_th * sqrt(H^2 + W^2))``."""
    if bound_th >= 1:
        return bound_th
    diag = math.sqrt(float(height * height + width * width))
    return float(math.ceil(bound_th * diag))


def disk(radius: float) -> np.ndarray:
    """Disk structuring element ``{(dy, dx): dy^2 + dx^2 <= r^2}`` as uint8.

    The offsets run over ``arange(-r, r + 1)``, so an integer r gives a ``(2r+1, 2r+1)`` array
    (a non-integer r gives half-integer offsets, as the official skimage-based code does).
    """
    offs = np.arange(-radius, radius + 1)
    return (offs[:, None] ** 2 + offs[None, :] ** 2 <= radius**2).astype(np.uint8)


# --------------------------------------------------------------------------- per-frame J / F


def _as_bool_stack(mask: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    m = np.asarray(mask)
    if m.ndim not in (2, 3):
        raise ValueError(f"{name} must be (H, W) or (N, H, W), got shape {m.shape}")
    if m.dtype != np.bool_:
        m = m != 0
    single = m.ndim == 2
    return (m[None] if single else m), single


def _check_pair(gt_mask: np.ndarray, pred_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    g, single_g = _as_bool_stack(gt_mask, "gt_mask")
    p, single_p = _as_bool_stack(pred_mask, "pred_mask")
    if g.shape != p.shape or single_g != single_p:
        raise ValueError(
            f"gt_mask and pred_mask shapes differ: {np.shape(gt_mask)} vs {np.shape(pred_mask)}"
        )
    return g, p, single_g


def _count(m: np.ndarray) -> np.ndarray:
    """Per-frame count of True pixels of an (N, H, W) bool array -> (N,) int64."""
    return np.count_nonzero(m.reshape(m.shape[0], -1), axis=1).astype(np.int64)


def per_frame_j(gt_mask: np.ndarray, pred_mask: np.ndarray) -> float | np.ndarray:
    """Region similarity (IoU) of binary masks.

    ``(H, W)`` pair -> float; ``(N, H, W)`` pair -> ``(N,)`` float64.
    Empty GT and empty prediction give 1.
    """
    g, p, single = _check_pair(gt_mask, pred_mask)
    inter = _count(g & p)
    union = _count(g | p)
    j = np.ones(len(union), dtype=np.float64)
    nz = union > 0
    j[nz] = inter[nz] / union[nz]
    return float(j[0]) if single else j


def _boundary_f(
    bg: np.ndarray, bp: np.ndarray, ng: np.ndarray, np_: np.ndarray, radius: float
) -> np.ndarray:
    """F from precomputed boundary stacks (N, H, W) and their counts (N,)."""
    n = bg.shape[0]
    h, w = bg.shape[1:]
    prec = np.zeros(n, dtype=np.float64)
    rec = np.zeros(n, dtype=np.float64)
    # special cases decided on boundary-pixel counts
    prec[(np_ == 0) & (ng > 0)] = 1.0
    rec[(np_ > 0) & (ng == 0)] = 1.0
    both_empty = (np_ == 0) & (ng == 0)
    prec[both_empty] = 1.0
    rec[both_empty] = 1.0
    todo = np.flatnonzero((np_ > 0) & (ng > 0))
    if len(todo):
        kernel = disk(radius)
        margin = max(kernel.shape) + 1
        for i in todo:
            # Crop to the boundaries' bounding box + kernel margin: pixels outside hold no
            # boundary, so they contribute nothing to the dilation and are never counted.
            anyb = bg[i] | bp[i]
            rows = np.flatnonzero(anyb.any(axis=1))
            cols = np.flatnonzero(anyb.any(axis=0))
            y0, y1 = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, h)
            x0, x1 = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, w)
            cg = bg[i, y0:y1, x0:x1]
            cp = bp[i, y0:y1, x0:x1]
            dil_g = cv2.dilate(cg.view(np.uint8), kernel).view(bool)
            dil_p = cv2.dilate(cp.view(np.uint8), kernel).view(bool)
            fg_match = np.count_nonzero(cp & dil_g)
            gt_match = np.count_nonzero(cg & dil_p)
            prec[i] = fg_match / float(np_[i])
            rec[i] = gt_match / float(ng[i])
    s = prec + rec
    f = np.zeros(n, dtype=np.float64)
    ok = s != 0
    f[ok] = 2 * prec[ok] * rec[ok] / s[ok]
    return f


def per_frame_f(
    gt_mask: np.ndarray, pred_mask: np.ndarray, bound_th: float = _DEFAULT_BOUND_TH
) -> float | np.ndarray:
    """Boundary F-measure of binary masks.

    ``(H, W)`` pair -> float; ``(N, H, W)`` pair -> ``(N,)`` float64.
    Tolerance radius from :func:`bound_pixels` (8 px at 480x854). Both boundaries empty -> 1,
    exactly one empty -> 0 (note: a full-frame mask has no boundary).
    """
    g, p, single = _check_pair(gt_mask, pred_mask)
    radius = bound_pixels(g.shape[1], g.shape[2], bound_th)
    bg = boundary_map(g)
    bp = boundary_map(p)
    f = _boundary_f(bg, bp, _count(bg), _count(bp), radius)
    return float(f[0]) if single else f


# --------------------------------------------------------------------------- statistics


def decay_bins(n: int, uint8_wrap: bool = True) -> np.ndarray:
    """The 5 quartile split ids ``round(1 + j*(n-1)/4 + 1e-10) - 1``, j=0..4 -> ``(5,)`` int64.

    Bin j covers values ``[ids[j], ids[j+1]]`` inclusive. With ``uint8_wrap`` (the official
    behaviour) the ids are taken modulo 256, as the official ``astype(np.uint8)`` does.
    """
    if n < 1:
        raise ValueError(f"decay_bins needs n >= 1, got {n}")
    ids = np.round(np.linspace(1, n, 5) + 1e-10).astype(np.int64) - 1
    return ids % 256 if uint8_wrap else ids


def _decay(values: np.ndarray, uint8_wrap: bool = True) -> float:
    ids = decay_bins(len(values), uint8_wrap)
    # official: values[ids[i] : ids[i+1] + 1] with uint8 ids; under numpy 2 the "+ 1" stays
    # uint8, so an end id of 255 wraps to 0 as well (N = 256 already gives an empty last bin).
    ends = (ids + 1) % 256 if uint8_wrap else ids + 1
    first = values[ids[0] : ends[1]]
    last = values[ids[3] : ends[4]]
    if len(first) == 0 or len(last) == 0:
        return float("nan")
    return float(np.mean(first) - np.mean(last))


def object_statistics(j: np.ndarray, f: np.ndarray, uint8_wrap: bool = True) -> dict[str, float]:
    """Per-object statistics from ``(N,)`` per-frame J and F values -> dict with :data:`STAT_KEYS`."""
    j = np.asarray(j, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    if j.ndim != 1 or j.shape != f.shape or len(j) == 0:
        raise ValueError(f"j and f must be equal-length non-empty 1-D arrays, got {j.shape}, {f.shape}")
    out = {
        "J-Mean": float(np.mean(j)),
        "J-Recall": float(np.mean(j > 0.5)),
        "J-Decay": _decay(j, uint8_wrap),
        "F-Mean": float(np.mean(f)),
        "F-Recall": float(np.mean(f > 0.5)),
        "F-Decay": _decay(f, uint8_wrap),
    }
    out["J&F-Mean"] = (out["J-Mean"] + out["F-Mean"]) / 2
    return out


def global_summary(objects: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Official global table: each object (of any sequence) is one equally weighted entry.

    ``objects``: per-object dicts (as in ``sequence_metrics(...)["objects"]``, possibly
    concatenated over sequences) -> dict with :data:`SUMMARY_KEYS`. A NaN Decay propagates
    (plain mean, as the official CLI). No objects -> all NaN.
    """
    objs = list(objects)
    out: dict[str, float] = {}
    for key in SUMMARY_KEYS[1:]:
        vals = np.array([o[key] for o in objs], dtype=np.float64)
        out[key] = float(np.mean(vals)) if len(vals) else float("nan")
    out = {"J&F-Mean": (out["J-Mean"] + out["F-Mean"]) / 2.0, **out}
    return out


# --------------------------------------------------------------------------- sequences


def _check_labels(arr: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label map, got dtype {a.dtype}")
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape (T, H, W), got {a.shape}")
    if np.issubdtype(a.dtype, np.signedinteger) and a.size and a.min() < 0:
        raise ValueError(f"{name} contains negative labels")
    return a


def sequence_metrics(
    gt: np.ndarray,
    pred: np.ndarray,
    bound_th: float = _DEFAULT_BOUND_TH,
    uint8_decay_quirk: bool = True,
) -> dict:
    """Score one sequence with the official semi-supervised protocol.

    gt, pred: ``(T, H, W)`` integer label maps (0 = background, GT 255 = void -> background).
    Returns ``{"K": int, "J": (K, T-2) float64, "F": (K, T-2) float64,
    "objects": [dict with STAT_KEYS] * K, "summary": dict with SUMMARY_KEYS}``;
    column i of J/F is frame i+1. ``uint8_decay_quirk=False`` computes Decay without the
    official uint8 wrap of the bin ids (only differs for T >= 258).

    Raises ValueError for T < 3, shape mismatch, or a prediction label > K on a scored frame.
    """
    gt = _check_labels(gt, "gt")
    pred = _check_labels(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred shapes differ: {gt.shape} vs {pred.shape}")
    t, h, w = gt.shape
    if t < 3:
        raise ValueError(f"need T >= 3 frames (first and last are not scored), got T={t}")

    first = gt[0]
    k = int(np.max(np.where(first == 255, 0, first))) if first.size else 0

    gt_s = gt[1:-1]
    pred_s = pred[1:-1]
    n = t - 2
    pmax = pred_s.max(axis=(1, 2)) if pred_s.size else np.zeros(n, dtype=np.int64)
    bad = np.flatnonzero(pmax > k)
    if len(bad):
        fi = int(bad[0]) + 1
        raise ValueError(
            f"prediction frame {fi} contains label {int(pmax[bad[0]])} but the GT has only "
            f"K={k} objects (K = max label of GT frame 0); the official evaluation aborts here"
        )

    radius = bound_pixels(h, w, bound_th)
    J = np.empty((k, n), dtype=np.float64)
    F = np.empty((k, n), dtype=np.float64)
    chunk = max(1, _CHUNK_PIXELS // max(1, h * w))
    for s in range(0, n, chunk):
        g_lab = gt_s[s : s + chunk]
        p_lab = pred_s[s : s + chunk]
        for obj in range(1, k + 1):
            g = g_lab == obj
            p = p_lab == obj
            J[obj - 1, s : s + chunk] = per_frame_j(g, p)
            bg = boundary_map(g)
            bp = boundary_map(p)
            F[obj - 1, s : s + chunk] = _boundary_f(bg, bp, _count(bg), _count(bp), radius)

    objects = [object_statistics(J[i], F[i], uint8_decay_quirk) for i in range(k)]
    return {"K": k, "J": J, "F": F, "objects": objects, "summary": global_summary(objects)}


def _fmt3(v: float) -> str:
    # pandas to_csv(float_format="%.3f") writes NaN as an empty field
    return "" if v != v else "%.3f" % v


def official_csvs(sequences: Mapping[str, Mapping]) -> tuple[str, str]:
    """The official CLI's two CSV files (``global_results-val.csv``, ``per-sequence_results-val.csv``).

    ``sequences``: ``{sequence_name: sequence_metrics(...) result}`` in dataset order.
    Returns ``(global_csv, per_sequence_csv)`` text with 3-decimal values; the per-sequence
    file has one row per object named ``<seq>_<k>``.
    """
    all_objs = [o for res in sequences.values() for o in res["objects"]]
    g = global_summary(all_objs)
    global_csv = ",".join(SUMMARY_KEYS) + "\n" + ",".join(_fmt3(g[k]) for k in SUMMARY_KEYS) + "\n"
    rows = ["Sequence,J-Mean,F-Mean"]
    for name, res in sequences.items():
        for i, o in enumerate(res["objects"], start=1):
            rows.append(f"{name}_{i},{_fmt3(o['J-Mean'])},{_fmt3(o['F-Mean'])}")
    return global_csv, "\n".join(rows) + "\n"
