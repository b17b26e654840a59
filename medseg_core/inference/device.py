"""Choosing the compute device."""

from __future__ import annotations

import torch

from ..errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; an unavailable explicit choice is an error."""
    name = (name or "auto").lower()
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
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"--device {name}: unknown device (auto, cpu, cuda or mps)")
