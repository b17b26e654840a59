"""Networks, built by name through :func:`build_network`.

The names below load on first use (PEP 562), so the torch-free helpers of :mod:`.slicewise` can be
imported without PyTorch (a CPU run on an exported network never loads it).
"""

from __future__ import annotations

__all__ = ["SegOutput", "available", "build_network", "register"]


def __getattr__(name: str):
    if name == "SegOutput":
        from .output import SegOutput

        return SegOutput
    if name in ("available", "build_network", "register"):
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
