"""Coordinate channels: CoordConv's addCoord and PGD-UNet's CoordPool, 2D and 3D.

CoordConv (Liu et al., "An intriguing failing of convolutional neural networks and the CoordConv
solution", NeurIPS 2018) appends normalised coordinate channels to a feature map so that a
convolution can see where it is. PGD-UNet (Li et al., IJCNN 2020) pools with "coordinate pooling":
max pooling that also reports where each maximum was, fed to its localisation path.

Convention shared by both: the position ``i`` on an axis of length ``L`` is ``2 * i / (L - 1) - 1``
(``torch.linspace(-1, 1, L)``, which add_coords uses; CoordPool uses the formula: they agree to
rounding), so the first and last voxels are -1 and 1; an axis of length 1 is 0 (its centre, where
``linspace`` would give -1). Axes come in tensor order (``"ij"`` indexing:
row before column, slice before row), i.e. (y, x) in 2D and (z, y, x) in 3D.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import factories as fx

__all__ = ["add_coords", "AddCoords", "CoordPool"]


def _normalise(pos: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    if length == 1:
        return torch.zeros_like(pos, dtype=dtype)
    return pos.to(dtype) * (2.0 / (length - 1)) - 1.0


def add_coords(x: torch.Tensor, with_r: bool = False) -> torch.Tensor:
    """Append normalised coordinate channels (CoordConv's addCoord).

    Args:
        x: (B, C, H, W) or (B, C, D, H, W).
        with_r: also append the radius ``sqrt(sum of squared coordinates)``, 0 at the centre and
            ``sqrt(nd)`` at the corners.

    Returns:
        (B, C + nd (+1), *S): ``x``, then the coordinates in [-1, 1] of the first, second (and
        third) spatial axis, then the radius. No gradient flows into the coordinate channels.
    """
    nd = x.ndim - 2
    if nd not in (2, 3):
        raise ValueError(f"x must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}")
    axes = [torch.linspace(-1.0, 1.0, L, device=x.device, dtype=x.dtype) if L > 1
            else torch.zeros(1, device=x.device, dtype=x.dtype) for L in x.shape[2:]]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (nd, *S)
    if with_r:
        coords = torch.cat([coords, coords.square().sum(0, keepdim=True).sqrt()])
    return torch.cat([x, coords.unsqueeze(0).expand(x.shape[0], *coords.shape)], dim=1)


class AddCoords(nn.Module):
    """Module form of :func:`add_coords`: (B, C, *S) -> (B, C + nd (+1 with ``with_r``), *S)."""

    def __init__(self, with_r: bool = False):
        super().__init__()
        self.with_r = with_r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return add_coords(x, self.with_r)

    def extra_repr(self) -> str:
        return f"with_r={self.with_r}"


class CoordPool(nn.Module):
    """Max pooling that also returns the position of each maximum (PGD-UNet's CoordPool).

    The positions are GLOBAL: the voxel index of the maximum in the whole input, normalised over
    the input's extent with the module convention (``2 * i / (L - 1) - 1``). Positions relative to
    the pooling window would only say which of a few window cells won, which is not the "where"
    the paper's localisation path is after. Positions carry no gradient. On CUDA the backward of
    ``max_pool3d`` with indices is non-deterministic.

    Args:
        spatial_dims: 2 or 3.
        kernel_size, stride: of the max pooling (int or per-axis tuple; stride defaults to the
            kernel). No padding; a trailing remainder that does not fill a window is dropped.
        mode: ``"channel"``: positions per channel; ``"mean"``: one set of positions, those of the
            maximum of the channel-mean map in each window (keeps the width small).

    Shapes:
        x (B, C, *S) -> (pooled (B, C, *S'), coords): ``"channel"``: (B, C * nd, *S') with channel
        ``c * nd + a`` = axis ``a`` (tensor order) of channel ``c``'s maximum; ``"mean"``:
        (B, nd, *S').
    """

    def __init__(self, spatial_dims: int, kernel_size=2, stride=None, mode: str = "channel"):
        super().__init__()
        if mode not in ("channel", "mean"):
            raise ValueError(f"mode must be 'channel' or 'mean', got {mode!r}")
        self.spatial_dims, self.mode = spatial_dims, mode
        self.pool = fx.max_pool(spatial_dims, kernel_size, stride, return_indices=True)

    @staticmethod
    def decode(indices: torch.Tensor, spatial_shape, dtype: torch.dtype) -> torch.Tensor:
        """Flat per-plane indices (B, C, *S') of an input with ``spatial_shape`` to normalised
        positions (B, C, nd, *S')."""
        out, step = [], 1
        for length in reversed(list(spatial_shape)):
            out.append(_normalise(torch.div(indices, step, rounding_mode="floor") % length, length, dtype))
            step *= length
        return torch.stack(out[::-1], dim=2)

    def forward(self, x: torch.Tensor):
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a {self.spatial_dims}D batch, got shape {tuple(x.shape)}")
        pooled, idx = self.pool(x)
        with torch.no_grad():
            if self.mode == "mean":
                _, idx = self.pool(x.detach().mean(1, keepdim=True))
            coords = self.decode(idx, x.shape[2:], x.dtype)
        return pooled, coords.flatten(1, 2)

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}, mode={self.mode!r}"
