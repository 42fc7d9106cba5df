"""Attention used by AOT's LSTT and DeAOT's gated propagation.

Global (long-term and self) attention runs through ``scaled_dot_product_attention`` (or a direct
softmax where PyTorch has no fused CPU kernel). Short-term attention is local: each query sees a
(2r+1)^2 window of keys around its own position in the previous frame (zero-padded outside the
map, masked out of the softmax), with a learnt relative position bias per window offset, as in
the official implementation; it is computed tile by tile, so its cost grows with H*W, not (H*W)^2.
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
    row-major over (dy, dx) in [-r, r], the order of the official correlation sampler. Cached, so
    made as normal tensors even under ``torch.inference_mode`` (training may reuse them).
    """
    with torch.inference_mode(False):
        return _window_index_uncached(h, w, radius, dilation, device)


def _window_index_uncached(h: int, w: int, radius: int, dilation: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.arange(-radius, radius + 1) * dilation
    qy, qx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ky = qy.reshape(-1, 1, 1) + offsets.view(1, -1, 1)
    kx = qx.reshape(-1, 1, 1) + offsets.view(1, 1, -1)
    inside = (ky >= 0) & (ky < h) & (kx >= 0) & (kx < w)
    index = torch.where(inside, ky * w + kx, torch.full_like(ky, h * w)).reshape(h * w, -1)
    return index.to(device), (~inside).reshape(h * w, -1).to(device)


LOCAL_TILE = 8  # query tile side of the tiled local attention (measured: 8 is fastest at 480p-1080p on CPU)


@functools.lru_cache(maxsize=16)
def _tile_window_index(tile: int, radius: int, dilation: int, device: str) -> torch.Tensor:
    """For each query of a (tile x tile) block and each window offset, the flat index of its key
    inside the block's (tile + 2 r d)^2 key tile: (tile^2, (2r+1)^2) int64, offsets row-major.
    Cached, so made as a normal tensor even under ``torch.inference_mode``."""
    with torch.inference_mode(False):
        return _tile_window_index_uncached(tile, radius, dilation, device)


def _tile_window_index_uncached(tile: int, radius: int, dilation: int, device: str) -> torch.Tensor:
    halo = radius * dilation
    span = tile + 2 * halo
    offsets = torch.arange(-radius, radius + 1) * dilation
    qy, qx = torch.meshgrid(torch.arange(tile), torch.arange(tile), indexing="ij")
    ky = qy.reshape(-1, 1, 1) + halo + offsets.view(1, -1, 1)
    kx = qx.reshape(-1, 1, 1) + halo + offsets.view(1, 1, -1)
    return (ky * span + kx).reshape(tile * tile, -1).to(device)


def _to_tiles(x: torch.Tensor, size_2d: tuple[int, int], tile: int, halo: int) -> torch.Tensor:
    """(N, H*W, C) -> (N * nH * nW, (tile + 2 halo)^2, C): the map cut into tile x tile blocks
    (zero-padded to whole tiles), each with ``halo`` extra rows/columns of context (zeros
    outside the map)."""
    h, w = size_2d
    n, _, c = x.shape
    nh, nw = -(-h // tile), -(-w // tile)
    grid = F.pad(x.reshape(n, h, w, c), (0, 0, halo, nw * tile - w + halo, halo, nh * tile - h + halo))
    span = tile + 2 * halo
    blocks = grid.unfold(1, span, tile).unfold(2, span, tile)  # (N, nH, nW, C, span, span), a view
    return blocks.permute(0, 1, 2, 4, 5, 3).reshape(n * nh * nw, span * span, c)


def _from_tiles(x: torch.Tensor, n: int, size_2d: tuple[int, int], tile: int) -> torch.Tensor:
    """Inverse of ``_to_tiles`` without halo: (N * nH * nW, tile^2, C) -> (N, H*W, C)."""
    h, w = size_2d
    nh, nw = -(-h // tile), -(-w // tile)
    c = x.shape[-1]
    grid = x.reshape(n, nh, nw, tile, tile, c).permute(0, 1, 3, 2, 4, 5).reshape(n, nh * tile, nw * tile, c)
    return grid[:, :h, :w].reshape(n, h * w, c)


def local_attention_weights(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, size_2d: tuple[int, int],
                            radius: int, dilation: int = 1, tile: int | None = LOCAL_TILE) -> torch.Tensor:
    """Softmax over each query's key window.

    q, k: (N, L, D) with L = H*W (q already scaled); bias: (N, L, W2) relative position logits.
    Returns (N, L, W2) attention weights (zero on offsets outside the map).

    Query blocks of ``tile`` x ``tile`` are matched against their key tile (the block plus the
    window's reach) instead of every key: the work is (tile + 2r)^2 keys per query instead of
    H*W; ``tile=None`` scores all keys (the reference formula, for tests).
    """
    h, w = size_2d
    n = q.shape[0]
    index, outside = _window_index(h, w, radius, dilation, str(q.device))
    if tile is None:
        dense = F.pad(q @ k.transpose(1, 2), (0, 1))  # (N, L, L+1); column L = zero-padded key
        logits = torch.gather(dense, 2, index.expand(n, -1, -1))
    else:
        q_tiles = _to_tiles(q, size_2d, tile, 0)
        k_tiles = _to_tiles(k, size_2d, tile, radius * dilation)
        window = _tile_window_index(tile, radius, dilation, str(q.device))
        scores = q_tiles @ k_tiles.transpose(1, 2)  # (N*tiles, tile^2, span^2)
        logits = _from_tiles(torch.gather(scores, 2, window.expand(scores.shape[0], -1, -1)), n, size_2d, tile)
    logits = logits + bias - outside.to(logits.dtype) * _mask_value(logits.dtype)
    return torch.softmax(logits, dim=-1)


def local_attention_apply(attn: torch.Tensor, v: torch.Tensor, size_2d: tuple[int, int], radius: int,
                          dilation: int = 1, tile: int | None = LOCAL_TILE) -> torch.Tensor:
    """Weighted sum of windowed values: attn (N, L, W2), v (R*N, L, C) -> (R*N, L, C): with R > 1
    the same weights apply to R batches of values (the identity groups of one frame)."""
    h, w = size_2d
    n, length, _ = attn.shape
    repeats = v.shape[0] // n
    if tile is None:
        index, _ = _window_index(h, w, radius, dilation, str(attn.device))
        dense = attn.new_zeros(n, length, length + 1)
        dense.scatter_(2, index.expand(n, -1, -1), attn)
        return (dense[:, :, :length] @ v.view(repeats, n, length, -1)).flatten(0, 1)
    span = tile + 2 * radius * dilation
    attn_tiles = _to_tiles(attn, size_2d, tile, 0)  # (N*tiles, tile^2, W2)
    window = _tile_window_index(tile, radius, dilation, str(attn.device))
    dense = attn.new_zeros(attn_tiles.shape[0], tile * tile, span * span)
    dense = dense.scatter(2, window.expand(attn_tiles.shape[0], -1, -1), attn_tiles)
    v_tiles = _to_tiles(v, size_2d, tile, radius * dilation)
    out = dense @ v_tiles.view(repeats, *dense.shape[:1], *v_tiles.shape[1:])
    return _from_tiles(out.flatten(0, 1), repeats * n, size_2d, tile)


#: the dense window (every key scored) is used for shared weights where H*W is at most this many
#: times the tiled window's key count: measured on the CPU, at 18x31 it is 2.4x faster than
#: tiles, at 30x54 as fast, at 45x81 half as fast
_DENSE_WINDOW_FACTOR = 2


def _cpu_inference(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` runs inference on the CPU, where B identity groups of a frame run their
    per-group work one group at a time.

    Why: on the CPU a batch of groups is slower than the same groups one after the other
    (measured, DeAOTT at 273x481, 9 groups: depth-wise conv 64 vs 27 ms, projection 76 vs 58 ms,
    windowed values 273 vs 155 ms): a group's maps fit the cache, the batch's do not. So only
    what the groups share is computed once (attention weights of the visual branch); the rest
    loops over groups. Training and other devices keep the batch."""
    return not module.training and x.device.type == "cpu"


_SCORES_BUDGET = 1 << 25  # elements of one block of attention scores (128 MB in float32)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v: q (B, h, Lq, D), k (B, h, Lk, D), v (B, h, Lk, Dv) -> (B, h, Lq, Dv).

    q and k may have batch 1 with v of batch B (the identity groups of one frame share the visual
    query and keys): the attention weights are then computed once and applied to every value.

    ``scaled_dot_product_attention`` except on CPU when the value is wider than the key (DeAOT):
    there PyTorch has no fused kernel and its fallback spends a fifth of the time guarding
    against fully masked rows, which cannot occur without a mask. That case is computed
    directly, in query chunks that bound the score block (long-term memory grows with the video).
    """
    if dropout_p > 0 or q.device.type != "cpu" or q.shape[-1] == v.shape[-1]:
        if q.shape[0] != v.shape[0]:
            q, k = q.expand(v.shape[0], -1, -1, -1), k.expand(v.shape[0], -1, -1, -1)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    if q.shape[0] == 1 < v.shape[0] and q.shape[1] == 1:
        # One head shared by B value batches: fold the batches into the value's columns, so the
        # weights are computed once and applied in one wide product (a broadcast product would
        # copy the weights B times). (B, 1, Lk, Dv) -> (Lk, B * Dv): free for values laid out as
        # the memory keeps them, (Lk, B, Dv).
        values = v[:, 0].transpose(0, 1)
        lk, b, dv = values.shape
        out = _softmax_attention(q[0, 0], k[0, 0], values.reshape(lk, b * dv))
        return out.view(-1, b, dv).transpose(0, 1).unsqueeze(1)
    return _softmax_attention(q, k, v)


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over the last two dims, in query chunks that bound the score block."""
    q = q * q.shape[-1] ** -0.5
    k_t = k.transpose(-2, -1)
    chunk = max(1, _SCORES_BUDGET // max(1, q[..., :1, :1].numel() * k.shape[-2]))
    if chunk >= q.shape[-2]:
        return torch.softmax(q @ k_t, dim=-1) @ v
    return torch.cat([torch.softmax(part @ k_t, dim=-1) @ v for part in q.split(chunk, dim=-2)], dim=-2)


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
        if self.use_linear and q.shape[1] > 1 and _cpu_inference(self, q):  # see _cpu_inference
            return torch.cat([self.forward(*(x[:, i:i + 1] for x in (q, k, v, u)), size_2d)
                              for i in range(q.shape[1])], dim=1)
        if self.use_linear:
            q = k = self.linear_QK(q)
            v = self._pair(v, self.linear_V1, self.linear_V2)
            u = self._pair(u, self.linear_U1, self.linear_U2)
        length, bs = q.shape[0], v.shape[1]  # q and k may have batch 1 (see ``attention``)
        heads = self.num_head
        split = lambda x: x.reshape(x.shape[0], x.shape[1], heads, -1).permute(1, 2, 0, 3)  # noqa: E731
        out = attention(split(q), split(k), split(v), dropout_p=self.dropout if self.training else 0.0)
        out = out.permute(2, 0, 1, 3).reshape(length, bs, -1) * u
        if bs > 1 and _cpu_inference(self, out):  # see _cpu_inference
            return torch.cat([self.projection(self.dw_conv(out[:, i:i + 1], size_2d)) for i in range(bs)], dim=1)
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
        """q, k: (H*W, B, d_att*heads); v, u: (H*W, B, expand_d_vu) -> (H*W, B, d_vu). q and k may
        have batch 1 for all B values (the weights are then computed once)."""
        length, n, _ = v.shape
        heads, area = self.num_head, self.window_size ** 2
        bias = self.relative_emb_k(seq_to_2d(q, size_2d)).reshape(q.shape[1] * heads, area, length).transpose(1, 2)
        attn = local_attention_weights(_heads_first(q, heads) / self.T, _heads_first(k, heads), bias, size_2d,
                                       self.max_dis, self.dilation)
        attn = self.dropout(attn)
        if q.shape[1] == 1 < n and _cpu_inference(self, v):
            # identity groups sharing the weights: the rest one group at a time (see _cpu_inference),
            # with the dense window where the map is small enough for it to be cheaper
            tile = None if length <= _DENSE_WINDOW_FACTOR * (LOCAL_TILE + 2 * self.max_dis * self.dilation) ** 2 \
                else LOCAL_TILE
            return torch.cat([self._finish(attn, v[:, i:i + 1], u[:, i:i + 1] if u.shape[1] > 1 else u, size_2d, tile)
                              for i in range(n)], dim=1)
        return self._finish(attn, v, u, size_2d)

    def _finish(self, attn: torch.Tensor, v: torch.Tensor, u: torch.Tensor, size_2d: tuple[int, int],
                tile: int | None = LOCAL_TILE) -> torch.Tensor:
        """Windowed values, gate, depth-wise conv and projection: attn (N, L, W2), v (L, B, C)."""
        length, n, _ = v.shape
        heads = self.num_head
        value = local_attention_apply(attn, _heads_first(v, heads), size_2d, self.max_dis, self.dilation, tile)
        out = value.view(n, heads, length, self.hidden_dim).permute(2, 0, 1, 3).reshape(length, n, -1) * u
        return self.projection(self.dw_conv(out, size_2d))
