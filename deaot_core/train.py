"""Train or fine-tune an AOT / DeAOT model on synthetic clips or any clip source handed to it.

    python -m deaot_core.train --model DeAOTT --data synthetic --minutes 45 --out runs/deaott_synthetic \\
        --seed 0 --threads 2 --half --export deaot_core/weights/deaot_t_synthetic.pth

:func:`train` / :class:`Trainer` take any indexable clip source (item i -> ``Clip``, a function of
(seed, i)); a FiftyOne dataset is one, built by the FiftyOne side (same options):
``python -m deaot_vos train --data fiftyone:my_videos:gt_masks --init ... --steps 500 --out runs/ft``.

Recipe (the official trainer's; details and deviations in ``checkpoints/README.md``): AdamW,
LR 2e-4 with linear warm-up over the first 5 % of training and poly(0.9) decay to 2e-5, no
weight decay on biases / norms, gradient clipping at norm 5, bootstrapped CE + soft Jaccard
with hard-pixel mining annealed over the first half, an EMA of the weights for the final
checkpoint, AMP (bf16, else fp16 + loss scaling) on CUDA. Two presets: from scratch = the
official static pre-training stage (weight decay 0.03, memory always written with
ground-truth identities, frozen-BN statistics calibrated on the first batch); fine-tuning
(``--init``) = the main stage (weight decay 0.07, encoder LR x0.1, memory written with the
model's own predictions and the ID bank frozen from ``--seq-training-start`` = 0.5 on).
Every identity slot is trained: synthetic clips have ``--objects`` 2-10 objects and each
sample's objects sit in a random subset of the ``max_objects`` slots (``--id-shuffle`` 1; the
stage 1-4 recipe of the demo checkpoint was ``--objects 2-5 --id-shuffle 0``).

With ``--minutes`` the schedules run on the fraction of the time budget used (so a run
always ends with a fully decayed LR, however fast the machine is); with ``--steps`` on the
fraction of steps; with both, whichever ends first.

Files in ``--out``: ``last.pth`` (weights + optimizer + EMA + step, for resuming; official
layout, so ``load_checkpoint`` reads it too), ``final.pth`` (the weights to use; fp16 with
``--half``), ``train_log.json`` and ``loss_curve.png``. Re-running the same command resumes
from ``last.pth`` unless ``--no-resume``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .data.batches import ClipSource, StepBatches, batch_to_tensors
from .data.synthetic import ClipOptions, SyntheticVOS
from .devices import resolve_device
from .engine import train_forward
from .losses import VOSLoss
from .modeling.model import build_model

log = logging.getLogger("deaot_core.train")

#: parameters without weight decay (besides every 1-D parameter), as the official trainer
NO_WEIGHT_DECAY_KEYS = ("absolute_pos_embed", "relative_position_bias_table", "relative_emb_v", "conv_out")
#: parameters frozen once the memory is written with the model's own predictions
SEQ_TRAINING_FREEZE_KEYS = ("patch_wise_id_bank",)


# ------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    model: str = "DeAOTT"
    data: str = "synthetic"  # "synthetic" or "fiftyone:<dataset>:<field>"
    out: str = "runs/train"
    seed: int = 0
    minutes: float | None = None
    steps: int | None = None
    batch_size: int = 4  # official: 16 (4 GPUs x 4)
    seq_len: int = 3  # reference + seq_len-1 frames with loss (official: 5)
    height: int = 161  # official: 465x465 crops
    width: int = 161
    lr: float | None = None  # None: the stage preset (see STAGE_PRESETS)
    min_lr: float = 2e-5
    weight_decay: float | None = None
    warmup: float = 0.05  # fraction of training
    lr_power: float = 0.9
    encoder_lr_ratio: float | None = None  # default: 0.1 with --init, else 1.0
    top_k_percent: float = 0.15
    hard_mining: float = 0.5  # fraction of training over which bootstrapping anneals to top_k_percent
    seq_training_start: float | None = None  # fraction of training after which memory uses predictions
    clip_grad: float = 5.0
    ema_ratio: float = 0.1  # EMA decay = 1 - 1 / (ema_ratio * expected steps); 0 disables
    final_weights: str = "ema"  # "ema" or "raw"
    init: str | None = None
    calibrate_bn: bool | None = None  # default: only when training from scratch
    amp: str = "auto"  # auto | off | bf16 | fp16 (CUDA only)
    device: str = "auto"
    threads: int | None = None
    long_term_gap: int | None = None
    static_prob: float = 0.0
    id_shuffle: float = 1.0  # probability that a sample's objects move to random ID slots (stages 1-4: 0)
    objects: tuple[int, int] = (2, 10)  # synthetic data: objects per clip, uniform in this range (stages 1-4: 2-5)
    background_dir: str | None = None
    clip_options: dict[str, float | tuple[float, float]] = field(default_factory=dict)  # synthetic data: ClipOptions overrides
    max_gap: int = 3
    half: bool = False
    export: str | None = None  # also write the final weights to this file
    log_every: int = 10
    save_every_minutes: float = 5.0
    resume: bool = True
    progress_bar: bool = True
    expected_steps: int | None = None  # for the EMA decay with --minutes only (default: measured)
    stop_at_step: int | None = None  # save last.pth and stop after this step (re-run to continue)
    workers: int | None = None  # data worker processes; None: 0 on the CPU, up to 16 (cores - 2) on CUDA


#: official stage configs: training from scratch follows the static pre-training stage
#: (configs/pre.py), fine-tuning (--init) the main stage (configs/default.py)
STAGE_PRESETS = {
    "pre": {"lr": 2e-4, "weight_decay": 0.03, "seq_training_start": 1.0, "encoder_lr_ratio": 1.0},
    "main": {"lr": 2e-4, "weight_decay": 0.07, "seq_training_start": 0.5, "encoder_lr_ratio": 0.1},
}


def resolve_stage(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with unset hyper-parameters taken from the stage preset ("main" when
    fine-tuning from ``--init``, else "pre"). Pre-training keeps the official encoder LR ratio
    of 1 because our encoder starts from random weights, not ImageNet."""
    preset = STAGE_PRESETS["main" if cfg.init else "pre"]
    changes = {k: v for k, v in preset.items() if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **changes)


