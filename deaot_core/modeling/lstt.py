"""Hierarchical propagation: AOT's Long Short-Term Transformer and DeAOT's dual-branch GPM.

Every layer matches the current frame against long-term memory (reference + memory frames,
global attention) and short-term memory (previous frame, local window). A memory entry per layer
is a (K, V) pair of (L, B, C) sequences; AOT fuses the identity embedding into V, DeAOT keeps it
in a separate ID branch (the right half of V) that reuses the visual branch's attention weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import GatedPropagation, LocalGatedPropagation, MultiheadAttention, MultiheadLocalAttention
from .layers import DropPath, GNActDWConv2d, GroupNorm1D

Memory = tuple[torch.Tensor, torch.Tensor]  # (K (L, B, Ck), V (L, B, Cv))


class LSTTBlock(nn.Module):
    """AOT block: self-attention, long/short-term attention with ID fused into V, feed-forward."""

    def __init__(self, d_model: int, self_heads: int, att_heads: int, dim_feedforward: int = 1024,
                 droppath: float = 0.1, max_local_dis: int = 7) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.linear_Q = nn.Linear(d_model, d_model)
        self.linear_V = nn.Linear(d_model, d_model)
        self.long_term_attn = MultiheadAttention(d_model, att_heads, use_linear=False)
        self.short_term_attn = MultiheadLocalAttention(d_model, att_heads, max_dis=max_local_dis)
        self.norm2 = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model, self_heads)
        self.norm3 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = GNActDWConv2d(dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.droppath = DropPath(droppath, batch_dim=1)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def memory_entry(self, curr: tuple, id_emb: torch.Tensor) -> Memory:
        """Memory (K, V) of a frame from its ``curr`` features and identity embedding (L, B, C)."""
        key, value = curr
        return key, self.linear_V(value + id_emb)

    def forward(self, tgt: torch.Tensor, tgt_id, long_mem: Memory | None, short_mem: Memory | None,
                id_emb: torch.Tensor | None, pos: torch.Tensor | None, size_2d: tuple[int, int]):
        """tgt: (L, B, C). Returns (tgt, None, curr, entry); ``entry`` is this frame's own memory
        when ``id_emb`` is given (reference frame), else None."""
        x = self.norm1(tgt)
        qk = x if pos is None else x + pos
        tgt = tgt + self.droppath(self.self_attn(qk, qk, x))

        x = self.norm2(tgt)
        query = self.linear_Q(x)
        curr = (query, x)
        entry = None
        if id_emb is not None:
            entry = self.memory_entry(curr, id_emb)
            long_mem = short_mem = entry
        out = self.long_term_attn(query, *long_mem) + self.short_term_attn(query, *short_mem, size_2d)
        tgt = tgt + out

        x = self.norm3(tgt)
        tgt = tgt + self.droppath(self.linear2(self.activation(self.linear1(x), size_2d)))
        return tgt, None, curr, entry


class GPMBlock(nn.Module):
    """DeAOT gated propagation module: visual branch + ID branch sharing attention maps,
    single-head gated attention, depth-wise conv, no feed-forward."""

    def __init__(self, d_model: int, self_heads: int, att_heads: int, droppath: float = 0.1,
                 max_local_dis: int = 7, layer_idx: int = 0, expand_ratio: float = 2.0) -> None:
        super().__init__()
        expand = int(d_model * expand_ratio)
        self.d_model, self.expand_d_model = d_model, expand
        self.d_att = d_model // 2 if att_heads == 1 else d_model // att_heads
        self.att_heads = att_heads
        self.first = layer_idx == 0
        self.norm1 = nn.LayerNorm(d_model)
        self.linear_QV = nn.Linear(d_model, self.d_att * att_heads + expand)
        self.linear_U = nn.Linear(d_model, expand)
        if self.first:
            self.linear_ID_V = nn.Linear(d_model, expand)
        else:
            self.id_norm1 = nn.LayerNorm(d_model)
            self.linear_ID_V = nn.Linear(d_model * 2, expand)
            self.linear_ID_U = nn.Linear(d_model, expand)
        self.long_term_attn = GatedPropagation(d_model, d_model * 2, att_heads, use_linear=False, d_att=self.d_att,
                                               expand_ratio=expand_ratio)
        self.short_term_attn = LocalGatedPropagation(d_model, d_model * 2, att_heads, max_dis=max_local_dis,
                                                     d_att=self.d_att, expand_ratio=expand_ratio)
        self.norm2 = nn.LayerNorm(d_model)
        self.id_norm2 = nn.LayerNorm(d_model)
        self.self_attn = GatedPropagation(d_model * 2, d_model * 2, self_heads, d_att=self.d_att)
        self.droppath = DropPath(droppath, batch_dim=1)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def memory_entry(self, curr: tuple, id_emb: torch.Tensor) -> Memory:
        """(K, [V | ID_V]) of a frame from its ``curr`` features and identity embedding (L, B, C).
        The visual ``curr`` may have batch 1 for B identity groups: K keeps batch 1."""
        key, value, id_value = curr
        id_input = id_emb if id_value is None else torch.cat([id_value, id_emb], dim=2)
        id_part = F.silu(self.linear_ID_V(id_input))
        return key, torch.cat([value.expand(-1, id_part.shape[1], -1), id_part], dim=-1)

    def forward(self, tgt: torch.Tensor, tgt_id: torch.Tensor | None, long_mem: Memory | None,
                short_mem: Memory | None, id_emb: torch.Tensor | None, pos: torch.Tensor | None,
                size_2d: tuple[int, int]):
        """tgt, tgt_id: (L, B, C). Returns (tgt, tgt_id, curr, entry) as ``LSTTBlock``."""
        x = self.norm1(tgt)
        query, value = torch.split(self.linear_QV(x), [self.d_att * self.att_heads, self.expand_d_model], dim=2)
        value = F.silu(value)
        gate = self.linear_U(x)
        if tgt_id is None:
            id_value = None
            gate = torch.cat([F.silu(gate), torch.ones_like(gate)], dim=-1)
        else:
            id_value = self.id_norm1(tgt_id)
            gate = F.silu(torch.cat([gate, self.linear_ID_U(id_value)], dim=-1))
        curr = (query, value, id_value)
        entry = None
        if id_emb is not None:
            entry = self.memory_entry(curr, id_emb)
            long_mem = short_mem = entry

        out = self.long_term_attn(query, *long_mem, gate, size_2d) + \
            self.short_term_attn(query, *short_mem, gate, size_2d)
        out, out_id = torch.split(out, self.d_model, dim=-1)
        tgt = tgt + out
        tgt_id = out_id if tgt_id is None else tgt_id + out_id

        both = torch.cat([self.norm2(tgt), self.id_norm2(tgt_id)], dim=-1)
        out, out_id = torch.split(self.self_attn(both, both, both, both, size_2d), self.d_model, dim=-1)
        tgt = tgt + self.droppath(out)
        tgt_id = tgt_id + self.droppath(out_id)
        return tgt, tgt_id, curr, entry


class Propagator(nn.Module):
    """A stack of LSTT (AOT) or GPM (DeAOT) blocks with the official output norms.

    forward returns (per-layer outputs for the decoder, per-layer ``curr`` features,
    per-layer reference memory entries or None).
    """

    def __init__(self, deaot: bool, num_layers: int, d_model: int, self_heads: int, att_heads: int,
                 dim_feedforward: int, droppath: float, droppath_scaling: bool, intermediate_norm: bool,
                 max_local_dis: int = 7) -> None:
        super().__init__()
        self.deaot, self.intermediate_norm = deaot, intermediate_norm
        if not deaot:
            self.mask_token = nn.Parameter(torch.randn(1, 1, d_model))  # unused; kept for checkpoint layout
        layers = []
        for idx in range(num_layers):
            rate = droppath * idx / (num_layers - 1) if droppath_scaling and num_layers > 1 else (
                0.0 if droppath_scaling else droppath)
            if deaot:
                layers.append(GPMBlock(d_model, self_heads, att_heads, rate, max_local_dis, layer_idx=idx))
            else:
                layers.append(LSTTBlock(d_model, self_heads, att_heads, dim_feedforward, rate, max_local_dis))
        self.layers = nn.ModuleList(layers)
        num_norms = (num_layers - 1 if intermediate_norm else 0) + 1
        make_norm = (lambda: GroupNorm1D(d_model * 2, 2)) if deaot else (lambda: nn.LayerNorm(d_model))
        self.decoder_norms = nn.ModuleList(make_norm() for _ in range(num_norms))

    def forward(self, tgt: torch.Tensor, long_mems: list[Memory] | None, short_mems: list[Memory] | None,
                id_emb: torch.Tensor | None, pos: torch.Tensor | None, size_2d: tuple[int, int]):
        outputs, currs, entries = [], [], []
        tgt_id = None
        for idx, layer in enumerate(self.layers):
            tgt, tgt_id, curr, entry = layer(tgt, tgt_id, None if long_mems is None else long_mems[idx],
                                             None if short_mems is None else short_mems[idx], id_emb, pos, size_2d)
            outputs.append(tgt if tgt_id is None else torch.cat([tgt, tgt_id], dim=2))
            currs.append(curr)
            entries.append(entry)
        outputs[-1] = self.decoder_norms[-1](outputs[-1])
        if self.intermediate_norm:
            outputs[:-1] = [norm(out) for norm, out in zip(self.decoder_norms[:-1], outputs[:-1])]
        return outputs, currs, entries
