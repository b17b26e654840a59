"""Choosing the compute device, and whether it computes in bf16.

Nothing here imports PyTorch until a device object is asked for: a CPU run on an exported network
(:mod:`.runtime`) never loads it (importing torch is 1.2 s of a 3 s case).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from ..errors import InputError


def gpu_driver_present() -> bool:
    """Whether this machine has a GPU driver that PyTorch could use: NVIDIA's or ROCm's on Linux
    (WSL's too), NVIDIA's on Windows, and always on macOS (where Apple's MPS may serve). When not,
    ``auto`` is the CPU without asking PyTorch."""
    system = platform.system()
    if system == "Linux":
        return any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/nvidiactl", "/proc/driver/nvidia",
                                           "/dev/kfd", "/dev/dxg"))
    if system == "Windows":
        return (Path(os.environ.get("SystemRoot", r"C:\Windows")) / "System32" / "nvcuda.dll").exists()
    return True


def surely_cpu(name: str = "auto") -> bool:
    """Whether ``--device name`` resolves to the CPU, known without importing PyTorch."""
    name = (name or "auto").lower()
    return name == "cpu" or (name == "auto" and not gpu_driver_present())


def resolve_device(name: str = "auto"):
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; an unavailable explicit choice is an error.
    Returns a ``torch.device``."""
    import torch

    name = (name or "auto").lower()
    if surely_cpu(name):
        return torch.device("cpu")
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA GPU is available (use --device auto or cpu)")
        return torch.device("cuda")
    if name == "mps":
        if not has_mps:
            raise InputError("--device mps: Apple MPS is not available (use --device auto or cpu)")
        return torch.device("mps")
    raise InputError(f"--device {name}: unknown device (auto, cpu, cuda or mps)")


ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}
"""oneDNN's ``ONEDNN_MAX_CPU_ISA`` values that leave out its bf16 instructions."""


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    There, bf16 about halves a convolution (measured: a 3D U-Net forward on four 64 x 96 x 128
    windows took 4.7 s in float32 and 2.3 s in bf16 on 2 cores; OpenVINO's window 0.24 s and 0.12 s);
    elsewhere bf16 is emulated and slower than float32. ``MEDSEG_CPU_BF16=0`` turns it off, and so
    does a oneDNN capped below bf16 (``ONEDNN_MAX_CPU_ISA=AVX2``, which PyTorch and OpenVINO obey:
    how this project measures a CPU without AVX-512 on one that has it; OpenVINO, asked for bf16
    there, could not build a deconvolution).
    """
    if os.environ.get("MEDSEG_CPU_BF16", "").strip() == "0":
        return False
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in ONEDNN_ISAS_WITHOUT_BF16:
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def use_bf16(device) -> bool:
    """Whether to compute in bf16 on ``device`` (a ``torch.device`` or its type's name): always on
    CUDA, on the CPU only where it computes bf16 natively (:func:`native_bf16_cpu`), never on MPS."""
    kind = getattr(device, "type", str(device).split(":")[0])
    return kind == "cuda" or (kind == "cpu" and native_bf16_cpu())
