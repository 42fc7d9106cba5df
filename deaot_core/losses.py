"""Training loss of AOT / DeAOT: bootstrapped cross-entropy + soft Jaccard, weighted 0.5 / 0.5.

Per batch item, the logits are restricted to the ids in use (0..num_objects) before either
term is computed, as the official trainer does:

* Bootstrapped cross-entropy: the per-pixel cross-entropy averaged over the k hardest pixels,
  k = fraction * H * W. The fraction anneals linearly from 1.0 (plain mean) to
  ``top_k_percent`` (0.15) over ``hard_mining_steps`` training steps (officially half of the
  training), then stays there. Ignored pixels (label 255) contribute a loss of 0 but still
  count in H * W, as in the official code.
* Soft Jaccard: 1 - sum(p g) / (sum(p) + sum(g) - sum(p g) + eps) per id (softmax
  probabilities p, one-hot ground truth g, ignored pixels removed), averaged over the ids
  present in the ground truth (background included; ids absent from the frame are skipped).

Every function returns one value per batch item; :class:`VOSLoss` averages items and frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
JACCARD_EPS = 1e-6

__all__ = ["IGNORE_INDEX", "top_k_fraction", "pixel_cross_entropy", "top_k_mean", "bootstrapped_cross_entropy",
           "soft_jaccard_loss", "VOSLoss", "frame_iou"]


def top_k_fraction(step: float, top_k_percent: float | None = 0.15, hard_mining_steps: float = 0.0) -> float:
    """Fraction of the pixels kept by the bootstrapped cross-entropy at ``step``.

    1.0 at step 0, decreasing linearly to ``top_k_percent`` at ``hard_mining_steps`` (0: no
    warm-up), ``top_k_percent`` afterwards. ``None`` means no bootstrapping (always 1.0).
    """
    if top_k_percent is None:
        return 1.0
    if not 0.0 < top_k_percent <= 1.0:
        raise ValueError(f"top_k_percent must be in (0, 1], got {top_k_percent}")
    if hard_mining_steps <= 0:
        return float(top_k_percent)
    ratio = min(1.0, max(0.0, float(step)) / float(hard_mining_steps))
    return float(ratio * top_k_percent + (1.0 - ratio))


def _check(logits: torch.Tensor, labels: torch.Tensor, num_objects: Sequence[int]) -> None:
    if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0] \
            or logits.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"need logits (B, C, H, W) and labels (B, H, W) of the same B, H, W; got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if len(num_objects) != logits.shape[0]:
        raise ValueError(f"num_objects has {len(num_objects)} entries for a batch of {logits.shape[0]}")
    for b, n in enumerate(num_objects):
        if not 0 <= int(n) < logits.shape[1]:
            raise ValueError(f"num_objects[{b}] = {n} does not fit {logits.shape[1]} logit channels")
        valid = labels[b][labels[b] != IGNORE_INDEX]
        if valid.numel() and int(valid.max()) > int(n):
            raise ValueError(f"batch item {b}: label {int(valid.max())} above its object count {int(n)}")


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, num_objects: Sequence[int]) -> torch.Tensor:
    """(B, H*W) per-pixel cross-entropy over each item's ids 0..num_objects (0 where ignored)."""
    _check(logits, labels, num_objects)
    return torch.cat([
        F.cross_entropy(logits[b:b + 1, :int(n) + 1].float(), labels[b:b + 1].long(), ignore_index=IGNORE_INDEX,
                        reduction="none").flatten(1)
        for b, n in enumerate(num_objects)])


def top_k_mean(pixel_losses: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B, P) -> (B,): mean of the ``int(fraction * P)`` largest values of each row."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    num_pixels = pixel_losses.shape[1]
    k = max(1, int(fraction * num_pixels))
    if k >= num_pixels:
        return pixel_losses.mean(dim=1)
    return torch.topk(pixel_losses, k, dim=1, sorted=False).values.mean(dim=1)