# ------------------------------------------------------------------------------------ schedules
def learning_rate(progress: float, base_lr: float, min_lr: float, warmup: float = 0.05, power: float = 0.9) -> float:
    """Official schedule on training progress in [0, 1]: linear warm-up min -> base over
    ``warmup``, then min + (base - min) * (1 - t)^power over the rest."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return min_lr + (base_lr - min_lr) * p / warmup
    t = (p - warmup) / max(1.0 - warmup, 1e-12)
    return min_lr + (base_lr - min_lr) * max(0.0, 1.0 - t) ** power


def encoder_learning_rate(lr: float, min_lr: float, ratio: float) -> float:
    return (lr - min_lr) * ratio + min_lr


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """One AdamW group per parameter, named, with the official weight-decay exemptions."""
    groups = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_wd = param.ndim <= 1 or any(key in name for key in NO_WEIGHT_DECAY_KEYS)
        groups.append({"params": [param], "name": name, "weight_decay": 0.0 if no_wd else weight_decay,
                       "base_weight_decay": 0.0 if no_wd else weight_decay})
    return groups


def set_learning_rates(optimizer: torch.optim.Optimizer, lr: float, min_lr: float, encoder_ratio: float,
                       frozen_keys: Sequence[str] = ()) -> None:
    enc_lr = encoder_learning_rate(lr, min_lr, encoder_ratio)
    for group in optimizer.param_groups:
        name = group["name"]
        if any(key in name for key in frozen_keys):
            group["lr"], group["weight_decay"] = 0.0, 0.0
            continue
        group["lr"] = enc_lr if name.startswith("encoder.") else lr
        group["weight_decay"] = group["base_weight_decay"]


class EMA:
    """Exponential moving average of the trainable parameters (official warm-up rule)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {n: p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, param in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].sub_((1.0 - decay) * (self.shadow[name] - param.detach().float()))

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the averaged weights into ``model``."""
        backup = {}
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.shadow:
                    backup[name] = param.detach().clone()
                    param.copy_(self.shadow[name].to(param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in backup:
                        param.copy_(backup[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for k, v in state["shadow"].items():
            if k in self.shadow:
                self.shadow[k].copy_(v)


@torch.no_grad()
def calibrate_frozen_batchnorm(model: nn.Module, images: torch.Tensor) -> int:
    """Data-dependent init of the encoder's frozen BatchNorms, for training from scratch.

    The released encoders use frozen BN (fixed statistics); with a random initialisation their
    identity statistics let activations vanish through the network (1e-8 at the MobileNetV2
    output). This sets each frozen BN's running mean / variance, in forward order, to the
    statistics of its input on ``images`` (N, 3, H, W), so every layer starts normalised.
    Returns the number of layers calibrated.
    """
    from torchvision.ops import FrozenBatchNorm2d

    layers = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]

    def hook(module, inputs):
        x = inputs[0].float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False).clamp_min(1e-6))

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    try:
        model.encode_image(images)
    finally:
        for h in handles:
            h.remove()
    return len(layers)


# ----------------------------------------------------------------------------------------- data
def _init_data_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def default_workers(device: torch.device) -> int:
    """Data workers when ``--workers`` is not given: none on the CPU (the model needs the
    cores), else all cores but two, at most 16 (clip generation is CPU-bound numpy/OpenCV)."""
    if device.type == "cpu":
        return 0
    return max(0, min(16, (os.cpu_count() or 1) - 2))


def clip_options(overrides: dict[str, float | tuple[float, float]],
                 objects: tuple[int, int] | None = None) -> ClipOptions:
    """``ClipOptions`` with ``objects`` = (min, max) objects per clip, then fields overridden:
    scalars (e.g. {"camouflage_prob": 0.5}; a ``min_objects`` / ``max_objects`` there wins) and
    (low, high) pairs (e.g. {"size_range": (0.03, 0.2)})."""
    kinds = {f.name: f.type for f in dataclasses.fields(ClipOptions)
             if f.type in ("int", "float", "tuple[float, float]")}
    unknown = sorted(set(overrides) - set(kinds))
    if unknown:
        raise ValueError(f"unknown synthetic clip option(s) {unknown}; options: {sorted(kinds)}")
    values = {} if objects is None else {"min_objects": int(objects[0]), "max_objects": int(objects[1])}
    for name, value in overrides.items():
        is_pair = isinstance(value, (tuple, list))
        if (kinds[name] == "tuple[float, float]") != is_pair or (is_pair and len(value) != 2):
            want = "a LOW,HIGH pair" if kinds[name] == "tuple[float, float]" else "one number"
            raise ValueError(f"synthetic clip option {name} takes {want}, got {value!r}")
        values[name] = (tuple(float(v) for v in value) if is_pair
                        else int(value) if kinds[name] == "int" else float(value))
    options = ClipOptions(**values)
    if not 1 <= options.min_objects <= options.max_objects:
        raise ValueError(f"objects per clip must be 1 <= min <= max, got {options.min_objects}-{options.max_objects}")
    if "size_range" in overrides and not 0 < options.size_range[0] <= options.size_range[1]:
        raise ValueError(f"size_range must be 0 < low <= high, got {options.size_range}")
    return options


def build_source(cfg: TrainConfig, max_objects: int = 10, base=None) -> ClipSource:
    """The training clips: ``base`` (any indexable clip source: item i -> ``Clip``, a function of
    (seed, i), e.g. the FiftyOne side's training source) or, when it is None, the source named by
    ``cfg.data`` (``synthetic``, ``cfg.objects`` objects per clip); renumbered, ID-shuffled and
    augmented by :class:`ClipSource`."""
    if base is None:
        if cfg.data != "synthetic":
            raise ValueError(f"unknown --data {cfg.data!r}: deaot_core.train makes 'synthetic' clips; for a FiftyOne "
                             f"dataset run `python -m deaot_vos train --data fiftyone:<dataset>:<field> ...`")
        options = clip_options(cfg.clip_options, cfg.objects)
        if options.max_objects > max_objects:
            raise ValueError(f"--objects {options.min_objects}-{options.max_objects}: a training sample holds at most "
                             f"{max_objects} objects (the model's identity slots)")
        base = SyntheticVOS(length=2 ** 62, seed=cfg.seed, num_frames=cfg.seq_len, height=cfg.height,
                            width=cfg.width, options=options, static_prob=cfg.static_prob,
                            background_dir=cfg.background_dir)
    return ClipSource(base, cfg.seed, augment=True, max_objects=max_objects, id_shuffle=cfg.id_shuffle)


# ------------------------------------------------------------------------------------- training
def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or (cfg.amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _check_size(model_cfg, height: int, width: int) -> None:
    for side in (height, width):
        if model_cfg.align_corners and (side - 1) % 16:
            raise ValueError(f"{model_cfg.name} trains on sides of the form 16k+1 (e.g. 225, 241, 465); got {side}")
        if not model_cfg.align_corners and side % 16:
            raise ValueError(f"{model_cfg.name} trains on sides that are multiples of 16; got {side}")


def _rng_state() -> dict:
    # Data are a function of (seed, step); only torch's generator (DropPath) needs restoring.
    return {"torch": torch.get_rng_state()}


def _load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def plot_losses(records: list[dict], path: Path, title: str = "") -> Path:
    """Loss / IoU / LR curves as a PNG (matplotlib if installed, else OpenCV)."""
    steps = [r["step"] for r in records]
    objective = [r["loss"] for r in records]
    loss = [r.get("loss_all_pixels", r["loss"]) for r in records]
    iou = [r["iou"] for r in records]
    lr = [r["lr"] for r in records]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
        axes[0].plot(steps, objective, lw=0.6, color="tab:gray", label="objective (bootstrapped CE)")
        axes[0].plot(steps, loss, lw=0.8, color="tab:blue", label="loss, CE over all pixels")
        if len(loss) >= 5:
            smooth = np.convolve(loss, np.ones(5) / 5, mode="valid")
            axes[0].plot(steps[4:], smooth, lw=1.6, color="tab:orange", label="5-point mean")
        axes[0].set_ylabel("0.5 CE + 0.5 Jaccard")
        axes[0].legend()
        axes[1].plot(steps, iou, color="tab:green", lw=0.8)
        axes[1].set_ylabel("train IoU")
        axes[2].plot(steps, lr, color="tab:red", lw=0.8)
        axes[2].set_ylabel("LR")
        axes[2].set_xlabel("step")
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
    except ImportError:  # pragma: no cover - matplotlib ships with the venv
        pass
    h, w, pad = 300, 640, 30  # a plain OpenCV chart of the loss
    img = np.full((h, w, 3), 255, np.uint8)
    if len(steps) >= 2:
        x = np.interp(steps, (min(steps), max(steps)), (pad, w - pad))
        y = np.interp(loss, (min(loss), max(loss) + 1e-9), (h - pad, pad))
        cv2.polylines(img, [np.stack([x, y], 1).astype(np.int32)], False, (200, 80, 20), 1, cv2.LINE_AA)
    cv2.putText(img, f"loss {title}", (pad, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)
    return path


def _progress_bar():
    """A tqdm bar in percent of training on stderr (None without tqdm)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.1f}/{total}% [{elapsed}<{remaining}]{postfix}",
                file=sys.stderr, dynamic_ncols=True)


