"""DeAOT / AOT video object segmentation core (pure PyTorch; no FiftyOne).

    model = deaot_core.build_model("DeAOTT")
    deaot_core.load_checkpoint(model, "DeAOTT_PRE_YTB_DAV.pth")
    tracker = deaot_core.Tracker(model, device="auto")
    probs = tracker.step(frame0, mask0)   # (K+1, H, W)
    probs = tracker.step(frame1)          # tracker.label: the (H, W) label map
"""
from __future__ import annotations

import torch

from .checkpoint import CheckpointError, cache_dir, download, extract_state_dict, load_checkpoint, save_checkpoint
from .config import MODEL_CONFIGS, MODEL_NAMES, ModelConfig, get_config
from .engine import GroupEngine, train_forward
from .modeling.model import VOSModel
from .tracker import Tracker, merge_groups, native_cpu_precision, network_size


def build_model(name: str, **overrides) -> VOSModel:
    """A randomly initialised model of the registered variant ``name``, in eval mode."""
    return VOSModel(get_config(name, **overrides)).eval()


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (the model zoo's count)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "CheckpointError", "GroupEngine", "MODEL_CONFIGS", "MODEL_NAMES", "ModelConfig", "Tracker", "VOSModel",
    "build_model", "cache_dir", "count_parameters", "download", "extract_state_dict", "get_config",
    "load_checkpoint", "merge_groups", "native_cpu_precision", "network_size", "save_checkpoint", "train_forward",
]
