"""PGD-UNet: a position-guided deformable U-Net (Li, Pan, Zhu and Qin, "PGD-UNet: A Position-Guided
Deformable Network for Simultaneous Segmentation of Organs and Tumors", IJCNN 2020, arXiv:2007.01001).

The paper's network is 2D; here one class serves 2D and 3D through ``spatial_dims``. No model code
was published, so the choices the paper leaves open are made as follows (and documented in
``docs/arch-parts/pgd_unet.md``):

* **Which convolutions are deformable.** With ``n = len(features)`` levels, the "middle" levels are
  ``1 .. n - 2`` (levels 1, 2, 3 at the default five levels): level 0 (full resolution) and the
  bottleneck stay plain. At each middle level, the *second* 3x3 convolution of the encoder block
  and the *second* 3x3 convolution of the decoder block are deformable (modulated, DCNv2); the
  first convolution of each block, which changes the width, stays plain.
* **Down-sampling.** CoordPool (2x2 max pooling that also reports the normalised position of each
  window's maximum) *replaces* the encoder's max pooling in front of every middle level; its
  coordinates feed the localisation path. The bottleneck is reached by plain max pooling (its
  coordinates would have no consumer).
* **Localisation path.** ``add_coords`` is applied to the level-0 block output; then, per middle
  level ``l``, a 2x2 stride-2 convolution (the same windows as the encoder's pooling, so the sizes
  match for odd inputs too), concatenation of that level's CoordPool coordinates, and one dilated
  3x3 convolution with rate ``loc_dilations[l - 1]`` (2, 3, 5 by default: a hybrid-dilated-
  convolution sawtooth that avoids gridding).
* **Guidance of the deformable convolutions.** Each deformable convolution predicts its offsets and
  modulation mask from ``offset_input = ConvUnit1x1(cat[localisation feature of its level,
  the convolution's own input])``. The offset heads are zero-initialised (in
  :class:`~medseg_core.nets.layers.DeformConv`), so at initialisation the network is an exact
  plain U-Net and the localisation path has no effect until the offset heads learn.
* **Bottleneck.** ASPP (``features[-2] -> features[-1]``) replaces the plain double convolution.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import factories as fx
from .layers import ASPP, CoordPool, DeformConv, add_coords
from .base import SegNetwork
from .output import SegOutput
from .registry import register
from .unet import ConvUnit, match_size


class GuidedDeformUnit(nn.Module):
    """Deformable 3x3 convolution whose offsets are guided by a localisation feature -> norm -> act.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: widths of the main convolution.
        guide_in_channels: width of the localisation feature.
        guide_channels: width of the fused guidance tensor handed to the offset head.
        norm, act: layer names for :mod:`medseg_core.nets.factories`.
        offset_groups: deformable groups (must divide ``in_channels``).

    Shapes:
        ``x`` (B, in_channels, *S), ``loc`` (B, guide_in_channels, *S) -> (B, out_channels, *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, guide_in_channels: int,
                 guide_channels: int, norm: str = "instance", act: str = "leakyrelu", offset_groups: int = 1):
        super().__init__()
        self.guide = ConvUnit(spatial_dims, guide_in_channels + in_channels, guide_channels, 1, norm, act,
                              kernel_size=1)
        self.conv = DeformConv(spatial_dims, in_channels, out_channels, 3, offset_groups=offset_groups,
                               bias=norm == "none", modulated=True, offset_in_channels=guide_channels)
        self.norm = fx.norm(spatial_dims, norm, out_channels)
        self.act = fx.act(act)

    def forward(self, x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        guide = self.guide(torch.cat([match_size(loc, x), x], dim=1))
        return self.act(self.norm(self.conv(x, offset_input=guide)))


@register("pgd_unet")
class PGDUNet(SegNetwork):
    """Position-guided deformable U-Net, 2D or 3D.

    Args:
        spatial_dims: 2 (the paper's) or 3.
        in_channels: image channels.
        out_channels: classes including background.
        features: channels per level, finest first; ``len(features) - 1`` 2x down-samplings
            (at least 3 levels). Levels ``1 .. len(features) - 2`` are the deformable,
            position-guided ones.
        norm, act: layer names for :mod:`medseg_core.nets.factories`.
        deep_supervision: also return 1x1-conv logits of decoder levels 1 and 2.
        coord_mode: CoordPool mode, ``"mean"`` (position of the maximum of the channel-mean map:
            ``spatial_dims`` extra channels) or ``"channel"`` (per channel: ``C * spatial_dims``).
        coord_radius: add the radius channel in ``add_coords``.
        loc_dilations: dilation rate of the localisation path at each middle level (finest first);
            needs at least ``len(features) - 2`` entries, the first ones are used.
        aspp_rates: dilation rates of the bottleneck ASPP; 1 is its 1x1 branch (small rates by
            default: the bottleneck of a 64 x 96 x 128 patch is only 4 x 6 x 8 voxels).
        offset_groups: deformable groups of each deformable convolution.
        offset_channels: width cap of the guidance tensor of each offset head
            (``min(features[l], offset_channels)``), which keeps 3D offset heads small.
        loc_features: widths of the localisation path at the middle levels; default
            ``features[l] // 2``.

    Shapes:
        input (B, in_channels, *S) -> ``SegOutput.logits`` (B, out_channels, *S), any S (odd sizes
        are handled by cropping/padding the up-sampled features); ``deep_supervision`` holds
        (B, out_channels, *S / 2**k) for k = 1, 2 when requested.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128, 128), norm: str = "instance",
                 act: str = "leakyrelu", deep_supervision: bool = False, coord_mode: str = "mean",
                 coord_radius: bool = False, loc_dilations: Sequence[int] = (2, 3, 5),
                 aspp_rates: Sequence[int] = (1, 2, 3), offset_groups: int = 1,
                 offset_channels: int = 32, loc_features: Sequence[int] | None = None):
        super().__init__()
        features = [int(f) for f in features]
        n = len(features)
        if n < 3:
            raise ValueError(f"pgd_unet needs at least 3 levels, got features={features}")
        if len(loc_dilations) < n - 2:
            raise ValueError(f"need {n - 2} loc_dilations for {n} levels, got {list(loc_dilations)}")
        loc_features = ([features[l] // 2 for l in range(1, n - 1)] if loc_features is None
                        else [int(c) for c in loc_features])
        if len(loc_features) != n - 2:
            raise ValueError(f"need {n - 2} loc_features for {n} levels, got {loc_features}")
        if coord_mode not in ("mean", "channel"):
            raise ValueError(f"coord_mode must be 'mean' or 'channel', got {coord_mode!r}")
        self.spatial_dims = spatial_dims
        self.deep_supervision = deep_supervision
        self.coord_radius = coord_radius
        self.middle = list(range(1, n - 1))
        sd = spatial_dims

        def coord_channels(level: int) -> int:  # channels of the CoordPool output feeding ``level``
            return sd if coord_mode == "mean" else sd * features[level - 1]

        # encoder
        self.stem = nn.Sequential(ConvUnit(sd, in_channels, features[0], 1, norm, act),
                                  ConvUnit(sd, features[0], features[0], 1, norm, act))
        self.pools = nn.ModuleList([CoordPool(sd, 2, mode=coord_mode) for _ in self.middle])
        self.enc_first = nn.ModuleList([ConvUnit(sd, features[l - 1], features[l], 1, norm, act)
                                        for l in self.middle])
        self.enc_deform = nn.ModuleList([
            GuidedDeformUnit(sd, features[l], features[l], loc_features[i], min(features[l], offset_channels),
                             norm, act, offset_groups) for i, l in enumerate(self.middle)])
        self.bottleneck_pool = fx.max_pool(sd, 2)
        self.bottleneck = ASPP(sd, features[-2], features[-1], rates=tuple(aspp_rates), norm=norm, act=act)

        # localisation path: add_coords(level-0 features) -> per middle level: 2x2 stride-2 conv,
        # + CoordPool coordinates, dilated 3x3 conv
        loc_in = features[0] + sd + int(coord_radius)
        self.loc_down = nn.ModuleList()
        self.loc_dilated = nn.ModuleList()
        for i, l in enumerate(self.middle):
            w = loc_features[i]
            self.loc_down.append(ConvUnit(sd, loc_in, w, 2, norm, act, kernel_size=2))
            self.loc_dilated.append(ConvUnit(sd, w + coord_channels(l), w, 1, norm, act,
                                             dilation=int(loc_dilations[i])))
            loc_in = w

        # decoder, coarsest first: level l = n-2 .. 0
        self.up = nn.ModuleList()
        self.dec_first = nn.ModuleList()
        self.dec_second = nn.ModuleList()
        for l in range(n - 2, -1, -1):
            self.up.append(fx.conv_transpose(sd, features[l + 1], features[l], 2, 2))
            self.dec_first.append(ConvUnit(sd, 2 * features[l], features[l], 1, norm, act))
            if l in self.middle:
                self.dec_second.append(GuidedDeformUnit(sd, features[l], features[l], loc_features[l - 1],
                                                        min(features[l], offset_channels), norm, act,
                                                        offset_groups))
            else:
                self.dec_second.append(ConvUnit(sd, features[l], features[l], 1, norm, act))
        self.head = fx.conv(sd, features[0], out_channels, 1)
        self.ds_heads = nn.ModuleList(
            [fx.conv(sd, features[l], out_channels, 1) for l in range(1, min(n - 1, 3))]
        ) if deep_supervision else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> SegOutput:
        x = self.stem(x)
        skips = [x]
        loc = add_coords(x, with_r=self.coord_radius)
        locs = {}
        for i, l in enumerate(self.middle):
            x, coords = self.pools[i](x)
            loc = match_size(self.loc_down[i](loc), x)
            loc = self.loc_dilated[i](torch.cat([loc, coords.to(loc.dtype)], dim=1))
            locs[l] = loc
            x = self.enc_deform[i](self.enc_first[i](x), loc)
            skips.append(x)
        x = self.bottleneck(self.bottleneck_pool(x))
        decoded = {}
        for k, l in enumerate(range(len(skips) - 1, -1, -1)):
            skip = skips[l]
            x = self.dec_first[k](torch.cat([skip, match_size(self.up[k](x), skip)], dim=1))
            x = self.dec_second[k](x, locs[l]) if l in locs else self.dec_second[k](x)
            decoded[l] = x
        ds = [head(decoded[l]) for l, head in enumerate(self.ds_heads, start=1)] if self.deep_supervision else []
        return SegOutput(logits=self.head(x), deep_supervision=ds)
