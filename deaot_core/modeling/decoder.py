"""FPN-style decoder: fuses the propagated 16x features with encoder shortcuts at 16x, 8x, 4x."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvGN


class FPNDecoder(nn.Module):
    """inputs: list of (B, C_i, H/16, W/16) maps (concatenated when ``use_all_inputs``, else the
    last one is used); shortcuts: encoder features at strides 4, 8, 16, 16.
    Returns (B, out_dim, H/4, W/4) identity logits."""

    def __init__(self, in_dim: int, out_dim: int, use_all_inputs: bool, hidden_dim: int = 256,
                 shortcut_dims: tuple[int, ...] = (24, 32, 96, 1280), align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners, self.use_all_inputs = align_corners, use_all_inputs
        self.conv_in = ConvGN(in_dim, hidden_dim, 1)
        self.conv_16x = ConvGN(hidden_dim, hidden_dim, 3)
        self.conv_8x = ConvGN(hidden_dim, hidden_dim // 2, 3)
        self.conv_4x = ConvGN(hidden_dim // 2, hidden_dim // 2, 3)
        self.adapter_16x = nn.Conv2d(shortcut_dims[-2], hidden_dim, 1)
        self.adapter_8x = nn.Conv2d(shortcut_dims[-3], hidden_dim, 1)
        self.adapter_4x = nn.Conv2d(shortcut_dims[-4], hidden_dim // 2, 1)
        self.conv_out = nn.Conv2d(hidden_dim // 2, out_dim, 1)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _up(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=self.align_corners)

    def forward(self, inputs: list[torch.Tensor], shortcuts: list[torch.Tensor]) -> torch.Tensor:
        return self.fuse(inputs, self.adapt(shortcuts))

    def adapt(self, shortcuts: list[torch.Tensor]) -> list[torch.Tensor]:
        """The encoder shortcuts projected for fusion: (16x, 8x, 4x) maps. They depend on the frame
        only, so identity groups of one frame can share them (``fuse`` per group)."""
        return [self.adapter_16x(shortcuts[-2]), self.adapter_8x(shortcuts[-3]), self.adapter_4x(shortcuts[-4])]

    def fuse(self, inputs: list[torch.Tensor], adapted: list[torch.Tensor]) -> torch.Tensor:
        """Logits from the propagated ``inputs`` and ``adapt``-ed shortcuts (batch 1 or the inputs')."""
        x = torch.cat(inputs, dim=1) if self.use_all_inputs else inputs[-1]
        x = F.relu(self.conv_in(x))
        x = F.relu(self.conv_16x(adapted[0] + x))
        x = F.relu(self.conv_8x(adapted[1] + self._up(x, adapted[1])))
        x = F.relu(self.conv_4x(adapted[2] + self._up(x, adapted[2])))
        return self.conv_out(x)
