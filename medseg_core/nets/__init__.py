"""Networks, built by name through :func:`build_network`."""

from .output import SegOutput
from .registry import available, build_network, register

__all__ = ["SegOutput", "available", "build_network", "register"]
