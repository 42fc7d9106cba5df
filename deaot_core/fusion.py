"""Bidirectional fusion: a frame between two keyframes combines the forward pass (from the
earlier keyframe) and a backward pass (from the later one), object by object.

Each pass only knows its own objects: the forward pass those of the keyframes up to the earlier
one, the backward pass those the later keyframe gives. An object only one pass knows is, for the
other pass, part of its background; so before mixing, each pass's background is split over the
objects only the other pass knows, in the proportions the other pass gives them. Then
``fused = w * forward + (1 - w) * backward`` channel by channel: an object both passes know gets
both, an object only one pass knows comes from that pass alone (scaled by the other pass's
belief that the pixel is not one of its own objects).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

BUFFER_BYTES = 512 * 2 ** 20  # a gap's backward probabilities kept in memory at most (else at a lower resolution)
_EPS = 1e-6


def forward_weight(t: int, earlier: int, later: int, fusion: str) -> float:
    """The forward pass's weight on frame t of the gap (earlier, later): ``distance`` falls
    linearly from 1 at the earlier keyframe to 0 at the later one; ``equal`` is 0.5."""
    if fusion == "equal":
        return 0.5
    return (later - t) / (later - earlier)


def _spread_background(probs: torch.Tensor, other: torch.Tensor, foreign: list[int]) -> torch.Tensor:
    """``probs`` (1+K, H, W) with its background split over the ``foreign`` ids (those only the
    ``other`` pass knows) in the proportions of ``other`` (1+K, H, W)."""
    if not foreign:
        return probs
    out = probs.clone()
    other_share = other[[0] + foreign]
    share = other_share / other_share.sum(dim=0, keepdim=True).clamp_min(_EPS)
    out[[0] + foreign] = probs[:1] * share
    return out


def fuse(forward: torch.Tensor, backward: torch.Tensor, backward_ids: Sequence[int],
         weight: float) -> tuple[torch.Tensor, dict[int, float]]:
    """Fused (1+K, H, W) probabilities and the passes' agreement.

    forward: (1+Kf, H, W), objects 1..Kf; backward: (1+m, H, W) in the backward pass's own ids
    1..m, which are the ids ``backward_ids[0..m-1]`` (absent channels count as probability 0);
    weight: the forward pass's weight. K = max(Kf, max(backward_ids)). The agreement maps every
    object both passes know to the IoU of its two argmax masks (1.0 when both are empty).
    """
    size = forward.shape[-2:]
    count = max([forward.shape[0] - 1] + [int(i) for i in backward_ids])
    forward_full = forward.new_zeros((1 + count, *size))
    forward_full[:forward.shape[0]] = forward
    backward_full = forward.new_zeros((1 + count, *size))
    backward_full[0] = backward[0]
    for channel, object_id in enumerate(backward_ids, start=1):
        if channel < backward.shape[0]:
            backward_full[object_id] = backward[channel]
    forward_known = set(range(1, forward.shape[0]))
    backward_known = {int(i) for i in backward_ids}
    fused_forward = _spread_background(forward_full, backward_full, sorted(backward_known - forward_known))
    fused_backward = _spread_background(backward_full, forward_full, sorted(forward_known - backward_known))
    fused = weight * fused_forward + (1.0 - weight) * fused_backward
    agreement = {}
    forward_label, backward_label = forward_full.argmax(dim=0), backward_full.argmax(dim=0)
    for object_id in sorted(forward_known & backward_known):
        a, b = forward_label == object_id, backward_label == object_id
        union = int((a | b).sum())
        agreement[object_id] = float(int((a & b).sum()) / union) if union else 1.0
    return fused, agreement


class GapBuffer:
    """A gap's backward-pass probabilities, frame by frame, kept as uint8 on the CPU (at a lower
    resolution when the whole gap would exceed ``BUFFER_BYTES``)."""

    def __init__(self, frames: int, channels: int, size: tuple[int, int]) -> None:
        self.size = tuple(size)
        total = max(1, frames) * channels * size[0] * size[1]
        scale = min(1.0, math.sqrt(BUFFER_BYTES / total))
        self.stored_size = (max(16, int(size[0] * scale)), max(16, int(size[1] * scale)))
        self._frames: dict[int, torch.Tensor] = {}

    def put(self, index: int, probs: torch.Tensor) -> None:
        if tuple(probs.shape[-2:]) != self.stored_size:
            probs = F.interpolate(probs[None].float(), size=self.stored_size, mode="area")[0]
        self._frames[index] = (probs.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()

    def get(self, index: int, device: torch.device) -> torch.Tensor:
        probs = self._frames.pop(index).to(device).float() / 255
        if tuple(probs.shape[-2:]) != self.size:
            probs = F.interpolate(probs[None], size=self.size, mode="bilinear", align_corners=False)[0]
        return probs
