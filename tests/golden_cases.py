"""Runs a golden case (official aot-benchmark outputs on a fixed clip with fixed weights)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import deaot_core


def load_case(json_path: Path):
    meta = json.loads(json_path.read_text())
    data = np.load(json_path.with_name(f"{meta['case']}.npz"))
    return meta, data


def build_case_model(meta: dict, json_path: Path, tmp_path: Path) -> torch.nn.Module:
    """The case's model with its weights cast to float32 (the reference was computed so)."""
    state = torch.load(json_path.with_name(meta["weights_file"]), map_location="cpu", weights_only=True)
    state = deaot_core.extract_state_dict(state)
    weights = tmp_path / "weights_fp32.pth"
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, weights)
    model = deaot_core.build_model(meta["official_model"])
    return deaot_core.load_checkpoint(model, weights)


def run_case(meta: dict, data, model) -> dict:
    """Stream the clip through a Tracker; return the worst probability error, the label
    mismatches per frame and, over the mismatched pixels, the widest gap between the official
    probabilities of its label and of ours (a near-tie when tiny; inf where ours is an id the
    official probabilities of that frame do not hold)."""
    tracker = deaot_core.Tracker(model, device="cpu", long_term_gap=meta["long_term_mem_gap"],
                                 short_term_skip=meta.get("short_term_mem_skip", 1))
    keyframes = {int(t) for t in meta["keyframes"]}
    worst, worst_tie, mismatches = 0.0, 0.0, {}
    for t in range(meta["T"]):
        mask = data[f"keyframe_{t}"] if t in keyframes else None
        out = tracker.step(data["frames"][t], mask=mask)
        label, ref_label = tracker.label, data["labels"][t].astype(np.int64)
        differ = label != ref_label
        if t > 0:
            ref = data[f"probs_{t}"]
            got = out.detach().cpu().numpy()[: ref.shape[0]]
            assert got.shape == ref.shape, (t, got.shape, ref.shape)
            worst = max(worst, float(np.abs(got - ref).max()))
            ys, xs = np.nonzero(differ)
            for y, x, ours, theirs in zip(ys, xs, label[differ], ref_label[differ]):
                gap = abs(ref[theirs, y, x] - ref[ours, y, x]) if max(ours, theirs) < ref.shape[0] else np.inf
                worst_tie = max(worst_tie, float(gap))
        elif differ.any():
            worst_tie = np.inf  # the first frame's label is its keyframe: no tie possible
        mismatches[t] = int(differ.sum())
    return {"max_abs_diff": worst, "label_mismatches": mismatches, "max_tie_gap": worst_tie}
