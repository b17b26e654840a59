"""The one place that builds convolution, normalisation, pooling and activation layers.

Every network asks these factories for its layers with a ``spatial_dims`` of 2 or 3, so a single
class serves 2D and 3D (the manner of MONAI's layer factories).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims


def conv(spatial_dims: int, in_ch: int, out_ch: int, kernel_size=3, stride=1, dilation=1,
         groups: int = 1, bias: bool = True, padding=None) -> nn.Module:
    """A convolution; ``padding`` defaults to 'same' for odd kernels: ``dilation * (k - 1) // 2``."""
    cls = {2: nn.Conv2d, 3: nn.Conv3d}[_check(spatial_dims)]
    if padding is None:
        ks = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * spatial_dims
        dl = dilation if isinstance(dilation, (tuple, list)) else (dilation,) * spatial_dims
        padding = tuple(d * (k - 1) // 2 for k, d in zip(ks, dl))
    return cls(in_ch, out_ch, kernel_size, stride=stride, padding=padding, dilation=dilation,
               groups=groups, bias=bias)


def conv_transpose(spatial_dims: int, in_ch: int, out_ch: int, kernel_size=2, stride=2) -> nn.Module:
    cls = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[_check(spatial_dims)]
    return cls(in_ch, out_ch, kernel_size, stride=stride)


def norm(spatial_dims: int, name: str, channels: int) -> nn.Module:
    """``name``: ``"instance"`` (affine), ``"batch"``, ``"group"`` (8 groups or fewer) or ``"none"``."""
    _check(spatial_dims)
    if name == "instance":
        return {2: InstanceNorm2d, 3: InstanceNorm3d}[spatial_dims](channels, affine=True)
    if name == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](channels)
    if name == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {name!r}")


class _ChannelsLastInstanceNorm:
    """Instance normalisation that also serves a channels-last input (a fine-tune on the CPU,
    :mod:`medseg_core.training.finetune`): PyTorch's instance norm hands such an input back in the
    plain layout, so every following convolution would convert it again. Here it is normalised as
    a group norm with one group per channel (the same statistics: biased variance, the same eps)
    in the plain layout and handed back channels-last. PyTorch's own channels-last group norm
    is avoided: its backward took 5x as long and its output differed by 1e-4. A plain input takes
    PyTorch's instance norm unchanged, bit for bit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
        if x.dim() not in (4, 5) or x.is_contiguous() or not x.is_contiguous(memory_format=fmt) \
                or self.track_running_stats:
            return super().forward(x)
        y = F.group_norm(x.contiguous(), self.num_features, self.weight, self.bias, self.eps)
        return y.contiguous(memory_format=fmt)


class InstanceNorm2d(_ChannelsLastInstanceNorm, nn.InstanceNorm2d):
    pass


class InstanceNorm3d(_ChannelsLastInstanceNorm, nn.InstanceNorm3d):
    pass


def act(name: str) -> nn.Module:
    """``"leakyrelu"`` (slope 0.01, as nnU-Net), ``"relu"``, ``"prelu"`` or ``"gelu"``."""
    if name == "leakyrelu":
        return nn.LeakyReLU(0.01, inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "prelu":
        return nn.PReLU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}")


def max_pool(spatial_dims: int, kernel_size=2, stride=None, return_indices: bool = False) -> nn.Module:
    cls = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[_check(spatial_dims)]
    return cls(kernel_size, stride=stride, return_indices=return_indices)


def dropout(spatial_dims: int, p: float) -> nn.Module:
    return {2: nn.Dropout2d, 3: nn.Dropout3d}[_check(spatial_dims)](p) if p > 0 else nn.Identity()


def interp_mode(spatial_dims: int) -> str:
    """The linear interpolation mode of ``F.interpolate`` for this dimension."""
    return {2: "bilinear", 3: "trilinear"}[_check(spatial_dims)]
