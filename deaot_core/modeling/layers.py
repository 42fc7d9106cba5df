"""Small building blocks shared by the propagation layers and the decoder.

Sequences are laid out as (L, B, C) with L = H * W in row-major order, as in the official code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def seq_to_2d(x: torch.Tensor, size_2d: tuple[int, int]) -> torch.Tensor:
    """(H*W, B, C) -> (B, C, H, W)."""
    h, w = size_2d
    _, b, c = x.shape
    return x.view(h, w, b, c).permute(2, 3, 0, 1).contiguous()


def seq_from_2d(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (H*W, B, C)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).permute(2, 0, 1)


class DropPath(nn.Module):
    """Stochastic depth over the batch dimension ``batch_dim`` (training only)."""

    def __init__(self, drop_prob: float = 0.0, batch_dim: int = 1) -> None:
        super().__init__()
        self.drop_prob, self.batch_dim = drop_prob, batch_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = [1] * x.ndim
        shape[self.batch_dim] = x.shape[self.batch_dim]
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x / keep * mask


class GroupNorm1D(nn.Module):
    """GroupNorm over the channels of a (L, B, C) sequence."""

    def __init__(self, dim: int, groups: int) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(groups, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(x.permute(1, 2, 0)).permute(2, 0, 1)


class DWConv2d(nn.Module):
    """5x5 depth-wise conv applied to a (L, B, C) sequence seen as a (B, C, H, W) map."""

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, bias=False)
        self.dropout = nn.Dropout2d(p=dropout)

    def forward(self, x: torch.Tensor, size_2d: tuple[int, int]) -> torch.Tensor:
        return seq_from_2d(self.dropout(self.conv(seq_to_2d(x, size_2d))))


class GNActDWConv2d(nn.Module):
    """GroupNorm(32) -> GELU -> 5x5 depth-wise conv on a (L, B, C) sequence (AOT feed-forward)."""

    def __init__(self, dim: int, groups: int = 32) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(groups, dim)
        self.conv = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, bias=False)

    def forward(self, x: torch.Tensor, size_2d: tuple[int, int]) -> torch.Tensor:
        return seq_from_2d(self.conv(F.gelu(self.gn(seq_to_2d(x, size_2d)))))


class ConvGN(nn.Module):
    """Conv (same padding) followed by GroupNorm(8)."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, groups: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, padding=kernel_size // 2)
        self.gn = nn.GroupNorm(groups, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(self.conv(x))


class PositionEmbeddingSine(nn.Module):
    """Normalised sine position embedding of a (B, C, H, W) map -> (1, 2 * num_feats, H, W)."""

    def __init__(self, num_feats: int = 128, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_feats, self.temperature = num_feats, temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        device = x.device
        scale, eps = 2 * torch.pi, 1e-6
        y = torch.arange(h, device=device, dtype=torch.float32)[None, :, None].expand(1, h, w)
        xx = torch.arange(w, device=device, dtype=torch.float32)[None, None, :].expand(1, h, w)
        y = y / (y[:, -1:, :] + eps) * scale
        xx = xx / (xx[:, :, -1:] + eps) * scale
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_feats)
        pos_x, pos_y = xx[..., None] / dim_t, y[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
