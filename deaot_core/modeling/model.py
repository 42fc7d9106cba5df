"""The AOT / DeAOT network: encoder, identity bank, propagation stack, decoder.

The network is stateless; memory lives in ``deaot_core.engine``. Key names follow the official
implementation so released checkpoints load strictly.
"""
from __future__ import annotations

import torch
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
        inputs = [feats[-1].expand(outputs[-1].shape[0], -1, -1, -1)] + outputs
        return self.decoder(inputs, feats)

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, H, W) integer labels -> (B, max_objects+1, H, W) float one-hot."""
        ids = torch.arange(self.cfg.max_objects + 1, device=labels.device).view(1, -1, 1, 1)
        return (labels.unsqueeze(1) == ids).to(torch.float32)


def build_model(name: str, **overrides) -> VOSModel:
    """A randomly initialised model of the registered variant ``name`` (``overrides`` replace
    config fields), in eval mode."""
    return VOSModel(get_config(name, **overrides)).eval()
