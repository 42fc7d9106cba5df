"""Attention used by AOT's LSTT and DeAOT's gated propagation.

Global (long-term and self) attention runs through ``scaled_dot_product_attention``. Short-term
attention is local: each query sees a (2r+1)^2 window of keys around its own position in the
previous frame (zero-padded outside the map, masked out of the softmax), with a learnt relative
position bias per window offset, as in the official implementation.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DWConv2d, seq_to_2d

_MASK_FP32, _MASK_HALF = 1e8, 1e4


def _mask_value(dtype: torch.dtype) -> float:
    return _MASK_FP32 if dtype == torch.float32 else _MASK_HALF


@functools.lru_cache(maxsize=16)
def _window_index(h: int, w: int, radius: int, dilation: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query pixel and window offset, the flat key index (H*W for outside the map).

    Returns (index (H*W, (2r+1)^2) int64, outside (H*W, (2r+1)^2) bool). Offsets are ordered
    row-major over (dy, dx) in [-r, r], the order of the official correlation sampler.
    """
    offsets = torch.arange(-radius, radius + 1) * dilation
    qy, qx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ky = qy.reshape(-1, 1, 1) + offsets.view(1, -1, 1)
    kx = qx.reshape(-1, 1, 1) + offsets.view(1, 1, -1)
    inside = (ky >= 0) & (ky < h) & (kx >= 0) & (kx < w)
    index = torch.where(inside, ky * w + kx, torch.full_like(ky, h * w)).reshape(h * w, -1)
    return index.to(device), (~inside).reshape(h * w, -1).to(device)


def local_attention_weights(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, size_2d: tuple[int, int],
                            radius: int, dilation: int = 1) -> torch.Tensor:
    """Softmax over each query's key window.

    q, k: (N, L, D) with L = H*W (q already scaled); bias: (N, L, W2) relative position logits.
    Returns (N, L, W2) attention weights (zero on offsets outside the map).
    """
    h, w = size_2d
    index, outside = _window_index(h, w, radius, dilation, str(q.device))
    dense = F.pad(q @ k.transpose(1, 2), (0, 1))  # (N, L, L+1); column L = zero-padded key
    logits = torch.gather(dense, 2, index.expand(q.shape[0], -1, -1)) + bias
    logits = logits - outside.to(logits.dtype) * _mask_value(logits.dtype)
    return torch.softmax(logits, dim=-1)


def local_attention_apply(attn: torch.Tensor, v: torch.Tensor, size_2d: tuple[int, int], radius: int,
                          dilation: int = 1) -> torch.Tensor:
    """Weighted sum of windowed values: attn (N, L, W2), v (N, L, C) -> (N, L, C)."""
    h, w = size_2d
    index, _ = _window_index(h, w, radius, dilation, str(attn.device))
    n, length, _ = attn.shape
    dense = attn.new_zeros(n, length, length + 1)
    dense.scatter_(2, index.expand(n, -1, -1), attn)
    return dense[:, :, :length] @ v


