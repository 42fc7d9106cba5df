"""The AOT / DeAOT network: encoder, identity bank, propagation stack, decoder.

The network is stateless; memory lives in ``deaot_core.engine``. Key names follow the official
implementation so released checkpoints load strictly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, get_config
from .decoder import FPNDecoder
from .encoders import build_encoder
from .layers import PositionEmbeddingSine, seq_from_2d, seq_to_2d
from .lstt import Propagator


class VOSModel(nn.Module):
    """One class for every variant; ``cfg`` decides AOT vs DeAOT, encoder and depth."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim, ids = cfg.embed_dim, cfg.max_objects + 1
        self.encoder = build_encoder(cfg.encoder, droppath=cfg.encoder_droppath)
        self.encoder_projector = nn.Conv2d(cfg.encoder_dims[-1], dim, kernel_size=1)
        self.LSTT = Propagator(cfg.is_deaot, cfg.num_layers, dim, cfg.self_heads, cfg.att_heads,
                               cfg.dim_feedforward, cfg.droppath, cfg.droppath_scaling,
                               intermediate_norm=cfg.decoder_intermediate, max_local_dis=cfg.max_local_dis)
        if cfg.decoder_intermediate:
            decoder_in = dim * (cfg.num_layers * (2 if cfg.is_deaot else 1) + 1)
        else:
            decoder_in = dim * (2 if cfg.is_deaot else 1)
        self.decoder = FPNDecoder(decoder_in, ids, cfg.decoder_intermediate, hidden_dim=dim,
                                  shortcut_dims=cfg.encoder_dims, align_corners=cfg.align_corners)
        if cfg.align_corners:
            self.patch_wise_id_bank = nn.Conv2d(ids, dim, kernel_size=17, stride=16, padding=8)
        else:
            self.patch_wise_id_bank = nn.Conv2d(ids, dim, kernel_size=16, stride=16, padding=0)
        if cfg.is_deaot:
            self.id_norm = nn.LayerNorm(dim)
        self.pos_generator = PositionEmbeddingSine(dim // 2)
        nn.init.xavier_uniform_(self.encoder_projector.weight)
        nn.init.orthogonal_(self.patch_wise_id_bank.weight.view(dim, -1),
                            gain=17 ** -2 if cfg.align_corners else 16 ** -2)

    @property
    def max_objects(self) -> int:
        return self.cfg.max_objects

    def encode_image(self, image: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised image -> features at strides 4, 8, 16 and the projected 16x map."""
        feats = self.encoder(image)
        feats[-1] = self.encoder_projector(feats[-1])
        return feats

    def position_embedding(self, feat: torch.Tensor) -> torch.Tensor | None:
        """(B, C, h, w) -> (h*w, B, C) sine embedding (AOT's self-attention only; None for DeAOT)."""
        if self.cfg.is_deaot:
            return None
        return seq_from_2d(self.pos_generator(feat).expand(feat.shape[0], -1, -1, -1))

    def identity_embedding(self, one_hot: torch.Tensor) -> torch.Tensor:
        """(B, max_objects+1, H, W) one-hot masks -> (h*w, B, C) identity embedding from the ID bank."""
        emb = self.patch_wise_id_bank(one_hot)
        if self.cfg.is_deaot:
            emb = self.id_norm(emb.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return seq_from_2d(emb)

    def propagate(self, feats: list[torch.Tensor], long_mems, short_mems, id_emb, pos):
        """Run the propagation stack on the 16x embedding of ``feats`` (see ``Propagator``). DeAOT
        takes ``feats`` of batch 1 with ``id_emb`` / memory of batch B: B identity groups of one
        frame sharing its visual branch."""
        size_2d = tuple(feats[-1].shape[-2:])
        return self.LSTT(seq_from_2d(feats[-1]), long_mems, short_mems, id_emb, pos, size_2d)

    def decode(self, outputs: list[torch.Tensor], feats: list[torch.Tensor]) -> torch.Tensor:
        """Propagated sequences + encoder features -> (B, max_objects+1, H/4, W/4) logits."""
        size_2d = tuple(feats[-1].shape[-2:])
        outputs = [seq_to_2d(out, size_2d) for out in outputs]
        batch = outputs[-1].shape[0]
        if batch > 1 and feats[-1].shape[0] == 1 and not self.training and outputs[-1].device.type == "cpu":
            # identity groups of one frame: they share the adapted shortcuts; on the CPU the
            # decoder's convolutions run faster one group at a time (a batch's stride-4 maps
            # leave the cache)
            adapted = self.decoder.adapt(feats)
            return torch.cat([self.decoder.fuse([feats[-1]] + [out[i:i + 1] for out in outputs], adapted)
                              for i in range(batch)])
        inputs = [feats[-1].expand(batch, -1, -1, -1)] + outputs
        return self.decoder(inputs, feats)

    def label_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, H, W) integer labels (ids 0..max_objects) -> (h*w, B, C) identity embedding:
        ``identity_embedding(one_hot(labels))``. For several identity groups at CPU inference it is
        computed as what the ID bank's strided convolution of a one-hot map is, a sum of one
        weight column per pixel of each patch (``embedding_bag``): the same values to float
        rounding, without the (B, max_objects+1, H, W) one-hot map and its mostly-zero products."""
        if labels.shape[0] == 1 or self.training or labels.device.type != "cpu":
            return self.identity_embedding(self.one_hot(labels))
        bank = self.patch_wise_id_bank
        (kh, kw), (sh, sw), (ph, pw) = bank.kernel_size, bank.stride, bank.padding
        ids, dim = bank.in_channels, bank.out_channels
        # rows: (id, dy, dx) -> weight column; a last zero row for pixels of the zero padding
        table = torch.cat([bank.weight.permute(1, 2, 3, 0).reshape(ids * kh * kw, dim), bank.weight.new_zeros(1, dim)])
        padded = F.pad(labels.to(torch.float32)[:, None], (pw, pw, ph, ph), value=-1.0)
        patches = F.unfold(padded, (kh, kw), stride=(sh, sw)).long()  # (B, kh*kw, P)
        offsets = torch.arange(kh * kw, device=labels.device).view(1, -1, 1)
        index = torch.where(patches >= 0, patches * (kh * kw) + offsets, torch.full_like(patches, ids * kh * kw))
        b, _, count = index.shape
        emb = F.embedding_bag(index.transpose(1, 2).reshape(b * count, kh * kw), table, mode="sum") + bank.bias
        h = (labels.shape[1] + 2 * ph - kh) // sh + 1
        emb = emb.view(b, h, count // h, dim)
        if self.cfg.is_deaot:
            emb = self.id_norm(emb)
        return emb.flatten(1, 2).transpose(0, 1)

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, H, W) integer labels -> (B, max_objects+1, H, W) float one-hot."""
        ids = torch.arange(self.cfg.max_objects + 1, device=labels.device).view(1, -1, 1, 1)
        return (labels.unsqueeze(1) == ids).to(torch.float32)


def build_model(name: str, **overrides) -> VOSModel:
    """A randomly initialised model of the registered variant ``name`` (``overrides`` replace
    config fields), in eval mode."""
    return VOSModel(get_config(name, **overrides)).eval()
