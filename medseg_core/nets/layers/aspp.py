"""Atrous spatial pyramid pooling (ASPP) and its densely connected variant (DenseASPP), 2D and 3D.

ASPP: Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation" (DeepLabv3),
arXiv 2017. DenseASPP: Yang et al., "DenseASPP for Semantic Segmentation in Street Scenes",
CVPR 2018; FocusNet (Gao et al., MICCAI 2019) uses it in 3D with in-plane-only dilations
(1, 3, 3), (1, 6, 6), (1, 12, 12), (1, 18, 18), growing 64 -> 192 channels.

A rate may be an int or a per-axis tuple; convolutions get 'same' padding from
:func:`medseg_core.nets.factories.conv`, so every branch keeps the input size (odd sizes included).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import factories as fx
from .se import _act

__all__ = ["ASPP", "DenseASPP"]


def _is_one(rate) -> bool:
    return all(r == 1 for r in (rate if isinstance(rate, (tuple, list)) else (rate,)))


class ASPP(nn.Module):
    """DeepLabv3's ASPP: parallel 1x1 and dilated convolutions plus image pooling, concatenated
    and projected by a 1x1 convolution.

    Each rate gives one conv-norm-act branch: a rate of 1 (on every axis) is the 1x1 branch of
    DeepLabv3, any other rate a ``kernel_size`` convolution with that dilation. The image-pooling
    branch (global average -> 1x1 conv -> act, broadcast back) has NO normalisation: batch norm of
    a 1x1 map fails in training with batch size 1, which is common in 3D (DeepLab uses BN there).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: channels of each branch and of the output.
        rates: dilation rates, ints or per-axis tuples; default DeepLabv3's (1, 6, 12, 18).
        kernel_size: of the dilated branches (int or per-axis tuple, e.g. (1, 3, 3)).
        norm, act: factories names.
        image_pooling: include the image-pooling branch.
        dropout: dropout after the projection (DeepLabv3: 0.5 during its training).

    Shapes:
        (B, in_channels, *S) -> (B, out_channels, *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 rates: Sequence = (1, 6, 12, 18), kernel_size=3, norm: str = "batch", act: str = "relu",
                 image_pooling: bool = True, dropout: float = 0.0):
        super().__init__()
        bias = norm == "none"
        self.branches = nn.ModuleList()
        for rate in rates:
            k = 1 if _is_one(rate) else kernel_size
            self.branches.append(nn.Sequential(
                fx.conv(spatial_dims, in_channels, out_channels, k, dilation=rate, bias=bias),
                fx.norm(spatial_dims, norm, out_channels), fx.act(act)))
        self.pooling = nn.Sequential(fx.conv(spatial_dims, in_channels, out_channels, 1),
                                     fx.act(act)) if image_pooling else None
        n = len(self.branches) + int(image_pooling)
        self.project = nn.Sequential(fx.conv(spatial_dims, n * out_channels, out_channels, 1, bias=bias),
                                     fx.norm(spatial_dims, norm, out_channels), fx.act(act),
                                     nn.Dropout(dropout) if dropout > 0 else nn.Identity())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [branch(x) for branch in self.branches]
        if self.pooling is not None:
            pooled = self.pooling(x.mean(dim=tuple(range(2, x.ndim)), keepdim=True))
            feats.append(pooled.expand(-1, -1, *x.shape[2:]))
        return self.project(torch.cat(feats, dim=1))


class DenseASPP(nn.Module):
    """Densely connected atrous convolutions (Yang et al. 2018).

    Layer ``i`` sees the concatenation of the input and all earlier layer outputs and computes
    ``norm-act-conv1x1 (-> bottleneck) -norm-act-conv(kernel, dilation rates[i]) (-> growth)``
    (+ channel dropout); the output is ``cat([x, y_1, ..., y_n])`` (input first).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        growth: channels added per layer (Yang et al.: 128; FocusNet: 32).
        rates: one dilation per layer, ints or per-axis tuples (Yang et al.: 3, 6, 12, 18, 24;
            FocusNet: (1, 3, 3), (1, 6, 6), (1, 12, 12), (1, 18, 18)).
        bottleneck: width of the 1x1 reduction (default ``4 * growth``, Yang et al.'s 512 / 128;
            FocusNet uses 2 * growth).
        kernel_size: of the dilated convolutions (int or per-axis tuple).
        norm, act: factories names.
        dropout: channel dropout on each layer output (Yang et al.: 0.1).

    Attributes:
        out_channels: ``in_channels + len(rates) * growth``.

    Shapes:
        (B, in_channels, *S) -> (B, out_channels, *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, growth: int,
                 rates: Sequence = (3, 6, 12, 18, 24), bottleneck: int | None = None, kernel_size=3,
                 norm: str = "batch", act: str = "relu", dropout: float = 0.0):
        super().__init__()
        bottleneck = bottleneck or 4 * growth
        self.layers = nn.ModuleList()
        ch = in_channels
        for rate in rates:
            self.layers.append(nn.Sequential(
                fx.norm(spatial_dims, norm, ch), _act(act),
                fx.conv(spatial_dims, ch, bottleneck, 1, bias=norm == "none"),
                fx.norm(spatial_dims, norm, bottleneck), fx.act(act),
                fx.conv(spatial_dims, bottleneck, growth, kernel_size, dilation=rate),
                fx.dropout(spatial_dims, dropout)))
            ch += growth
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, dim=1) if len(feats) > 1 else x))
        return torch.cat(feats, dim=1)
