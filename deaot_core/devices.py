"""Devices, precisions and input normalisation: the one place each is defined."""
from __future__ import annotations

import torch

#: precision name -> autocast dtype (None: plain float32, the official numerics)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}

#: ImageNet normalisation of the encoders' (R, G, B) inputs in [0, 1]
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

_MKLDNN_CHECKS = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}


def check_precision(precision: str) -> str:
    """``precision`` itself when it is a key of :data:`PRECISIONS`, else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return precision


def native_cpu_precision(precision: str) -> bool:
    """Whether this CPU computes ``precision`` natively (oneDNN's AVX-512-BF16 / AMX / AVX-512-FP16
    kernels). Without them reduced-precision autocast is emulated, many times slower than fp32
    (see BENCHMARKS.md)."""
    if check_precision(precision) == "fp32":
        return True
    try:
        return bool(getattr(torch.ops.mkldnn, _MKLDNN_CHECKS[precision])())
    except (AttributeError, RuntimeError):  # an op this torch build lacks: assume it is fine
        return True


def resolve_device(device: str | torch.device | None = "auto") -> str:
    """"auto" | "cpu" | "cuda" | "cuda:N" (None = "auto") -> the device to run on, as a string.

    "auto" picks CUDA when available. A CUDA device asked for without CUDA, or one that does not
    exist, raises ValueError saying so."""
    name = str(device or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu" or name.startswith("cpu:"):
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        if ":" in name:
            try:
                ordinal = int(name.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"invalid device {name!r}; expected auto, cpu, cuda or cuda:N") from None
            if not 0 <= ordinal < torch.cuda.device_count():
                raise ValueError(f"device {name!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
        return name
    raise ValueError(f"invalid device {name!r}; expected auto, cpu, cuda or cuda:N")
