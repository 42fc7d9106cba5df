"""Device selection (CUDA, then Apple's mps, then the CPU) and what mps lacks falling back with a
note. There is no Mac here: the backends' availability is mocked; the tracker is real (CPU)."""
from __future__ import annotations

import pytest
import torch

import deaot_core
from deaot_core import devices


@pytest.fixture
def backends(monkeypatch):
    """``set(cuda=..., mps=..., macos14=...)``: what this machine claims to have."""
    def set_(cuda=False, mps=False, macos14=True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: int(cuda))
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos14)
    return set_


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"),
                                                 (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(backends, cuda, mps, expected):
    backends(cuda=cuda, mps=mps)
    assert deaot_core.resolve_device("auto") == expected == deaot_core.resolve_device(None)


def test_mps_asked_for(backends):
    backends(mps=True)
    assert deaot_core.resolve_device(" MPS ") == "mps" == deaot_core.resolve_device(torch.device("mps"))
    backends(mps=False)
    with pytest.raises(ValueError, match="mps backend .* not available"):
        deaot_core.resolve_device("mps")
    with pytest.raises(ValueError, match="expected auto, cpu, cuda, cuda:N or mps"):
        deaot_core.resolve_device("mps:1")


def test_mps_fallbacks_say_why(backends, monkeypatch):
    backends(mps=True, macos14=False)
    assert devices.device_fallbacks("mps", "fp32") == ("fp32", False, [])
    assert devices.device_fallbacks("mps", "fp16") == ("fp16", False, [])
    precision, compile_, notes = devices.device_fallbacks("mps", "bf16", compile=True)
    assert (precision, compile_) == ("fp16", False)
    assert "bf16' on mps needs macOS 14" in notes[0] and "running eagerly" in notes[1]
    backends(mps=True, macos14=True)
    assert devices.device_fallbacks("mps", "bf16") == ("bf16", False, [])
    monkeypatch.setattr(torch, "__version__", "2.4.1")
    precision, _, notes = devices.device_fallbacks("mps", "fp16")
    assert precision == "fp32" and "needs PyTorch 2.5" in notes[0]
    # other devices keep what was asked for
    assert devices.device_fallbacks("cpu", "bf16", compile=True) == ("bf16", True, [])
    assert devices.device_fallbacks("cuda:0", "fp16") == ("fp16", False, [])
    with pytest.raises(ValueError, match="precision must be one of"):
        devices.device_fallbacks("mps", "int8")


def test_tracker_runs_with_the_fallbacks(backends, monkeypatch):
    """The tracker takes the fallbacks of its device (mps mocked: the model itself stays on the
    CPU) and warns once per fallback."""
    import deaot_core.tracker as tracker_module

    backends(mps=True, macos14=False)
    monkeypatch.setattr(tracker_module, "device_fallbacks",
                        lambda device, precision, compile: devices.device_fallbacks("mps", precision, compile))
    model = deaot_core.build_model("DeAOTT")
    with pytest.warns(RuntimeWarning) as caught:
        tracker = deaot_core.Tracker(model, "cpu", precision="bf16", compile=True)
    messages = [str(w.message) for w in caught]
    assert any("macOS 14" in m for m in messages) and any("running eagerly" in m for m in messages)
    assert tracker.precision == "fp16" and not isinstance(tracker.model, tracker_module._CompiledModel)