def _heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(L, B, heads * D) -> (B * heads, L, D)."""
    length, b, c = x.shape
    return x.reshape(length, b, heads, c // heads).permute(1, 2, 0, 3).reshape(b * heads, length, c // heads)


class MultiheadAttention(nn.Module):
    """AOT's multi-head attention over (L, B, C) sequences, optional input projections."""

    def __init__(self, d_model: int, num_head: int = 8, dropout: float = 0.0, use_linear: bool = True) -> None:
        super().__init__()
        self.d_model, self.num_head = d_model, num_head
        self.use_linear = use_linear
        if use_linear:
            self.linear_Q = nn.Linear(d_model, d_model)
            self.linear_K = nn.Linear(d_model, d_model)
            self.linear_V = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.projection = nn.Linear(d_model, d_model)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: (Lq, B, C), k/v: (Lk, B, C) -> (Lq, B, C)."""
        if self.use_linear:
            q, k, v = self.linear_Q(q), self.linear_K(k), self.linear_V(v)
        bs, heads = q.shape[1], self.num_head
        split = lambda x: x.reshape(x.shape[0], bs, heads, -1).permute(1, 2, 0, 3)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v),
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.permute(2, 0, 1, 3).reshape(q.shape[0], bs, self.d_model)
        return self.projection(out)


class MultiheadLocalAttention(nn.Module):
    """AOT's short-term attention: multi-head attention within a 15x15 window, relative key and
    value position embeddings."""

    def __init__(self, d_model: int, num_head: int, dropout: float = 0.0, max_dis: int = 7, dilation: int = 1) -> None:
        super().__init__()
        self.num_head, self.max_dis, self.dilation = num_head, max_dis, dilation
        self.window_size = 2 * max_dis + 1
        self.hidden_dim = d_model // num_head
        self.T = self.hidden_dim ** 0.5
        window_area = self.window_size ** 2
        self.relative_emb_k = nn.Conv2d(d_model, num_head * window_area, kernel_size=1, groups=num_head)
        self.relative_emb_v = nn.Parameter(torch.zeros(num_head, self.hidden_dim, window_area))
        self.projection = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size_2d: tuple[int, int]) -> torch.Tensor:
        """q, k, v: (H*W, B, C) -> (H*W, B, C)."""
        length, n, c = v.shape
        heads, hidden, area = self.num_head, self.hidden_dim, self.window_size ** 2
        bias = self.relative_emb_k(seq_to_2d(q, size_2d)).reshape(n * heads, area, length).transpose(1, 2)
        attn = local_attention_weights(_heads_first(q, heads) / self.T, _heads_first(k, heads), bias, size_2d,
                                       self.max_dis, self.dilation)
        attn = self.dropout(attn)
        value = local_attention_apply(attn, _heads_first(v, heads), size_2d, self.max_dis, self.dilation)
        agg_bias = torch.einsum("bhlw,hcw->bhlc", attn.view(n, heads, length, area), self.relative_emb_v)
        value = value.view(n, heads, length, hidden) + agg_bias
        return self.projection(value.permute(2, 0, 1, 3).reshape(length, n, c))


class GatedPropagation(nn.Module):
    """DeAOT's gated propagation (global): single-head attention whose output is gated by U,
    followed by a depth-wise conv and a projection; no feed-forward.

    Q: (Lq, B, d_qk), K: (Lk, B, d_qk), V: (Lk, B, d_vu), U: (Lq, B, d_vu) -> (Lq, B, d_vu).
    With ``use_linear`` Q, V and U are projected here (self-propagation); otherwise they come
    projected (long-term propagation), V and U already ``expand_ratio`` times wider.
    """

    def __init__(self, d_qk: int, d_vu: int, num_head: int = 1, dropout: float = 0.0, use_linear: bool = True,
                 d_att: int | None = None, expand_ratio: float = 2.0) -> None:
        super().__init__()
        self.expand_d_vu = int(d_vu * expand_ratio)
        self.d_vu, self.num_head = d_vu, num_head
        self.hidden_dim = self.expand_d_vu // num_head
        self.d_att = d_qk // num_head if d_att is None else d_att
        self.use_linear = use_linear
        if use_linear:
            half = self.hidden_dim * num_head // 2
            self.linear_QK = nn.Linear(d_qk, self.d_att * num_head)
            self.linear_V1 = nn.Linear(d_vu // 2, half)
            self.linear_V2 = nn.Linear(d_vu // 2, half)
            self.linear_U1 = nn.Linear(d_vu // 2, half)
            self.linear_U2 = nn.Linear(d_vu // 2, half)
        self.dropout = dropout
        self.dw_conv = DWConv2d(self.expand_d_vu)
        self.projection = nn.Linear(self.expand_d_vu, d_vu)

    def _pair(self, x: torch.Tensor, first: nn.Linear, second: nn.Linear) -> torch.Tensor:
        a, b = torch.split(x, self.d_vu // 2, dim=-1)
        a, b = first(a), second(b)
        if self.num_head > 1:
            shape = (*a.shape[:2], self.num_head, self.hidden_dim // 2)
            return F.silu(torch.cat([a.view(shape), b.view(shape)], dim=-1).flatten(2))
        return F.silu(torch.cat([a, b], dim=-1))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor,
                size_2d: tuple[int, int]) -> torch.Tensor:
        if self.use_linear:
            q = k = self.linear_QK(q)
            v = self._pair(v, self.linear_V1, self.linear_V2)
            u = self._pair(u, self.linear_U1, self.linear_U2)
        length, bs = q.shape[:2]
        heads = self.num_head
        split = lambda x: x.reshape(x.shape[0], bs, heads, -1).permute(1, 2, 0, 3)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v),
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.permute(2, 0, 1, 3).reshape(length, bs, -1) * u
        return self.projection(self.dw_conv(out, size_2d))


class LocalGatedPropagation(nn.Module):
    """DeAOT's short-term gated propagation within a 15x15 window (relative key bias only).

    """

    def __init__(self, d_qk: int, d_vu: int, num_head: int, dropout: float = 0.0, max_dis: int = 7,
                 dilation: int = 1, d_att: int | None = None, expand_ratio: float = 2.0) -> None:
        super().__init__()
        self.expand_d_vu = int(d_vu * expand_ratio)
        self.num_head, self.max_dis, self.dilation = num_head, max_dis, dilation
        self.window_size = 2 * max_dis + 1
        self.hidden_dim = self.expand_d_vu // num_head
        self.d_att = d_qk // num_head if d_att is None else d_att
        self.T = self.d_att ** 0.5
        self.relative_emb_k = nn.Conv2d(self.d_att * num_head, num_head * self.window_size ** 2, kernel_size=1,
                                        groups=num_head)
        self.dw_conv = DWConv2d(self.expand_d_vu)
        self.projection = nn.Linear(self.expand_d_vu, d_vu)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor,
                size_2d: tuple[int, int]) -> torch.Tensor:
        """q, k: (H*W, B, d_att*heads); v, u: (H*W, B, expand_d_vu) -> (H*W, B, d_vu)."""
        length, n, _ = v.shape
        heads, area = self.num_head, self.window_size ** 2
        bias = self.relative_emb_k(seq_to_2d(q, size_2d)).reshape(n * heads, area, length).transpose(1, 2)
        attn = local_attention_weights(_heads_first(q, heads) / self.T, _heads_first(k, heads), bias, size_2d,
                                       self.max_dis, self.dilation)
        attn = self.dropout(attn)
        value = local_attention_apply(attn, _heads_first(v, heads), size_2d, self.max_dis, self.dilation)
        out = value.view(n, heads, length, self.hidden_dim).permute(2, 0, 1, 3).reshape(length, n, -1) * u
        return self.projection(self.dw_conv(out, size_2d))
