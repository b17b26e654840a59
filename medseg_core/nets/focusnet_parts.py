"""Parts of FocusNet (Gao et al., MICCAI 2019; MedIA 2021): region-of-interest crop and paste,
heatmap peaks, the small-organ localisation head (SOL-Net), the small-organ segmentation network
(SOS-Net) and the fusion of small-organ logits into the large-organ logits.

The ROI helpers work on any number of spatial axes (2D or 3D) and are plain differentiable tensor
operations (slicing and constant padding), so gradients flow from a pasted map back to the cropped
inputs. A ROI is an integer box ``start`` (per axis, may be negative or run past the far border)
and ``size``; the part outside the volume reads zeros when cropping and is dropped when pasting,
so the organ stays at the centre of the crop even next to a border (clamping the box into the
volume instead would move it off-centre).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import factories as fx
from .layers import PreActSEResBlock


def per_axis(value, spatial_dims: int):
    """Adapt a 3D per-axis setting (e.g. kernel ``(1, 3, 3)``) to ``spatial_dims``.

    An int is kept; a 3-tuple loses its first (slice) axis in 2D, so FocusNet's anisotropic 3D
    choices become isotropic in-plane ones. Tuples are returned as tuples.
    """
    if isinstance(value, int):
        return value
    value = tuple(int(v) for v in value)
    if len(value) == spatial_dims:
        return value
    if len(value) == 3 and spatial_dims == 2:
        return value[1:]
    raise ValueError(f"per-axis value {value} does not fit spatial_dims={spatial_dims}")


def roi_start(center: Sequence[int], size: Sequence[int]) -> list[int]:
    """First voxel of a ROI of ``size`` centred on ``center``: ``center - size // 2`` per axis.

    For an odd side the centre voxel is the exact middle of the ROI; for an even side it is the
    voxel just past the middle (index ``size // 2`` of the ROI).
    """
    return [int(c) - int(s) // 2 for c, s in zip(center, size)]


def _clip(start: Sequence[int], size: Sequence[int], shape: Sequence[int]):
    """Per axis ``(lo, hi, before)``: the inside voxels ``[lo, hi)`` of the box and the offset of
    ``lo`` inside the box; ``None`` when the box misses the volume."""
    box = []
    for a, s, n in zip(start, size, shape):
        lo, hi = max(int(a), 0), min(int(a) + int(s), int(n))
        if hi <= lo:
            return None
        box.append((lo, hi, lo - int(a)))
    return box


def crop_roi(x: torch.Tensor, starts: Sequence[Sequence[int]], size: Sequence[int]) -> torch.Tensor:
    """Crop one box per batch item, zero-padding where the box leaves the volume.

    Args:
        x: (B, C, *S).
        starts: B per-axis first voxels (ints; may be negative or run past the far border).
        size: the box side per axis.

    Returns:
        (B, C, *size); ``out[b]`` equals ``x[b]`` on the inside part of the box, 0 elsewhere.
    """
    size = [int(s) for s in size]
    crops = []
    for b, start in enumerate(starts):
        box = _clip(start, size, x.shape[2:])
        if box is None:
            crops.append(x.new_zeros((x.shape[1], *size)))
            continue
        inside = x[(b, slice(None)) + tuple(slice(lo, hi) for lo, hi, _ in box)]
        pad = []
        for (lo, hi, before), s in zip(reversed(box), reversed(size)):
            pad += [before, s - before - (hi - lo)]
        crops.append(F.pad(inside, pad) if any(pad) else inside)
    return torch.stack(crops)


def paste_roi(patch: torch.Tensor, starts: Sequence[Sequence[int]], shape: Sequence[int],
              fill: float = 0.0) -> torch.Tensor:
    """Paste one box per batch item into a full-size map; the inverse of :func:`crop_roi`.

    Args:
        patch: (B, C, *size).
        starts: B per-axis first voxels of the boxes, as given to :func:`crop_roi`.
        shape: the full spatial size S.
        fill: value outside the box (e.g. 0, or a very negative logit).

    Returns:
        (B, C, *S): the inside part of each box carries the patch, everything else ``fill``.
    """
    shape = [int(n) for n in shape]
    maps = []
    for b, start in enumerate(starts):
        box = _clip(start, patch.shape[2:], shape)
        if box is None:
            maps.append(patch.new_full((patch.shape[1], *shape), fill))
            continue
        inside = patch[(b, slice(None)) + tuple(slice(before, before + hi - lo) for lo, hi, before in box)]
        pad = []
        for (lo, hi, _), n in zip(reversed(box), reversed(shape)):
            pad += [lo, n - hi]
        maps.append(F.pad(inside, pad, value=fill) if any(pad) else inside)
    return torch.stack(maps)


def roi_mask(starts: Sequence[Sequence[int]], size: Sequence[int], shape: Sequence[int],
             device=None) -> torch.Tensor:
    """(B, 1, *S) boolean: the inside part of each item's box."""
    mask = torch.zeros((len(starts), 1, *shape), dtype=torch.bool, device=device)
    for b, start in enumerate(starts):
        box = _clip(start, size, shape)
        if box is not None:
            mask[(b, 0) + tuple(slice(lo, hi) for lo, hi, _ in box)] = True
    return mask


def heatmap_peaks(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item and channel, the voxel of the maximum and the maximum.

    Args:
        heatmaps: (B, K, *S).

    Returns:
        ``(centers, scores)``: (B, K, len(S)) int64 voxel indices and (B, K) peak values.
    """
    flat = heatmaps.detach().flatten(2)
    scores, idx = flat.max(dim=2)
    centers = torch.stack(torch.unravel_index(idx, tuple(heatmaps.shape[2:])), dim=-1)
    return centers, scores


def fuse_small_organs(snet_logits: torch.Tensor, sos_full: torch.Tensor, active: torch.Tensor,
                      organs: Sequence[int]) -> torch.Tensor:
    """Overwrite the large-organ logits with the small-organ predictions inside their ROIs.

    Let ``A(v)`` be the classes of the small organs whose ROI contains voxel ``v`` and that are
    active, and ``base(v)`` the largest S-Net logit over the other classes. For ``c_k`` in
    ``A(v)`` the fused logit is ``sos_k(v) + base(v)``; all other channels keep the S-Net logit.
    So inside an active ROI the organ's class wins exactly where its SOS sigmoid is above 0.5
    (``sos_k > 0``) and loses where it is below; where several active ROIs overlap, the organ
    with the larger positive SOS logit wins; where every active organ says "no", the S-Net's
    best remaining class wins. Outside every active ROI the logits are the S-Net logits,
    bit for bit. Differentiable in both inputs.

    Args:
        snet_logits: (B, C, *S) large-organ logits over all classes.
        sos_full: (B, K, *S) SOS-Net logits pasted at full size (any value outside the ROIs).
        active: (B, K, *S) boolean, the inside of each active organ's ROI.
        organs: K distinct class indices (never 0, the background).

    Returns:
        (B, C, *S) fused logits.
    """
    if not organs:
        return snet_logits
    channels = torch.as_tensor(list(organs), device=snet_logits.device)
    a_mask = torch.zeros_like(snet_logits, dtype=torch.bool)
    a_mask[:, channels] = active
    sos_c = torch.zeros_like(snet_logits)
    sos_c = sos_c.index_copy(1, channels, sos_full.to(snet_logits.dtype))
    lowest = torch.finfo(snet_logits.dtype).min
    base = snet_logits.masked_fill(a_mask, lowest).amax(dim=1, keepdim=True)
    return torch.where(a_mask, sos_c + base, snet_logits)


class SOLHead(nn.Sequential):
    """SOL-Net: (norm - act - 3x3 conv) twice, then a 1x1 conv and a sigmoid, one map per organ.

    Args:
        spatial_dims: 2 or 3.
        channels: channels of the S-Net decoder's last features.
        num_organs: K, one centre heatmap per small organ.
        prior: initial heatmap value everywhere (the last bias is ``logit(prior)``), so an
            untrained head stays below the inference threshold (CenterNet's focal-loss prior).

    Shapes:
        (B, channels, *S) -> (B, K, *S) in (0, 1).
    """

    def __init__(self, spatial_dims: int, channels: int, num_organs: int, norm: str = "batch",
                 act: str = "relu", prior: float = 0.1):
        super().__init__(
            fx.norm(spatial_dims, norm, channels), fx.act(act),
            fx.conv(spatial_dims, channels, channels, 3, bias=False),
            fx.norm(spatial_dims, norm, channels), fx.act(act),
            fx.conv(spatial_dims, channels, channels, 3, bias=False),
            fx.conv(spatial_dims, channels, num_organs, 1),
            nn.Sigmoid(),
        )
        nn.init.constant_(self[-2].bias, math.log(prior / (1.0 - prior)))


class SOSNet(nn.Module):
    """One small-organ segmentation network: a two-level SE-residual U-Net on a ROI.

    Entry conv -> SE block (level 0); max-pool; SE block and a dilated SE block (level 1);
    upsample to level 0, concatenate, SE block; 1x1 conv to one foreground logit. The pooling
    halves an axis only where the ROI side is at least 8 voxels (thin ROIs keep their slices).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the stacked ROI inputs (features, high-res features, image,
            heatmap).
        roi_size: the ROI side per axis (fixes the pooling).
        features: widths of the two levels.

    Shapes:
        (B, in_channels, *roi) -> (B, 1, *roi), any roi of at least 1 voxel per axis.
    """

    def __init__(self, spatial_dims: int, in_channels: int, roi_size: Sequence[int],
                 features: Sequence[int] = (16, 32), norm: str = "batch", act: str = "relu"):
        super().__init__()
        s0, s1 = features
        self.spatial_dims = spatial_dims
        self.pool_size = tuple(2 if s >= 8 else 1 for s in roi_size)
        self.entry = fx.conv(spatial_dims, in_channels, s0, 3, bias=False)
        self.enc0 = PreActSEResBlock(spatial_dims, s0, s0, norm=norm, act=act)
        self.pool = fx.max_pool(spatial_dims, self.pool_size)
        self.enc1 = nn.Sequential(
            PreActSEResBlock(spatial_dims, s0, s1, norm=norm, act=act),
            PreActSEResBlock(spatial_dims, s1, s1, dilation=per_axis((1, 2, 2), spatial_dims),
                             norm=norm, act=act),
        )
        self.dec0 = PreActSEResBlock(spatial_dims, s0 + s1, s0, norm=norm, act=act)
        self.head = fx.conv(spatial_dims, s0, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(self.entry(x))
        e1 = self.enc1(self.pool(e0))
        up = F.interpolate(e1, size=e0.shape[2:], mode=fx.interp_mode(self.spatial_dims),
                           align_corners=False)
        return self.head(self.dec0(torch.cat([e0, up], dim=1)))
