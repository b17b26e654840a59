"""A U-Net whose skip connections pass through a lateral feature alignment module (LFAM), from the
GODC/LFAM paper; 2D or 3D.

The LFAM aligns the encoder (skip) feature to the up-sampled decoder feature with a modulated
deformable convolution (DCNv2) whose offsets and mask are predicted from the concatenation of both,
the design of FaPN's feature alignment (Huang et al., ICCV 2021), which the paper's description
matches; no code was published. Choices (see ``docs/arch-parts/lfam_unet.md``):

* **Residual form, exact identity at initialisation.** ``LFAM(skip, up) = skip + D(skip)``, ``D``
  a modulated deformable 3x3 convolution whose kernel starts at zero and whose offset/mask head
  starts at zero (in :class:`~medseg_core.nets.layers.DeformConv`). At initialisation the module
  returns ``skip`` bit for bit, so the network is a U-Net with the same weights, whatever the
  deformable-convolution backend. (An identity-initialised kernel without the residual was tried
  and rejected: the pure-PyTorch sampler's normalise/un-normalise round trip moves integer
  positions by float32 rounding, ~2e-5 absolute on unit-variance features, so it is not exact.)
  Cost of the zero kernel: at the very first step only ``D``'s kernel gets a non-zero gradient
  (the offset gradient is proportional to the kernel), as with any zero-initialised residual.
* Offsets come from ``Conv1x1(cat[skip, up])`` reduced to ``min(C, offset_channels)`` channels
  (FaPN reduces ``2C -> C`` the same way), then the deformable convolution's own 3x3 offset head.
* ``share_alignment=True``: one deformable convolution of width ``align_channels`` (default
  ``features[0]``) and its offset head are shared by all levels. Each level keeps its own 1x1
  convolutions: ``P_in`` (skip ``C_l -> W``), the offset feature (``2 C_l -> min(W,
  offset_channels)``) and ``P_out`` (``W -> C_l``): ``out = skip + P_out(D_shared(P_in(skip)))``,
  again exactly ``skip`` at initialisation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import factories as fx
from .layers import DeformConv
from .registry import register
from .unet import UNet


def _zero_kernel(dc: DeformConv) -> None:
    """Zero the main kernel (and bias) of a deformable convolution: its output starts at exactly 0."""
    with torch.no_grad():
        dc.weight.zero_()
        if dc.bias is not None:
            dc.bias.zero_()


class SharedAlignment(DeformConv):
    """The deformable convolution shared by all levels' LFAMs (``share_alignment=True``):
    ``channels -> channels``, offsets from a ``offset_in_channels``-wide guide; zero kernel at init."""

    def __init__(self, spatial_dims: int, channels: int, offset_groups: int, offset_in_channels: int):
        if channels % offset_groups:
            raise ValueError(f"offset_groups={offset_groups} must divide align_channels={channels}")
        super().__init__(spatial_dims, channels, channels, 3, offset_groups=offset_groups, bias=False,
                         modulated=True, offset_in_channels=offset_in_channels)
        self.channels = channels
        _zero_kernel(self)


class LFAM(nn.Module):
    """Lateral feature alignment module: deform the skip feature towards the up-sampled one.

    ``out = skip + D(skip)`` where ``D`` is a modulated deformable 3x3 convolution whose offsets and
    mask come from ``Conv1x1(cat[skip, up])``; ``D``'s kernel and offset head start at zero, so the
    module returns ``skip`` exactly (bit for bit) at initialisation. With a shared alignment,
    ``out = skip + P_out(D_shared(P_in(skip)))`` with this level's 1x1 projections.

    Args:
        spatial_dims: 2 or 3.
        channels: width of the skip and up-sampled features.
        offset_groups: deformable groups (must divide ``channels``); unused when shared.
        offset_channels: width cap of the offset feature ``Conv1x1(cat[skip, up])``.
        shared: the :class:`SharedAlignment` this LFAM will be given in ``forward`` (only its
            widths are read here: this module then holds just its three 1x1 projections, and the
            shared convolution stays registered once, in the network).

    Shapes:
        ``skip`` (B, channels, *S), ``up`` (B, channels, *S) -> aligned skip (B, channels, *S).
    """

    def __init__(self, spatial_dims: int, channels: int, offset_groups: int = 4, offset_channels: int = 8,
                 shared: SharedAlignment | None = None):
        super().__init__()
        self.is_shared = shared is not None
        if shared is None:
            if channels % offset_groups:
                raise ValueError(f"offset_groups={offset_groups} must divide the LFAM width {channels}")
            width = min(channels, offset_channels)
            self.offset_feat = fx.conv(spatial_dims, 2 * channels, width, 1)
            self.align = DeformConv(spatial_dims, channels, channels, 3, offset_groups=offset_groups,
                                    bias=False, modulated=True, offset_in_channels=width)
            _zero_kernel(self.align)
        else:
            self.proj_in = fx.conv(spatial_dims, channels, shared.channels, 1, bias=False)
            self.offset_feat = fx.conv(spatial_dims, 2 * channels, shared.offset_in_channels, 1)
            self.proj_out = fx.conv(spatial_dims, shared.channels, channels, 1, bias=False)

    def forward(self, skip: torch.Tensor, up: torch.Tensor, shared: SharedAlignment | None = None) -> torch.Tensor:
        guide = self.offset_feat(torch.cat([skip, up], dim=1))
        if not self.is_shared:
            return skip + self.align(skip, offset_input=guide)
        if shared is None:
            raise ValueError("this LFAM shares its alignment: pass the SharedAlignment to forward")
        return skip + self.proj_out(shared(self.proj_in(skip), offset_input=guide))


@register("lfam_unet")
class LFAMUNet(UNet):
    """U-Net (plain or residual) with lateral feature alignment modules on its skips, 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes including background.
        features: channels per level, finest first; ``len(features) - 1`` down-samplings.
        strides: per down-sampling, an int or a per-axis tuple; default 2 everywhere.
        norm, act: layer names for :mod:`medseg_core.nets.factories`.
        residual: residual blocks (:class:`ResBlock`) instead of plain double convolutions.
        deep_supervision: also return 1x1-conv logits of decoder levels 1 and 2.
        dropout: channel dropout inside the deepest block.
        offset_groups: deformable groups of the alignment convolutions (FaPN uses 8); must divide
            every skip width (or ``align_channels`` when shared).
        offset_channels: width cap of each level's offset feature ``Conv1x1(cat[skip, up])``.
        share_alignment: share one deformable convolution across levels through per-level 1x1
            projections to ``align_channels`` (fewer parameters).
        align_channels: width of the shared alignment; default ``features[0]``.

    Shapes:
        input (B, in_channels, *S) -> ``SegOutput.logits`` (B, out_channels, *S), any S.
    """

    traces_at_any_size = False  # the deformable alignment's sampling grid follows the input size

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128, 128), strides: Sequence | None = None,
                 norm: str = "instance", act: str = "leakyrelu", residual: bool = False,
                 deep_supervision: bool = False, dropout: float = 0.0, offset_groups: int = 4,
                 offset_channels: int = 8, share_alignment: bool = False, align_channels: int | None = None):
        super().__init__(spatial_dims, in_channels, out_channels, features, strides, norm, act, deep_supervision,
                         dropout, residual)
        features = self.features
        if share_alignment:
            width = int(align_channels or features[0])
            self.shared_alignment = SharedAlignment(spatial_dims, width, offset_groups, min(width, offset_channels))
        else:
            self.shared_alignment = None
        # One LFAM per decoder level, coarsest first (the order of ``self.decoder``).
        self.lfam = nn.ModuleList([LFAM(spatial_dims, features[i - 1], offset_groups, offset_channels,
                                        shared=self.shared_alignment) for i in range(len(features) - 1, 0, -1)])

    def join(self, level: int, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """The skip aligned to the up-sampled feature by this level's LFAM, then concatenated."""
        return torch.cat([self.lfam[level](skip, up, self.shared_alignment), up], dim=1)
