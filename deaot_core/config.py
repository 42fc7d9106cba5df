"""Registry of the released AOT / DeAOT variants: one config dataclass per name, as data, and
beside it the table of their released weights (:data:`WEIGHTS`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and test-time defaults of one AOT-family variant (official values)."""

    name: str
    family: str  # "aot" or "deaot"
    encoder: str  # "mobilenetv2" | "resnet50" | "swin_base"
    encoder_dims: tuple[int, int, int, int]  # channels at strides 4, 8, 16, 16
    num_layers: int  # propagation (LSTT / GPM) layers
    self_heads: int
    att_heads: int
    decoder_intermediate: bool  # decoder reads every propagation layer's output
    align_corners: bool
    long_term_gap: int  # test-time long-term memory gap
    train_long_term_gap: int = 9999
    embed_dim: int = 256
    max_objects: int = 10  # identities in the ID bank (+1 background)
    dim_feedforward: int = 1024  # AOT blocks only
    droppath: float = 0.1  # training only
    droppath_scaling: bool = False
    encoder_droppath: float = 0.3  # Swin stochastic depth (training only)
    short_term_skip: int = 1
    max_local_dis: int = 7  # short-term window radius (15x15 window)
    checkpoint_name: str = ""  # file name of the released checkpoint

    @property
    def is_deaot(self) -> bool:
        return self.family == "deaot"


_MOBILENET = dict(encoder="mobilenetv2", encoder_dims=(24, 32, 96, 1280), align_corners=True)
_RESNET50 = dict(encoder="resnet50", encoder_dims=(256, 512, 1024, 1024), align_corners=True)
_SWIN_B = dict(encoder="swin_base", encoder_dims=(128, 256, 512, 512), align_corners=False)
_AOT = dict(family="aot", self_heads=8, att_heads=8, decoder_intermediate=True)
_DEAOT = dict(family="deaot", self_heads=1, att_heads=1, decoder_intermediate=False)


def _variant(name: str, *parts: dict, **overrides) -> ModelConfig:
    kwargs: dict = {}
    for part in parts:
        kwargs.update(part)
    kwargs.update(overrides)
    return ModelConfig(name=name, checkpoint_name=f"{name}_PRE_YTB_DAV.pth", **kwargs)


_SMALL = dict(num_layers=1, long_term_gap=9999)
_MEDIUM = dict(num_layers=2, long_term_gap=9999)
_BASE = dict(num_layers=3, long_term_gap=9999)
_LARGE = dict(num_layers=3, long_term_gap=5, train_long_term_gap=2)

MODEL_CONFIGS: dict[str, ModelConfig] = {
    cfg.name: cfg
    for cfg in (
        _variant("AOTT", _AOT, _MOBILENET, _SMALL),
        _variant("AOTS", _AOT, _MOBILENET, _MEDIUM),
        _variant("AOTB", _AOT, _MOBILENET, _BASE),
        _variant("AOTL", _AOT, _MOBILENET, _LARGE),
        _variant("R50_AOTL", _AOT, _RESNET50, _LARGE),
        _variant("SwinB_AOTL", _AOT, _SWIN_B, _LARGE),
        _variant("DeAOTT", _DEAOT, _MOBILENET, _SMALL),
        _variant("DeAOTS", _DEAOT, _MOBILENET, _MEDIUM),
        _variant("DeAOTB", _DEAOT, _MOBILENET, _BASE),
        _variant("DeAOTL", _DEAOT, _MOBILENET, _LARGE),
        _variant("R50_DeAOTL", _DEAOT, _RESNET50, _LARGE),
        _variant("SwinB_DeAOTL", _DEAOT, _SWIN_B, _LARGE),
    )
}

MODEL_NAMES: tuple[str, ...] = tuple(MODEL_CONFIGS)


def get_config(name: str, **overrides) -> ModelConfig:
    """The registered config for ``name`` (case-insensitive), optionally with fields replaced."""
    lookup = {key.lower(): key for key in MODEL_CONFIGS}
    key = lookup.get(str(name).lower())
    if key is None:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    cfg = MODEL_CONFIGS[key]
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


@dataclass(frozen=True)
class PretrainedWeights:
    """A released checkpoint: its official file name, where to download it, its sha256 (None: not
    published for the official files)."""

    file_name: str
    url: str
    sha256: str | None = None


_GDRIVE = "https://drive.google.com/uc?export=download&id={}"
# Google Drive ids of the released PRE_YTB_DAV checkpoints, as linked from MODEL_ZOO.md of the
# official repository (yoxu515/aot-benchmark).
_GDRIVE_IDS = {
    "AOTT": "1owPmwV4owd_ll6GuilzklqTyAd0ZvbCu",
    "AOTS": "1beU5E6Mdnr_pPrgjWvdWurKAIwJSz1xf",
    "AOTB": "1hH-GOn4GAxHkV8ARcQzsUy8Ax6ndot-A",
    "AOTL": "1L1N2hkSPqrwGgnW9GyFHuG59_EYYfTG4",
    "R50_AOTL": "1qJDYn3Ibpquu4ffYoQmVjg1YCbr2JQep",
    "SwinB_AOTL": "192jCGQZdnuTsvX-CVra-KVZl2q1ZR0vW",
    "DeAOTT": "1ThWIZQS03cYWx1EKNN8MIMnJS5eRowzr",
    "DeAOTS": "1YwIAV5tBtn5spSFxKLBQBEQGwPHyQlHi",
    "DeAOTB": "1BHxsonnvJXylqHlZ1zJHHc-ymKyq-CFf",
    "DeAOTL": "18elNz_wi9JyVBcIUYKhRdL08MA-FqHD5",
    "R50_DeAOTL": "1QoChMkTVxdYZ_eBlZhK2acq9KMQZccPJ",
    "SwinB_DeAOTL": "1g4E-F0RPOx9Nd6J7tU9AE1TjsouL4oZq",
}

#: model name -> its released weights; the one place to change (or extend) the URLs.
WEIGHTS: dict[str, PretrainedWeights] = {
    name: PretrainedWeights(MODEL_CONFIGS[name].checkpoint_name, _GDRIVE.format(file_id))
    for name, file_id in _GDRIVE_IDS.items()
}
