"""DeAOT / AOT video object segmentation core (pure PyTorch; no FiftyOne).

    model = deaot_core.build_model("DeAOTT")
    deaot_core.load_checkpoint(model, "DeAOTT_PRE_YTB_DAV.pth")
    # or in one call: the cache dir, the official download, then the shipped demo weights
    model = deaot_core.load_pretrained("DeAOTT", checkpoint=None, device="auto")
    tracker = deaot_core.Tracker(model, device="auto")
    probs = tracker.step(frame0, mask0)   # (K+1, H, W)
    probs = tracker.step(frame1)          # tracker.label: the (H, W) label map
    for result in deaot_core.propagate_video(tracker, frames, {0: mask0}):   # a whole video
        ...                                # FrameResult: index, label_map, confidences, ...
"""
from __future__ import annotations

import torch

from .checkpoint import extract_state_dict, load_checkpoint, save_checkpoint
from .config import MODEL_CONFIGS, MODEL_NAMES, WEIGHTS, ModelConfig, PretrainedWeights, get_config
from .devices import IMAGE_MEAN, IMAGE_STD, PRECISIONS, native_cpu_precision, resolve_device
from .engine import GroupEngine, train_forward
from .errors import CheckpointError, ModelUnavailableError
from .hub import cache_dir, download
from .modeling.model import VOSModel, build_model
from .pretrained import ModelChoice, load_pretrained, weights_identity
from .tracker import Tracker, TrackerOptions, merge_groups, network_size
from .schedule import Schedule
from .states import DirectoryStates, MemoryStates, StateStore
from .threads import ThreadGovernor, usable_cores
from .propagation import FrameResult, FrameSource, Keyframe, PropagationStats, mean_confidences, propagate_video


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (the model zoo's count)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "CheckpointError", "DirectoryStates", "FrameResult", "FrameSource", "GroupEngine", "IMAGE_MEAN", "IMAGE_STD", "Keyframe",
    "MODEL_CONFIGS", "MODEL_NAMES", "MemoryStates", "ModelChoice", "ModelConfig", "ModelUnavailableError", "PRECISIONS",
    "PretrainedWeights",
    "PropagationStats", "Schedule", "StateStore", "ThreadGovernor", "Tracker", "TrackerOptions",
    "VOSModel", "WEIGHTS", "build_model", "cache_dir", "count_parameters", "download", "extract_state_dict",
    "get_config", "load_checkpoint", "load_pretrained", "mean_confidences", "merge_groups", "native_cpu_precision", "network_size",
    "propagate_video", "resolve_device", "save_checkpoint", "train_forward", "usable_cores",
    "weights_identity",
]
