"""2D networks on 3D volumes, in one place.

Volumes are always (C, z, y, x). A 2D network (``spatial_dims == 2``) sees a volume's patches as
``(1, y, x)``: the sampler and the sliding window cut single slices, :func:`to_net` drops the
slice axis before the network and :func:`from_net` restores it after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch


def volume_patch(patch: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """The (z, y, x) patch that feeds a network trained on ``patch``: ``(1, y, x)`` for 2D."""
    patch = tuple(int(p) for p in patch)
    return (1,) + patch if spatial_dims == 2 else patch


def to_net(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """(B, C, 1, y, x) -> (B, C, y, x) for a 2D network; images or (B, 1, y, x) labels alike
    when ``x`` has a slice axis of one at dim 2. 3D: unchanged."""
    return x[:, :, 0] if spatial_dims == 2 and x.ndim == 5 else x


def labels_to_net(y: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """(B, 1, y, x) label patches -> (B, y, x) for a 2D network. 3D: unchanged."""
    return y[:, 0] if spatial_dims == 2 and y.ndim == 4 else y


def from_net(y: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """(B, N, y, x) outputs of a 2D network -> (B, N, 1, y, x). 3D: unchanged."""
    return y[:, :, None] if spatial_dims == 2 else y
