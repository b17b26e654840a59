"""Networks are built by name and keyword arguments, as a model card records them."""

from __future__ import annotations

from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Class decorator: ``@register("unet")`` makes ``build_network("unet", **kw)`` work."""

    def deco(cls):
        from .base import SegNetwork

        if not issubclass(cls, SegNetwork):
            raise TypeError(f"network {name!r}: {cls.__name__} must derive from nets.base.SegNetwork")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"network {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def build_network(name: str, **kwargs) -> nn.Module:
    """Build a registered network; unknown names raise ``KeyError`` listing the known ones."""
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown network {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def _load_builtin() -> None:
    """Import every network module of this package, which runs their ``@register`` decorators."""
    import importlib
    import pkgutil
    from pathlib import Path

    skip = {"registry", "factories", "output", "layers", "base", "slicewise"}
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if mod.name not in skip and not mod.name.startswith("_"):
            importlib.import_module(f"{__package__}.{mod.name}")
