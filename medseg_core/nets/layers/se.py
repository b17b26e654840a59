"""Squeeze-and-excitation and the pre-activation SE residual block, 2D and 3D.

Squeeze-and-excitation: Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018. Pre-activation
residual units: He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016. FocusNet
(Gao et al., MICCAI 2019; FocusNetv2, Medical Image Analysis 2021) builds its S-Net from
pre-activation residual blocks with SE on the residual branch (reduction 2, 4 in its stem) and
(1, 3, 3) kernels at full resolution.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import factories as fx

__all__ = ["SqueezeExcitation", "PreActSEResBlock"]


def _act(name: str) -> nn.Module:
    """``factories.act`` made not in-place: pre-activation applies it to tensors still needed
    elsewhere (with ``norm="none"`` the block input itself)."""
    module = fx.act(name)
    if hasattr(module, "inplace"):
        module.inplace = False
    return module


class SqueezeExcitation(nn.Module):
    """Channel re-weighting: global average pool -> 1x1 conv (C -> C/r) -> act -> 1x1 conv -> sigmoid.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        reduction: r; the hidden width is ``max(1, C // r)``.
        act: activation of the hidden layer (a factories name).

    Shapes:
        (B, C, *S) -> (B, C, *S), ``x * s`` with ``s`` (B, C, 1, ...) in (0, 1).
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 2, act: str = "relu"):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(fx.conv(spatial_dims, channels, hidden, 1), fx.act(act),
                                fx.conv(spatial_dims, hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=tuple(range(2, x.ndim)), keepdim=True))


class PreActSEResBlock(nn.Module):
    """Pre-activation residual block with squeeze-and-excitation on the residual branch.

    ``y = shortcut(x) + SE(conv2(act(norm2(conv1(act(norm1(x)))))))`` where ``conv1`` carries the
    stride and ``conv2`` the dilation (as FocusNet's blocks). When the shape changes (stride or
    channels) the shortcut is a 1x1 projection (with the stride) of the pre-activated input
    ``act(norm1(x))``, shared with the branch as in He et al.'s pre-activation ResNets; otherwise
    it is the identity.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: channels.
        stride: of the first convolution and the projection (int or per-axis tuple, e.g. (1, 2, 2)).
        dilation: of the second convolution (int or per-axis tuple).
        kernel_size: int or per-axis tuple, e.g. (1, 3, 3); 'same' padding (odd kernels).
        norm, act: factories names.
        reduction: SE reduction.

    Shapes:
        (B, in_channels, *S) -> (B, out_channels, *S') with ``S' = (S - 1) // stride + 1``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride=1, dilation=1,
                 kernel_size=3, norm: str = "batch", act: str = "relu", reduction: int = 2):
        super().__init__()
        bias = norm == "none"
        self.norm1 = fx.norm(spatial_dims, norm, in_channels)
        self.act1 = _act(act)
        self.conv1 = fx.conv(spatial_dims, in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        self.norm2 = fx.norm(spatial_dims, norm, out_channels)
        self.act2 = _act(act)
        self.conv2 = fx.conv(spatial_dims, out_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        self.se = SqueezeExcitation(spatial_dims, out_channels, reduction, act)
        strided = any(s != 1 for s in (stride if isinstance(stride, (tuple, list)) else (stride,)))
        self.projection = (fx.conv(spatial_dims, in_channels, out_channels, 1, stride=stride, bias=bias)
                           if strided or in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.norm1(x))
        out = self.se(self.conv2(self.act2(self.norm2(self.conv1(pre)))))
        return out + (x if self.projection is None else self.projection(pre))
