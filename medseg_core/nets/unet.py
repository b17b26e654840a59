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
from .base import SegNetwork
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
    """Residual block (He et al. 2016): conv-norm-act-conv-norm plus a shortcut, then activation.

    The shortcut is a 1x1 convolution (+ norm) when channels or stride change, else identity.
    ``dilation`` applies to both 3x3 convolutions (the DAN's dilated bottleneck); ``dropout``
    drops channels of the residual branch before the sum.

    Shapes:
        (B, in_ch, *S) -> (B, out_ch, *ceil(S / stride)).
    """

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride=1, norm="instance",
                 act="leakyrelu", dropout: float = 0.0, dilation: int = 1):
        super().__init__()
        bias = norm == "none"
        self.body = nn.Sequential(
            fx.conv(spatial_dims, in_ch, out_ch, 3, stride=stride, dilation=dilation, bias=bias),
            fx.norm(spatial_dims, norm, out_ch),
            fx.act(act),
            fx.conv(spatial_dims, out_ch, out_ch, 3, dilation=dilation, bias=bias),
            fx.norm(spatial_dims, norm, out_ch),
        )
        self.drop = fx.dropout(spatial_dims, dropout)
        needs_proj = in_ch != out_ch or any(s != 1 for s in (stride if isinstance(stride, (tuple, list))
                                                             else (stride,)))
        self.shortcut = nn.Sequential(
            fx.conv(spatial_dims, in_ch, out_ch, 1, stride=stride, bias=bias),
            fx.norm(spatial_dims, norm, out_ch),
        ) if needs_proj else nn.Identity()
        self.act = fx.act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.body(x)) + self.shortcut(x))


def match_size(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Zero-pad or crop ``x`` at its far end so its spatial size equals ``ref``'s (odd inputs)."""
    diff = [r - s for s, r in zip(x.shape[2:], ref.shape[2:])]
    if not any(diff):
        return x
    pad = []
    for d in reversed(diff):
        pad += [0, d]  # negative padding crops
    return F.pad(x, pad)


class UNetBody(nn.Module):
    """The encoder-decoder of every U-Net here, without a head.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        features: channels per level, finest first; ``len(features) - 1`` down-samplings.
        strides: per down-sampling, an int or a per-axis tuple (e.g. ``(1, 2, 2)`` to keep the
            slice axis); default 2 everywhere.
        norm, act: layer names for :mod:`medseg_core.nets.factories`.
        dropout: channel dropout inside the deepest block.
        residual: residual blocks (:class:`ResBlock`) instead of plain double convolutions.

    Subclasses change how a skip joins the decoder by overriding :meth:`join` (LFAM-UNet aligns it
    first, the DAN gates it by channel attention) and may set ``self.bottleneck``.

    Shapes:
        input (B, in_channels, *S) -> :meth:`levels`: the bottleneck's output, then each decoder
        level's, coarsest first; the last is (B, features[0], *S). Any S (odd sizes are matched by
        cropping or padding the up-sampled features).
    """

    def __init__(self, spatial_dims: int, in_channels: int, features: Sequence[int],
                 strides: Sequence | None = None, norm: str = "instance", act: str = "leakyrelu",
                 dropout: float = 0.0, residual: bool = False):
        super().__init__()
        features = [int(f) for f in features]
        n = len(features)
        strides = list(strides) if strides is not None else [2] * (n - 1)
        if len(strides) != n - 1:
            raise ValueError(f"need {n - 1} strides for {n} levels, got {len(strides)}")
        self.spatial_dims = spatial_dims
        self.features = features
        block = ResBlock if residual else DoubleConv
        self.encoder = nn.ModuleList([block(spatial_dims, in_channels, features[0], 1, norm, act)])
        for i in range(1, n):
            self.encoder.append(block(spatial_dims, features[i - 1], features[i], strides[i - 1], norm, act,
                                      dropout if i == n - 1 else 0.0))
        self.bottleneck: nn.Module = nn.Identity()
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(n - 1, 0, -1):
            s = strides[i - 1]
            self.up.append(fx.conv_transpose(spatial_dims, features[i], features[i - 1], s, s))
            self.decoder.append(block(spatial_dims, 2 * features[i - 1], features[i - 1], 1, norm, act))

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = self.bottleneck(skips.pop())
        out = [x]
        for level, (up, dec) in enumerate(zip(self.up, self.decoder)):
            skip = skips.pop()
            x = dec(self.join(level, skip, match_size(up(x), skip)))
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The finest decoder feature (B, features[0], *S)."""
        return self.levels(x)[-1]

    def join(self, level: int, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """Joins decoder level ``level`` (0 = coarsest) with its skip: ``cat[skip, up]``."""
        return torch.cat([skip, up], dim=1)


@register("unet")
class UNet(UNetBody, SegNetwork):
    """U-Net for 2D or 3D segmentation: :class:`UNetBody` plus a 1x1 head.

    Args:
        spatial_dims, in_channels, features, strides, norm, act, dropout, residual: of
            :class:`UNetBody`.
        out_channels: classes including background.
        deep_supervision: also return 1x1-conv logits of the coarser decoder levels.

    Shapes:
        input (B, in_channels, *S) -> ``SegOutput.logits`` (B, out_channels, *S), any S.
    """

    channels_last_training = True
    traces_at_any_size = True

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128, 256), strides: Sequence | None = None,
                 norm: str = "instance", act: str = "leakyrelu", deep_supervision: bool = False,
                 dropout: float = 0.0, residual: bool = False):
        super().__init__(spatial_dims, in_channels, features, strides, norm, act, dropout, residual)
        features, n = self.features, len(self.features)
        self.deep_supervision = deep_supervision
        self.head = fx.conv(spatial_dims, features[0], out_channels, 1)
        self.ds_heads = nn.ModuleList(
            [fx.conv(spatial_dims, features[i], out_channels, 1) for i in range(1, min(n - 1, 3))]
        ) if deep_supervision else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> SegOutput:
        levels = self.levels(x)
        # levels[-1] is the finest level; deep supervision uses the next coarser decoder levels.
        ds = ([head(feat) for head, feat in zip(self.ds_heads, reversed(levels[1:-1]))]
              if self.deep_supervision else [])
        return SegOutput(logits=self.head(levels[-1]), deep_supervision=ds)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.encoder]