class Trainer:
    """The training loop; ``run()`` returns a summary dict (also written to train_log.json)."""

    def __init__(self, cfg: TrainConfig, source=None):
        """``source``: the clips to train on (any indexable clip source, see :func:`build_source`);
        None: the one ``cfg.data`` names."""
        cfg = resolve_stage(cfg)
        self.cfg = cfg
        if cfg.steps is None and cfg.minutes is None:
            raise ValueError("give --steps and/or --minutes")
        if cfg.final_weights not in ("ema", "raw"):
            raise ValueError(f"final_weights must be 'ema' or 'raw', got {cfg.final_weights!r}")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)
        torch.manual_seed(cfg.seed)
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(resolve_device(cfg.device))
        self.amp_dtype = _amp_dtype(cfg, self.device)

        self.model = build_model(cfg.model)
        _check_size(self.model.cfg, cfg.height, cfg.width)
        if cfg.init:
            load_checkpoint(self.model, cfg.init)
        self.model.to(self.device).train()
        self.encoder_ratio = cfg.encoder_lr_ratio
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.loss_fn = VOSLoss(top_k_percent=cfg.top_k_percent, hard_mining_steps=cfg.hard_mining)
        self.source = build_source(cfg, self.model.cfg.max_objects, source)
        self.step_batches = StepBatches(self.source, cfg.batch_size)
        self.long_term_gap = cfg.long_term_gap or self.model.cfg.train_long_term_gap
        self.workers = default_workers(self.device) if cfg.workers is None else int(cfg.workers)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {cfg.workers}")
        self.step = 0
        self.elapsed = 0.0
        self.records: list[dict] = []
        self.ema: EMA | None = None
        self.calibrated = 0
        self.resumed_from: str | None = None
        last = self.out / "last.pth"
        if cfg.resume and last.is_file():
            self._resume(last)

    # -- state ------------------------------------------------------------------------------------
    def _ema_decay(self) -> float:
        expected = self.cfg.steps or self.cfg.expected_steps or 1000
        return 1.0 - 1.0 / max(1.0, self.cfg.ema_ratio * expected)

    def _resume(self, path: Path) -> None:
        state = _load_state(path)
        if state.get("model_name") not in (None, self.model.cfg.name):
            raise ValueError(f"{path} holds a {state.get('model_name')} run, not {self.model.cfg.name}; "
                             f"use another --out or --no-resume")
        load_checkpoint(self.model, path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.records = list(state.get("records", []))
        if state.get("ema") is not None and self.cfg.ema_ratio > 0:
            self.ema = EMA(self.model, self._ema_decay())
            self.ema.load_state_dict(state["ema"])
        rng = state.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
        self.calibrated = int(state.get("calibrated_bn_layers", 0))
        self.resumed_from = str(path)
        log.info("resumed from %s at step %d (%.1f min)", path, self.step, self.elapsed / 60)

    def save_last(self) -> Path:
        extra = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step, "elapsed": self.elapsed, "records": self.records,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": _rng_state(), "train_config": dataclasses.asdict(self.cfg),
            "calibrated_bn_layers": self.calibrated,
        }
        return save_checkpoint(self.model, self.out / "last.pth", extra=extra)

    def save_final(self) -> Path:
        return self._save_weights(self.out / "final.pth", self.cfg.export)

    def save_snapshot(self) -> Path:
        """``snapshot.pth``: the weights ``final.pth`` would hold if training ended now (EMA
        unless ``--final-weights raw``; fp16 with ``--half``), written when a run stops early so
        that each leg can be benchmarked. Replaced by the next stop."""
        return self._save_weights(self.out / "snapshot.pth")

    def _save_weights(self, path: Path, export: str | None = None) -> Path:
        slots = self.model.cfg.max_objects if self.cfg.id_shuffle > 0 else min(self.cfg.objects[1],
                                                                               self.model.cfg.max_objects)
        extra = {"step": self.step, "train_config": dataclasses.asdict(self.cfg), "identity_slots": slots,
                 "weights": "ema" if self.ema is not None and self.cfg.final_weights == "ema" else "raw"}
        ctx = self.ema.applied(self.model) if extra["weights"] == "ema" else contextlib.nullcontext()
        with ctx:
            save_checkpoint(self.model, path, extra=extra, half=self.cfg.half)
            if export:
                save_checkpoint(self.model, export, extra=extra, half=self.cfg.half)
        return path

    # -- loop -------------------------------------------------------------------------------------
    def progress(self) -> float:
        parts = []
        if self.cfg.steps:
            parts.append(self.step / self.cfg.steps)
        if self.cfg.minutes:
            parts.append(self.elapsed / (60.0 * self.cfg.minutes))
        return min(1.0, max(parts))

    def batch(self, step: int):
        return batch_to_tensors(*self.step_batches[step], device=self.device)

    def batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int]]]:
        """The batches of steps ``start``, ``start + 1``, ... (made ahead by ``self.workers``
        processes when there are any; close the generator to stop them)."""
        if self.workers == 0:
            step = start
            while True:
                yield self.batch(step)
                step += 1
        # spawn, not fork: the training process may hold FiftyOne's database client and open
        # video readers, which do not survive a fork
        loader = torch.utils.data.DataLoader(
            self.step_batches, batch_size=None, sampler=itertools.count(start),
            num_workers=self.workers, worker_init_fn=_init_data_worker, prefetch_factor=2,
            pin_memory=self.device.type == "cuda", multiprocessing_context="spawn",
            generator=torch.Generator())  # its seed draw must not advance the global RNG (DropPath)
        for frames, labels, counts in loader:
            yield batch_to_tensors(frames, labels, counts, self.device)

    def _forward(self, frames, labels, counts, use_prediction: bool):
        kwargs = {"long_term_gap": self.long_term_gap}
        if use_prediction:
            kwargs["use_prediction"] = True
        autocast = (torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            return train_forward(self.model, frames, labels, counts, **kwargs)

    def train_step(self, frames, labels, counts, progress: float) -> dict:
        cfg = self.cfg
        use_prediction = progress >= cfg.seq_training_start
        lr = learning_rate(progress, cfg.lr, cfg.min_lr, cfg.warmup, cfg.lr_power)
        set_learning_rates(self.optimizer, lr, cfg.min_lr, self.encoder_ratio,
                           SEQ_TRAINING_FREEZE_KEYS if use_prediction else ())
        self.optimizer.zero_grad(set_to_none=True)
        logits = self._forward(frames, labels, counts, use_prediction)
        loss, stats = self.loss_fn(logits, labels[:, 1:], counts, step=progress)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.step}: {loss.item()}")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        stats.update(lr=lr, grad_norm=float(grad_norm), use_prediction=use_prediction)
        return stats

    def write_log(self, summary: dict | None = None) -> None:
        doc = {"config": dataclasses.asdict(self.cfg), "model_name": self.model.cfg.name,
               "device": str(self.device), "amp": str(self.amp_dtype) if self.amp_dtype else None,
               "encoder_lr_ratio": self.encoder_ratio, "calibrated_bn_layers": self.calibrated,
               "ema_decay": self.ema.decay if self.ema is not None else None,
               "resumed_from": self.resumed_from, "records": self.records}
        if summary is not None:
            doc["summary"] = summary
        tmp = self.out / "train_log.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.out / "train_log.json")

    def run(self, until_step: int | None = None) -> dict | None:
        """Train to the end (returns the summary), or only up to ``until_step`` (saves
        ``last.pth`` and returns None, as an interrupted run would)."""
        cfg = self.cfg
        if self.step == 0 and not self.records:
            calibrate = cfg.calibrate_bn if cfg.calibrate_bn is not None else not cfg.init
            if calibrate:
                frames, _, _ = self.batch(0)
                self.calibrated = calibrate_frozen_batchnorm(self.model, frames.flatten(0, 1))
                log.info("calibrated %d frozen BatchNorm layers on the first batch", self.calibrated)
        if self.ema is None and cfg.ema_ratio > 0:
            self.ema = EMA(self.model, self._ema_decay())

        bar = _progress_bar() if cfg.progress_bar else None
        window: list[dict] = []
        last_save = time.monotonic()
        step_times: list[float] = []
        batches = self.batches(self.step)
        try:
            while self.progress() < 1.0:
                if until_step is not None and self.step >= until_step:
                    break
                t0 = time.monotonic()
                frames, labels, counts = next(batches)
                t_data = time.monotonic() - t0
                stats = self.train_step(frames, labels, counts, self.progress())
                dt = time.monotonic() - t0
                self.elapsed += dt
                self.step += 1
                step_times.append(dt)
                stats["data_s"] = t_data
                window.append(stats)
                if self.step == 20 and self.ema is not None and not cfg.steps and not cfg.expected_steps:
                    # --minutes only: size the EMA for the steps this machine will manage
                    expected = 60.0 * cfg.minutes * self.step / max(self.elapsed, 1e-6)
                    self.ema.decay = 1.0 - 1.0 / max(1.0, cfg.ema_ratio * expected)
                if self.step % cfg.log_every == 0 or self.progress() >= 1.0 or self.step == 1:
                    self.records.append(self._record(window, step_times))
                    window, step_times = [], []
                    self.write_log()
                    if bar is not None:
                        r = self.records[-1]
                        bar.set_postfix_str(f"step {self.step} loss {r['loss']:.3f} iou {r['iou']:.2f} "
                                            f"lr {r['lr']:.1e} {r['sec_per_step']:.2f}s/it", refresh=False)
                if bar is not None:
                    bar.n = round(100 * self.progress(), 1)
                    bar.refresh()
                if time.monotonic() - last_save > 60 * cfg.save_every_minutes:
                    self.save_last()
                    last_save = time.monotonic()
        except KeyboardInterrupt:
            log.warning("interrupted at step %d; saving %s", self.step, self.out / "last.pth")
            self.save_last()
            self.write_log()
            raise
        finally:
            batches.close()
            if bar is not None:
                bar.close()
        if window:
            self.records.append(self._record(window, step_times))
        self.save_last()
        if self.progress() < 1.0:
            self.save_snapshot()
            self.write_log()
            return None
        final = self.save_final()
        curve = plot_losses(self.records, self.out / "loss_curve.png", f"{self.model.cfg.name} on {cfg.data}")
        summary = self.summary(final, curve)
        self.write_log(summary)
        return summary

    def _record(self, window: list[dict], step_times: list[float]) -> dict:
        def mean(key):
            return float(np.mean([w[key] for w in window]))

        return {"step": self.step, "progress": round(self.progress(), 5), "elapsed_s": round(self.elapsed, 2),
                "loss": mean("loss"), "loss_all_pixels": mean("loss_all_pixels"), "ce": mean("ce"),
                "ce_all_pixels": mean("ce_all_pixels"), "jaccard": mean("jaccard"), "iou": mean("iou"),
                "lr": window[-1]["lr"], "top_k_fraction": window[-1]["top_k_fraction"],
                "grad_norm": mean("grad_norm"), "use_prediction": bool(window[-1]["use_prediction"]),
                "sec_per_step": float(np.mean(step_times)) if step_times else None,
                "data_s": mean("data_s")}

    def summary(self, final: Path, curve: Path) -> dict:
        recs = self.records
        head = recs[:max(1, len(recs) // 10)]
        tail = recs[-max(1, len(recs) // 10):]
        timed = [r["sec_per_step"] for r in recs[1:] if r.get("sec_per_step")]
        return {"steps": self.step, "elapsed_min": round(self.elapsed / 60, 2),
                "sec_per_step": float(np.median(timed)) if timed else None,
                "first_loss_all_pixels": float(np.mean([r["loss_all_pixels"] for r in head])),
                "last_loss_all_pixels": float(np.mean([r["loss_all_pixels"] for r in tail])),
                "first_iou": float(np.mean([r["iou"] for r in head])),
                "last_iou": float(np.mean([r["iou"] for r in tail])),
                "final_checkpoint": str(final), "final_mb": round(final.stat().st_size / 2 ** 20, 2),
                "loss_curve": str(curve)}


def train(cfg: TrainConfig, source=None) -> dict | None:
    """Run a training described by ``cfg`` (on ``source``, any indexable clip source, when given);
    returns the summary, or None when it stopped at ``cfg.stop_at_step`` (``last.pth`` saved: the
    same command continues it; ``snapshot.pth``: the weights so far, to benchmark the leg)."""
    return Trainer(cfg, source).run(until_step=cfg.stop_at_step)


# ------------------------------------------------------------------------------------------ CLI
def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 225x225, got {text!r}") from None
    return h, w


def _object_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        low, high = int(lo), int(hi if sep else lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"objects must be MIN-MAX (e.g. 2-10) or one number, got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"objects must satisfy 1 <= MIN <= MAX, got {text!r}")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m deaot_core.train`` (synthetic data)."""
    p = argparse.ArgumentParser(prog="python -m deaot_core.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return add_train_arguments(p, data_help="'synthetic' (FiftyOne datasets: python -m deaot_vos train)")


def add_train_arguments(p: argparse.ArgumentParser, data_help: str, data_default: str = "synthetic"
                        ) -> argparse.ArgumentParser:
    """Add the training options to ``p`` (also used by the FiftyOne side's ``train`` command,
    which names its own data sources in ``data_help``); returns ``p``."""
    d = TrainConfig()
    p.add_argument("--model", default=d.model, help="variant, e.g. DeAOTT, DeAOTS, R50_DeAOTL")
    p.add_argument("--data", default=data_default, help=data_help)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed of data and initialisation")
    p.add_argument("--minutes", type=float, help="time budget (the schedules follow the time used)")
    p.add_argument("--steps", type=int, help="number of optimiser steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per optimiser step")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="frames per sample: reference + seq_len-1")
    p.add_argument("--size", type=_size, default=(d.height, d.width), help="training crop HxW (16k+1 sides)")
    p.add_argument("--lr", type=float, help="base LR (default: 4e-4 from scratch, 2e-4 with --init)")
    p.add_argument("--min-lr", type=float, default=d.min_lr, help="LR at the end of the poly decay")
    p.add_argument("--weight-decay", type=float, help="default: 0.03 from scratch, 0.07 with --init")
    p.add_argument("--warmup", type=float, default=d.warmup, help="LR warm-up, fraction of training")
    p.add_argument("--encoder-lr-ratio", type=float, help="encoder LR multiplier (default 0.1 with --init, else 1)")
    p.add_argument("--top-k", type=float, default=d.top_k_percent, help="bootstrapped CE: hardest pixel fraction")
    p.add_argument("--hard-mining", type=float, default=d.hard_mining,
                   help="fraction of training over which the CE anneals from all pixels to --top-k")
    p.add_argument("--seq-training-start", type=float,
                   help="fraction of training after which memory holds the model's own predictions "
                        "(1 = never; default: 1 from scratch, 0.5 with --init)")
    p.add_argument("--clip-grad", type=float, default=d.clip_grad, help="gradient norm clipping")
    p.add_argument("--ema-ratio", type=float, default=d.ema_ratio, help="0 disables the EMA")
    p.add_argument("--expected-steps", type=int, help="steps expected within --minutes (sets the EMA decay)")
    p.add_argument("--final-weights", choices=("ema", "raw"), default=d.final_weights,
                   help="weights saved as final.pth: the EMA or the raw ones")
    p.add_argument("--init", help="checkpoint to fine-tune from (official or ours)")
    p.add_argument("--calibrate-bn", dest="calibrate_bn", action="store_true", default=None,
                   help="calibrate frozen BN statistics on the first batch (default: from scratch only)")
    p.add_argument("--no-calibrate-bn", dest="calibrate_bn", action="store_false", help="never calibrate BN statistics")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default=d.amp,
                   help="mixed precision (auto: bf16 or fp16 on CUDA, off on the CPU)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--long-term-gap", type=int, help="training long-term memory gap (default: the variant's)")
    p.add_argument("--static-prob", type=float, default=d.static_prob,
                   help="synthetic data: share of static-image (affine-warp) sequences")
    p.add_argument("--background-dir", help="synthetic data: folder of images to use as backgrounds")
    p.add_argument("--clip-option", action="append", default=[], metavar="NAME=VALUE",
                   help="synthetic data: override a ClipOptions field, e.g. camouflage_prob=0.5 or "
                        "size_range=0.03,0.2 (repeatable)")
    p.add_argument("--id-shuffle", type=float, default=d.id_shuffle,
                   help="probability that a sample's objects use random ID-bank slots (official: always; "
                        "the demo checkpoint's first four phases: 0)")
    p.add_argument("--objects", type=_object_range, default=d.objects, metavar="MIN-MAX",
                   help="synthetic data: objects per clip, uniform in MIN..MAX (at most the model's identity "
                        "slots; the demo checkpoint's first four phases: 2-5)")
    p.add_argument("--max-gap", type=int, default=d.max_gap, help="FiftyOne data: max gap between sampled frames")
    p.add_argument("--half", action="store_true", help="save final.pth in fp16")
    p.add_argument("--export", help="also write the final weights to this file (e.g. deaot_core/weights/deaot_t_synthetic.pth)")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between log lines")
    p.add_argument("--save-every-minutes", type=float, default=d.save_every_minutes,
                   help="minutes between saves of last.pth (the resume point)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing last.pth")
    p.add_argument("--stop-at-step", type=int, help="save last.pth after this step and stop; re-running continues "
                   "(also with another --steps: the schedules then follow the new total from that step on)")
    p.add_argument("--no-progress", dest="progress_bar", action="store_false", help="no progress bar")
    p.add_argument("--workers", type=int, help="data worker processes making the next batches (default: 0 on the "
                   "CPU, all cores but two (at most 16) on CUDA); the data are the same with any number")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of a ``python -m deaot_core.train`` command line."""
    parser = build_parser()
    return config_from_namespace(parser.parse_args(argv), parser.error)


def config_from_namespace(args: argparse.Namespace, error) -> TrainConfig:
    """The :class:`TrainConfig` of arguments parsed with :func:`add_train_arguments`;
    ``error(message)`` reports a bad combination (argparse's ``parser.error``)."""
    if args.steps is None and args.minutes is None:
        error("give --steps and/or --minutes")
    values = {k: v for k, v in vars(args).items() if k in _ARGUMENT_FIELDS}
    values["height"], values["width"] = values.pop("size")
    values["top_k_percent"] = values.pop("top_k")
    options = {}
    for item in values.pop("clip_option"):
        name, sep, value = item.partition("=")
        try:
            numbers = tuple(float(v) for v in value.split(","))
        except ValueError:
            sep = ""
        if not sep:
            error(f"--clip-option needs NAME=NUMBER or NAME=LOW,HIGH, got {item!r}")
        options[name.strip()] = numbers[0] if len(numbers) == 1 else numbers
    values["clip_options"] = options
    return TrainConfig(**values)


#: the parsed arguments that become TrainConfig fields (the others belong to the caller's parser)
_ARGUMENT_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} | {"size", "top_k", "clip_option"}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return train_and_print(config_from_args(argv))


def train_and_print(cfg: TrainConfig, source=None) -> int:
    """Run :func:`train` and print its summary (or where it stopped) as JSON; returns exit status 0."""
    summary = train(cfg, source)
    if summary is None:
        summary = {"stopped_at_step": cfg.stop_at_step, "last": str(Path(cfg.out) / "last.pth"),
                   "snapshot": str(Path(cfg.out) / "snapshot.pth")}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
