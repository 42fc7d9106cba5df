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


def mps_available() -> bool:
    """Whether PyTorch's Apple GPU backend (``mps``) is usable here."""
    backend = getattr(torch.backends, "mps", None)
    try:
        return bool(backend is not None and backend.is_available())
    except RuntimeError:
        return False


def resolve_device(device: str | torch.device | None = "auto") -> str:
    """"auto" | "cpu" | "cuda" | "cuda:N" | "mps" (None = "auto") -> the device to run on, as a string.

    "auto" picks CUDA, then Apple's ``mps``, then the CPU. A device asked for that is not
    available, or one that does not exist, raises ValueError saying so."""
    name = str(device or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "cpu" or name.startswith("cpu:"):
        return "cpu"
    if name in ("mps", "mps:0"):
        if not mps_available():
            raise ValueError(f"device {name!r} requested but PyTorch's mps backend (Apple GPU) is not available "
                             f"here; use 'cpu' or 'auto'")
        return "mps"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        if ":" in name:
            try:
                ordinal = int(name.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"invalid device {name!r}; expected auto, cpu, cuda, cuda:N or mps") from None
            if not 0 <= ordinal < torch.cuda.device_count():
                raise ValueError(f"device {name!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
        return name
    raise ValueError(f"invalid device {name!r}; expected auto, cpu, cuda, cuda:N or mps")


def device_fallbacks(device: str | torch.device, precision: str, compile: bool = False) -> tuple[str, bool, list[str]]:
    """``(precision, compile, notes)`` to run with on ``device``: what the device lacks falls back,
    each fallback with a note saying why. On ``mps``: bf16 needs macOS 14 (else fp16, which
    ``mps`` autocasts), fp16/bf16 autocast needs PyTorch 2.5 (else fp32), and ``compile`` runs
    eagerly (the compiler's mps support is experimental). Other devices: unchanged."""
    check_precision(precision)
    notes: list[str] = []
    if torch.device(device).type != "mps":
        return precision, compile, notes
    backend = torch.backends.mps
    if precision == "bf16" and not (hasattr(backend, "is_macos_or_newer") and backend.is_macos_or_newer(14, 0)):
        notes.append("precision='bf16' on mps needs macOS 14 or newer: running in fp16 instead")
        precision = "fp16"
    if precision != "fp32" and tuple(int(p) for p in torch.__version__.split(".")[:2]) < (2, 5):
        notes.append(f"precision={precision!r} on mps needs PyTorch 2.5 or newer (autocast on mps): running in fp32")
        precision = "fp32"
    if compile:
        notes.append("compile=True on mps: running eagerly (torch.compile's mps support is experimental)")
        compile = False
    return precision, compile, notes
