"""The baseline U-Net (Ronneberger et al. 2015; 3D: Cicek et al. 2016), 2D or 3D.

Each level is two (conv - norm - activation) units; down-sampling by strided convolution,
up-sampling by transposed convolution, skips by concatenation (the nnU-Net "plain" design).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import factories as fx
from .output import SegOutput
from .registry import register


class ConvUnit(nn.Sequential):
    """conv -> norm -> activation."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride=1, norm="instance",
                 act="leakyrelu", kernel_size=3, dilation=1):
        super().__init__(
            fx.conv(spatial_dims, in_ch, out_ch, kernel_size, stride=stride, dilation=dilation,
                    bias=norm == "none"),
            fx.norm(spatial_dims, norm, out_ch),
            fx.act(act),
        )


class DoubleConv(nn.Sequential):
    """Two conv units; the first may be strided to down-sample."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride=1, norm="instance",
                 act="leakyrelu", dropout: float = 0.0):
        super().__init__(
            ConvUnit(spatial_dims, in_ch, out_ch, stride, norm, act),
            fx.dropout(spatial_dims, dropout),
            ConvUnit(spatial_dims, out_ch, out_ch, 1, norm, act),
        )


class ResBlock(nn.Module):
    """Residual block: conv-norm-act-conv-norm plus a (projected) shortcut, then act.

    Shapes:
        (B, in_ch, *S) -> (B, out_ch, *S / stride).
    """

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride=1, norm="instance",
                 act="leakyrelu", dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            ConvUnit(spatial_dims, in_ch, out_ch, stride, norm, act),
            fx.dropout(spatial_dims, dropout),
            fx.conv(spatial_dims, out_ch, out_ch, 3, bias=norm == "none"),
            fx.norm(spatial_dims, norm, out_ch),
        )
        needs_proj = in_ch != out_ch or any(s != 1 for s in (stride if isinstance(stride, (tuple, list))
                                                             else (stride,)))
        self.shortcut = nn.Sequential(
            fx.conv(spatial_dims, in_ch, out_ch, 1, stride=stride, bias=norm == "none"),
            fx.norm(spatial_dims, norm, out_ch),
        ) if needs_proj else nn.Identity()
        self.act = fx.act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def match_size(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Zero-pad or crop ``x`` at its far end so its spatial size equals ``ref``'s (odd inputs)."""
    diff = [r - s for s, r in zip(x.shape[2:], ref.shape[2:])]
    if not any(diff):
        return x
    pad = []
    for d in reversed(diff):
        pad += [0, d]  # negative padding crops
    return F.pad(x, pad)


@register("unet")
class UNet(nn.Module):
    """U-Net for 2D or 3D segmentation.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes including background.
        features: channels per level, finest first; ``len(features) - 1`` down-samplings.
        strides: per down-sampling, an int or a per-axis tuple (e.g. ``(1, 2, 2)`` to keep the
            slice axis); default 2 everywhere.
        norm, act: layer names for :mod:`medseg_core.nets.factories`.
        deep_supervision: also return 1x1-conv logits of the coarser decoder levels.
        dropout: channel dropout inside the deepest block.
        residual: residual blocks (:class:`ResBlock`) instead of plain double convolutions.

    Subclasses change how a skip joins the decoder by overriding :meth:`fuse` (LFAM-UNet aligns
    it first).

    Shapes:
        input (B, in_channels, *S) -> ``SegOutput.logits`` (B, out_channels, *S), any S.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128, 256), strides: Sequence | None = None,
                 norm: str = "instance", act: str = "leakyrelu", deep_supervision: bool = False,
                 dropout: float = 0.0, residual: bool = False):
        super().__init__()
        features = [int(f) for f in features]
        n = len(features)
        strides = list(strides) if strides is not None else [2] * (n - 1)
        if len(strides) != n - 1:
            raise ValueError(f"need {n - 1} strides for {n} levels, got {len(strides)}")
        self.spatial_dims = spatial_dims
        self.features = features
        self.deep_supervision = deep_supervision
        block = ResBlock if residual else DoubleConv
        self.encoder = nn.ModuleList([block(spatial_dims, in_channels, features[0], 1, norm, act)])
        for i in range(1, n):
            self.encoder.append(block(spatial_dims, features[i - 1], features[i], strides[i - 1], norm, act,
                                      dropout if i == n - 1 else 0.0))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(n - 1, 0, -1):
            self.up.append(fx.conv_transpose(spatial_dims, features[i], features[i - 1], strides[i - 1], strides[i - 1]))
            self.decoder.append(block(spatial_dims, 2 * features[i - 1], features[i - 1], 1, norm, act))
        self.head = fx.conv(spatial_dims, features[0], out_channels, 1)
        self.ds_heads = nn.ModuleList(
            [fx.conv(spatial_dims, features[i], out_channels, 1) for i in range(1, min(n - 1, 3))]
        ) if deep_supervision else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> SegOutput:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        decoded = []
        for level, (up, dec) in enumerate(zip(self.up, self.decoder)):
            skip = skips.pop()
            x = dec(self.fuse(level, skip, match_size(up(x), skip)))
            decoded.append(x)
        ds = []
        if self.deep_supervision:
            # decoded[-1] is the finest level; deep supervision uses the next coarser ones.
            for head, feat in zip(self.ds_heads, reversed(decoded[:-1])):
                ds.append(head(feat))
        return SegOutput(logits=self.head(x), deep_supervision=ds)

    def fuse(self, level: int, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """Joins decoder level ``level`` (0 = coarsest) with its skip: ``cat[skip, up]``."""
        return torch.cat([skip, up], dim=1)
