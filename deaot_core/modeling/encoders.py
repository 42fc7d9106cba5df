"""Image encoders returning features at strides 4, 8, 16 and 16 (official AOT layout).

Built from torchvision's modules where the math is the official one; key names match the
released checkpoints without renaming.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tv_models
from torchvision.models import swin_transformer as tv_swin
from torchvision.ops import FrozenBatchNorm2d as _TVFrozenBatchNorm2d
from torchvision.ops import StochasticDepth


class FrozenBatchNorm2d(_TVFrozenBatchNorm2d):
    """torchvision's frozen BN, evaluated with the fused ``F.batch_norm`` (the official numerics)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)


class MobileNetV2Encoder(nn.Module):
    """torchvision MobileNetV2 features with output stride 16 (the last stride-2 stage dilated).

    forward: (B, 3, H, W) -> [(B, 24, H/4), (B, 32, H/8), (B, 96, H/16), (B, 1280, H/16)]
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = tv_models.mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d).features
        # Official output_stride=16: block 14 keeps stride 1; blocks 15-17 use dilation 2.
        for index, dilation in ((14, 1), (15, 2), (16, 2), (17, 2)):
            depthwise = self.features[index].conv[1][0]
            depthwise.stride = (1, 1)
            depthwise.dilation = (dilation, dilation)
            depthwise.padding = (dilation, dilation)
        self.stage_ends = (4, 7, 14, len(self.features))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs, start = [], 0
        for end in self.stage_ends:
            for index in range(start, end):
                x = self.features[index](x)
            outputs.append(x)
            start = end
        return outputs


class ResNet50Encoder(nn.Module):
    """torchvision ResNet-50 stem + layers 1-3 (stage 5 dropped, as STM / AOT).

    forward: (B, 3, H, W) -> [(B, 256, H/4), (B, 512, H/8), (B, 1024, H/16), same again]
    """

    def __init__(self) -> None:
        super().__init__()
        net = tv_models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x4 = self.layer1(x)
        x8 = self.layer2(x4)
        x16 = self.layer3(x8)
        return [x4, x8, x16, x16]


class PatchEmbed(nn.Module):
    """4x4 patch embedding with LayerNorm: (B, 3, H, W) -> (B, H/4, W/4, C), padding H, W to x4."""

    def __init__(self, dim: int, patch: int = 4) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % self.patch, 0, (-h) % self.patch))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class WindowAttention(nn.Module):
    """Swin (shifted) window attention; math from torchvision's ``shifted_window_attention``."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window - 1) + rel[..., 1])
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, shift: int) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        return tv_swin.shifted_window_attention(
            x, self.qkv.weight, self.proj.weight, bias, [self.window, self.window], self.heads,
            [shift, shift], qkv_bias=self.qkv.bias, proj_bias=self.proj.bias, training=self.training)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, droppath: float) -> None:
        super().__init__()
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)
        self.drop_path = StochasticDepth(droppath, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), self.shift))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, window: int, droppaths: list[float],
                 downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, droppaths[i]) for i in range(depth))
        self.downsample = tv_swin.PatchMerging(dim) if downsample else None


class SwinEncoder(nn.Module):
    """Swin-B (window 7) stages 1-3 with a LayerNorm on each output (official detection-style layout).

    forward: (B, 3, H, W) -> [(B, 128, H/4), (B, 256, H/8), (B, 512, H/16), same again]
    """

    def __init__(self, embed_dim: int = 128, depths=(2, 2, 18), heads=(4, 8, 16), window: int = 7,
                 droppath: float = 0.3, full_depths=(2, 2, 18, 2)) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(embed_dim)
        rates = torch.linspace(0, droppath, sum(full_depths)).tolist()
        self.layers = nn.ModuleList()
        start = 0
        for i, depth in enumerate(depths):
            dim = embed_dim * 2**i
            self.layers.append(SwinStage(dim, depth, heads[i], window, rates[start:start + depth],
                                         downsample=i < len(depths) - 1))
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
            start += depth

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        outputs = []
        for i, stage in enumerate(self.layers):
            for block in stage.blocks:
                x = block(x)
            outputs.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x)
        outputs.append(outputs[-1])
        return outputs


def build_encoder(name: str, droppath: float = 0.0) -> nn.Module:
    if name == "mobilenetv2":
        return MobileNetV2Encoder()
    if name == "resnet50":
        return ResNet50Encoder()
    if name == "swin_base":
        return SwinEncoder(droppath=droppath)
    raise ValueError(f"unknown encoder {name!r}")