def bootstrapped_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, num_objects: Sequence[int],
                               fraction: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy of the ``fraction`` hardest pixels of each item -> (B,).

    logits (B, C, H, W) float; labels (B, H, W) int with ids 0..num_objects[b] or 255.
    """
    return top_k_mean(pixel_cross_entropy(logits, labels, num_objects), fraction)


def soft_jaccard_loss(logits: torch.Tensor, labels: torch.Tensor, num_objects: Sequence[int],
                      eps: float = JACCARD_EPS) -> torch.Tensor:
    """Soft Jaccard loss of each item -> (B,), averaged over the ids present in its labels."""
    _check(logits, labels, num_objects)
    losses = []
    for b, n in enumerate(num_objects):
        n = int(n)
        probs = torch.softmax(logits[b, :n + 1].float(), dim=0).flatten(1)  # (n+1, P)
        lab = labels[b].flatten().long()
        keep = lab != IGNORE_INDEX
        probs, lab = probs[:, keep], lab[keep]
        onehot = F.one_hot(lab, n + 1).T.to(probs.dtype)  # (n+1, P)
        present = onehot.sum(1) > 0
        if not bool(present.any()):
            losses.append(logits.new_zeros((), dtype=torch.float32) + 0.0 * probs.sum())
            continue
        inter = (probs * onehot).sum(1)
        union = probs.sum(1) + onehot.sum(1) - inter
        per_id = 1.0 - inter / (union + eps)
        losses.append(per_id[present].mean())
    return torch.stack(losses)


@torch.no_grad()
def frame_iou(logits: torch.Tensor, labels: torch.Tensor, num_objects: Sequence[int]) -> torch.Tensor:
    """Mean IoU of the argmax prediction over the ids 1..n in its ground truth or prediction,
    per item -> (B,) (1 when neither has any object; for logging)."""
    out = []
    for b, n in enumerate(num_objects):
        n = int(n)
        pred = logits[b, :n + 1].argmax(0)
        gt = labels[b]
        keep = gt != IGNORE_INDEX
        ious = []
        for obj in range(1, n + 1):
            p, g = (pred == obj) & keep, (gt == obj) & keep
            union = (p | g).sum()
            if union > 0:
                ious.append((p & g).sum() / union)
        out.append(torch.stack(ious).float().mean() if ious else torch.ones(()))
    return torch.stack(out)


@dataclass
class VOSLoss:
    """The official loss: ``ce_weight`` * bootstrapped CE + ``jaccard_weight`` * soft Jaccard.

    ``hard_mining_steps``: length of the bootstrapping warm-up (official: half the training).
    """

    top_k_percent: float | None = 0.15
    hard_mining_steps: float = 0.0
    ce_weight: float = 0.5
    jaccard_weight: float = 0.5

    def fraction(self, step: float) -> float:
        return top_k_fraction(step, self.top_k_percent, self.hard_mining_steps)

    def frame_loss(self, logits: torch.Tensor, labels: torch.Tensor, num_objects: Sequence[int],
                   step: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, bootstrapped ce, jaccard, plain mean ce) per item, each (B,), for one frame."""
        pixel = pixel_cross_entropy(logits, labels, num_objects)
        ce = top_k_mean(pixel, self.fraction(step))
        jac = soft_jaccard_loss(logits, labels, num_objects)
        return self.ce_weight * ce + self.jaccard_weight * jac, ce, jac, pixel.detach().mean(dim=1)

    def __call__(self, logits: Sequence[torch.Tensor], labels: torch.Tensor, num_objects: Sequence[int],
                 step: float = 0.0) -> tuple[torch.Tensor, dict[str, float | list[float]]]:
        """Loss over frames: ``logits[i]`` (B, C, H, W) is scored against ``labels[:, i]``.

        ``labels`` is (B, len(logits), H, W). Returns the scalar loss (mean over items and
        frames) and a dict of detached statistics for logging; ``loss_all_pixels`` is the same
        loss with the CE over every pixel, comparable across the bootstrapping warm-up.
        """
        if labels.ndim != 4 or labels.shape[1] != len(logits):
            raise ValueError(f"labels must be (B, {len(logits)}, H, W), got {tuple(labels.shape)}")
        totals, ces, jacs, plain, ious = [], [], [], [], []
        for i, frame_logits in enumerate(logits):
            total, ce, jac, ce_all = self.frame_loss(frame_logits, labels[:, i], num_objects, step)
            totals.append(total.mean())
            ces.append(ce.mean().item())
            jacs.append(jac.mean().item())
            plain.append(ce_all.mean().item())
            ious.append(frame_iou(frame_logits.detach(), labels[:, i], num_objects).mean().item())
        loss = torch.stack(totals).mean()
        n = len(logits)
        stats = {
            "loss": loss.item(), "ce": sum(ces) / n, "jaccard": sum(jacs) / n, "ce_all_pixels": sum(plain) / n,
            "loss_all_pixels": self.ce_weight * sum(plain) / n + self.jaccard_weight * sum(jacs) / n,
            "iou": sum(ious) / n, "frame_loss": [t.item() for t in totals], "frame_iou": ious,
            "top_k_fraction": self.fraction(step),
        }
        return loss, stats
