"""Difficulty-aware network with confidence learning (Nie et al., AAAI 2019).

"Difficulty-aware Attention Network with Confidence Learning for Medical Image Segmentation":
a segmentation network and a fully convolutional confidence network trained against each other.
The confidence network learns to tell the ground truth from the prediction per voxel; its map
(i) weights the segmentation loss towards hard voxels and (ii) gives an adversarial signal.
This module holds both networks; the losses and the alternating updates belong to the trainer.
Choices the paper leaves open are listed in ``docs/arch-parts/dan.md``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import factories as fx
from .output import SegOutput
from .registry import register
from .base import SegNetwork
from .output import OutputHeads
from .unet import ResBlock, UNet, UNetBody


class ChannelAttentionFusion(nn.Module):
    """Skip fusion with channel attention: an SE gate computed from both inputs re-weights the skip.

    ``gate = sigmoid(W2 relu(W1 avgpool(cat(skip, up))))`` with one weight per skip channel; the
    output is ``cat(skip * gate, up)``. The decoder's semantic feature thereby chooses which
    encoder channels pass (the squeeze-and-excitation of Hu et al., applied as in global attention
    upsampling), rather than gating the whole concatenation.

    Shapes: skip (B, Cs, *S), up (B, Cu, *S) -> (B, Cs + Cu, *S).
    """

    def __init__(self, spatial_dims: int, skip_ch: int, up_ch: int, reduction: int = 4):
        super().__init__()
        hidden = max((skip_ch + up_ch) // reduction, 4)
        self.gate = nn.Sequential(fx.conv(spatial_dims, skip_ch + up_ch, hidden, 1), nn.ReLU(inplace=True),
                                  fx.conv(spatial_dims, hidden, skip_ch, 1), nn.Sigmoid())

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        both = torch.cat([skip, up], dim=1)
        pooled = both.mean(dim=tuple(range(2, both.dim())), keepdim=True)
        return torch.cat([skip * self.gate(pooled), up], dim=1)


class DANSegNet(UNetBody):
    """The enhanced U-Net of the difficulty-aware network.

    Residual blocks at every level, a dilated residual bottleneck, channel-attention skip fusion
    and deep supervision at three scales (full, 1/2, 1/4).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes including background.
        features: channels per level, finest first (at least 3 levels; stride 2 between levels).
        dilations: one dilated residual block per entry at the deepest level.
        attention_reduction: channel reduction inside the attention gate.
        norm, act: layer names for :mod:`medseg_core.nets.factories`.

    Shapes:
        input (B, in_channels, *S) -> ``logits`` (B, out_channels, *S) and ``deep_supervision``
        [(B, out_channels, *ceil(S / 2)), (B, out_channels, *ceil(S / 4))].
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128), dilations: Sequence[int] = (2, 4),
                 attention_reduction: int = 4, norm: str = "instance", act: str = "leakyrelu"):
        if len(features) < 3:
            raise ValueError("DANSegNet needs at least 3 levels for deep supervision at 1/2 and 1/4")
        super().__init__(spatial_dims, in_channels, features, norm=norm, act=act, residual=True)
        nd, features = spatial_dims, self.features
        self.bottleneck = nn.Sequential(*[ResBlock(nd, features[-1], features[-1], 1, norm, act, dilation=d)
                                          for d in dilations])
        self.fuse = nn.ModuleList([ChannelAttentionFusion(nd, features[i - 1], features[i - 1], attention_reduction)
                                   for i in range(len(features) - 1, 0, -1)])
        self.head = fx.conv(nd, features[0], out_channels, 1)
        self.ds_heads = nn.ModuleList([fx.conv(nd, features[1], out_channels, 1),
                                       fx.conv(nd, features[2], out_channels, 1)])

    def join(self, level: int, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """The skip gated by channel attention, then concatenated."""
        return self.fuse[level](skip, up)

    def forward(self, x: torch.Tensor) -> SegOutput:
        levels = self.levels(x)  # bottleneck, then each decoder level: coarsest first, the last at full size
        # levels[-2] is at 1/2, levels[-3] at 1/4 (the bottleneck itself when there are 3 levels)
        ds = [self.ds_heads[0](levels[-2]), self.ds_heads[1](levels[-3])]
        return SegOutput(logits=self.head(levels[-1]), deep_supervision=ds)


class ConfidenceNet(nn.Module):
    """Fully convolutional confidence network: a slim U-Net on the image and class probabilities.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: classes including background (channels of the probability / one-hot input).
        features: channels per level, finest first.
        norm, act: layer names (``norm="none"`` gives the public code's normalisation-free
            discriminator).

    Shapes:
        image (B, in_channels, *S), probs (B, num_classes, *S) -- softmax of the segmentation
        logits or one-hot ground truth -> confidence logits (B, 1, *S) (sigmoid: the probability
        that the label map at each voxel is ground truth).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, num_classes: int = 2,
                 features: Sequence[int] = (8, 16, 32, 64), norm: str = "instance", act: str = "leakyrelu"):
        super().__init__()
        self.net = UNet(spatial_dims, in_channels + num_classes, 1, features=features, norm=norm, act=act)

    def forward(self, image: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, probs.to(image.dtype)], dim=1)).logits


@register("dan")
class DAN(SegNetwork):
    """Segmentation network plus confidence network (difficulty-aware network with confidence
    learning).

    Args:
        spatial_dims, in_channels, out_channels: as every network.
        features, dilations, attention_reduction: of :class:`DANSegNet`.
        confidence_features: levels of :class:`ConfidenceNet`.
        norm, act: layer names for the segmentation network.
        confidence_norm: normalisation of the confidence network.
        confidence_in_forward: also compute ``confidence`` in :meth:`forward` (off to save time
            when only the segmentation is needed).

    Attributes:
        seg_net, confidence_net: the two sub-networks; the trainer calls
            ``model.confidence_net(image, probs)`` (or :meth:`confidence`) with probabilities that
            keep their graph for the adversarial term, detached ones or one-hot labels for the
            confidence network's own update.

    Shapes:
        input (B, in_channels, *S) -> ``logits`` (B, out_channels, *S), ``deep_supervision`` at
        1/2 and 1/4, ``confidence`` (B, 1, *S) logits of
        ``confidence_net(x, softmax(logits).detach())`` -- detached, so a loss on this output trains
        only the confidence network (it is the "prediction" sample of its update, and the map the
        predictor shows); the segmentation network's adversarial gradient must come from an
        explicit call with undetached probabilities.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128), dilations: Sequence[int] = (2, 4),
                 attention_reduction: int = 4, confidence_features: Sequence[int] = (8, 16, 32, 64),
                 norm: str = "instance", act: str = "leakyrelu", confidence_norm: str = "instance",
                 confidence_in_forward: bool = True):
        super().__init__()
        self.confidence_in_forward = confidence_in_forward
        self.seg_net = DANSegNet(spatial_dims, in_channels, out_channels, features, dilations,
                                 attention_reduction, norm, act)
        self.confidence_net = ConfidenceNet(spatial_dims, in_channels, out_channels, confidence_features,
                                            confidence_norm, act)

    def confidence(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Confidence logits (B, 1, *S) for an image and class probabilities or one-hot labels."""
        return self.confidence_net(x, probs)

    def output_heads(self) -> OutputHeads:
        return OutputHeads(confidence=True)

    def forward(self, x: torch.Tensor) -> SegOutput:
        out = self.seg_net(x)
        if self.confidence_in_forward:
            out.confidence = self.confidence_net(x, torch.softmax(out.logits, dim=1).detach())
        return out
