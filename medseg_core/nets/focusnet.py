"""FocusNet: imbalanced large and small organ segmentation (Gao et al., "FocusNet: Imbalanced Large
and Small Organ Segmentation with an End-to-End Deep Neural Network for Head and Neck CT Images",
MICCAI 2019; extended in Medical Image Analysis 2021 as FocusNetv2).

Three parts, trained in four stages (see :meth:`FocusNet.set_stage`):

* S-Net: a high-resolution SE-residual network (few down-samplings, dilated blocks, DenseASPP,
  decoder back to full resolution) that segments every class (background, large and small
  organs). Its logits alone are a complete segmentation.
* SOL-Net: a head on the S-Net decoder's last features, one sigmoid centre heatmap per small
  organ.
* SOS-Net: per small organ, a small network that segments a ROI (about three times the organ's
  diameter) cropped around the heatmap peak (or the ground-truth centre in training) from the
  S-Net decoder features, the first-level high-resolution features, the image and the heatmap.
  Its logit map is pasted back and overwrites the S-Net logits inside the ROI
  (:func:`~medseg_core.nets.focusnet_parts.fuse_small_organs`).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import factories as fx
from .focusnet_parts import (SOLHead, SOSNet, crop_roi, fuse_small_organs, heatmap_peaks, paste_roi,
                             per_axis, roi_mask, roi_start)
from .layers import DenseASPP, PreActSEResBlock
from .base import SegNetwork
from .output import OutputHeads, SegOutput
from .registry import register

#: Fill value of the pasted SOS logit maps outside their ROI (finite in float16).
OUTSIDE_LOGIT = -1.0e4


class SNet(nn.Module):
    """FocusNet's S-Net: the large-organ segmentation network, which also feeds SOL and SOS.

    Stem (in-plane 1x3x3 conv, ReLU, 1x3x3 SE-residual block, SE reduction 4) at full
    resolution; per down-sampling a max-pool and ``blocks_per_level`` pre-activation SE-residual
    blocks; at the bottom ``dilated_blocks`` blocks with dilation (1, 2, 2) and a DenseASPP; a
    decoder that upsamples (linear interpolation to the skip's size, so odd sizes work), joins
    the skip after a plain 3x3 "lateral" convolution by concatenation and applies one SE block.

    Shapes:
        (B, in_channels, *S) -> logits (B, out_channels, *S), decoder features (B, features[0],
        *S), stem features (B, features[0], *S). Every axis pooled must keep at least one voxel.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, features: Sequence[int],
                 pool_sizes: Sequence, blocks_per_level: int, dilated_blocks: int, aspp_growth: int,
                 aspp_rates: Sequence, norm: str, act: str):
        super().__init__()
        sd = spatial_dims
        self.spatial_dims = sd
        f = list(features)
        in_plane = per_axis((1, 3, 3), sd)
        self.stem = nn.Sequential(
            fx.conv(sd, in_channels, f[0], in_plane, bias=False), fx.act(act),
            PreActSEResBlock(sd, f[0], f[0], kernel_size=in_plane, norm=norm, act=act, reduction=4),
        )
        self.pools = nn.ModuleList([fx.max_pool(sd, per_axis(p, sd)) for p in pool_sizes])
        self.levels = nn.ModuleList()
        for i in range(1, len(f)):
            blocks = [PreActSEResBlock(sd, f[i - 1] if j == 0 else f[i], f[i], norm=norm, act=act)
                      for j in range(blocks_per_level)]
            self.levels.append(nn.Sequential(*blocks))
        dil = per_axis((1, 2, 2), sd)
        self.dilated = nn.Sequential(*[PreActSEResBlock(sd, f[-1], f[-1], dilation=dil, norm=norm, act=act)
                                       for _ in range(dilated_blocks)])
        self.aspp = DenseASPP(sd, f[-1], aspp_growth, [per_axis(r, sd) for r in aspp_rates],
                              bottleneck=2 * aspp_growth, norm=norm, act=act)
        ch = self.aspp.out_channels
        self.laterals = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(len(f) - 1, 0, -1):
            self.laterals.append(fx.conv(sd, f[i - 1], f[i - 1], 3))
            self.decoders.append(PreActSEResBlock(sd, ch + f[i - 1], f[i - 1], norm=norm, act=act))
            ch = f[i - 1]
        self.head = fx.conv(sd, f[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        first = self.stem(x)
        skips, h = [first], first
        for pool, level in zip(self.pools, self.levels):
            h = level(pool(h))
            skips.append(h)
        h = self.aspp(self.dilated(skips.pop()))
        mode = fx.interp_mode(self.spatial_dims)
        for lateral, dec in zip(self.laterals, self.decoders):
            skip = skips.pop()
            up = F.interpolate(h, size=skip.shape[2:], mode=mode, align_corners=False)
            h = dec(torch.cat([lateral(skip), up], dim=1))
        return self.head(h), h, first


@register("focusnet")
class FocusNet(SegNetwork):
    """FocusNet for head-and-neck organs at risk, 3D (2D also works: per-axis settings lose their
    first axis).

    Args:
        spatial_dims: 3 (or 2).
        in_channels: image channels.
        out_channels: classes including background (large and small organs).
        small_organs: class indices of the K small organs (distinct, not 0). Empty: S-Net only.
        roi_sizes: per small organ the ROI side ``[d, h, w]`` in voxels (about three times the
            organ's mean diameter, measured on the training data). Default ``[16, 32, 32]``
            (2D ``[32, 32]``) for each.
        downsamplings: S-Net down-samplings (1 in the paper, 2 in the public code).
        features: S-Net widths, finest first, ``downsamplings + 1`` of them. Default 32, then 48
            for the middle levels, 64 at the bottom (the public code's 32/48/64).
        pool_sizes: per down-sampling the pooling kernel; default ``(1, 2, 2)`` first (the CT
            slice axis is kept), then ``(2, 2, 2)``.
        blocks_per_level: SE-residual blocks after each pooling (2).
        dilated_blocks: SE-residual blocks with dilation (1, 2, 2) before the DenseASPP (2).
        aspp_growth, aspp_rates: DenseASPP growth and per-layer dilations (32;
            (1,3,3), (1,6,6), (1,12,12), (1,18,18) as in the public code); the 1x1 bottleneck is
            ``2 * aspp_growth`` wide (64 there).
        sos_features: the two widths of each SOS-Net.
        heatmap_threshold: at inference a small organ is segmented by its SOS-Net only where its
            heatmap peak exceeds this (0.6); one for all small organs or one each (chosen on
            the validation split by ``tools/choose_heatmap_thresholds.py``).
        heatmap_prior: initial heatmap value (SOL-Net output bias ``logit(prior)``).
        detach_sos_inputs: stop gradients from the SOS-Nets into the S-Net and SOL-Net (the
            public code's behaviour); default False (end to end, as the paper).
        norm, act: layer names for :mod:`medseg_core.nets.factories` (batch norm, ReLU).

    Shapes:
        ``forward(x (B, in_channels, *S), centers=None (B, K, spatial_dims) ints)`` ->
        :class:`SegOutput` with

        * ``logits`` (B, out_channels, *S): S-Net logits with the small organs fused in;
        * ``heatmaps`` (B, K, *S): SOL-Net centre heatmaps in (0, 1);
        * ``rois``: per item a list of K dicts ``{organ, center, start, size, score, active}``;
        * ``extras["snet_logits"]`` (B, out_channels, *S), ``extras["sos_logits"]`` (K tensors
          (B, 1, *roi_k)), ``extras["sos_pasted"]`` (B, K, *S), the SOS logits at full size with
          ``OUTSIDE_LOGIT`` outside each ROI, ``extras["roi_masks"]`` (B, K, *S) boolean, the
          inside of each active ROI (where the fusion replaced the organ's logit).

    ``centers`` (teacher forcing in training) gives each organ's ground-truth centre voxel; an
    organ whose centre has a negative coordinate (absent from the patch) falls back to the
    heatmap argmax, as do all organs when ``centers`` is None. In training mode every organ's
    SOS-Net result is fused; in eval mode only those whose heatmap peak exceeds their
    ``heatmap_threshold``. ROIs may leave the volume: crops are zero-padded and only the inside
    part is pasted back.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 small_organs: Sequence[int] | None = None, roi_sizes: Sequence[Sequence[int]] | None = None,
                 downsamplings: int = 1, features: Sequence[int] | None = None,
                 pool_sizes: Sequence | None = None, blocks_per_level: int = 2, dilated_blocks: int = 2,
                 aspp_growth: int = 32,
                 aspp_rates: Sequence = ((1, 3, 3), (1, 6, 6), (1, 12, 12), (1, 18, 18)),
                 sos_features: Sequence[int] = (16, 32), heatmap_threshold: float | Sequence[float] = 0.6,
                 heatmap_prior: float = 0.1, detach_sos_inputs: bool = False,
                 norm: str = "batch", act: str = "relu"):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if downsamplings < 1:
            raise ValueError("FocusNet needs at least one down-sampling")
        organs = [int(c) for c in (small_organs or [])]
        if len(set(organs)) != len(organs) or any(not 0 < c < out_channels for c in organs):
            raise ValueError(f"small_organs must be distinct classes in 1..{out_channels - 1}, got {organs}")
        default_roi = [16, 32, 32][-spatial_dims:]
        rois = [[int(s) for s in r] for r in roi_sizes] if roi_sizes is not None else [default_roi] * len(organs)
        if len(rois) != len(organs) or any(len(r) != spatial_dims or min(r) < 1 for r in rois):
            raise ValueError(f"need one positive roi size of {spatial_dims} axes per small organ, got {rois}")
        if features is None:
            features = [32] + [48] * (downsamplings - 1) + [64]
        if len(features) != downsamplings + 1:
            raise ValueError(f"need {downsamplings + 1} features for {downsamplings} down-samplings")
        if pool_sizes is None:
            pool_sizes = [(1, 2, 2)] + [(2, 2, 2)] * (downsamplings - 1)
        if len(pool_sizes) != downsamplings:
            raise ValueError(f"need {downsamplings} pool sizes, got {len(pool_sizes)}")
        self.spatial_dims = spatial_dims
        self.small_organs = organs
        self.roi_sizes = rois
        if isinstance(heatmap_threshold, (int, float)):
            heatmap_threshold = [heatmap_threshold] * len(organs)
        if len(heatmap_threshold) != len(organs):
            raise ValueError(f"need one heatmap threshold or one per small organ, got {list(heatmap_threshold)}")
        self.heatmap_thresholds = [float(t) for t in heatmap_threshold]
        self.detach_sos_inputs = bool(detach_sos_inputs)
        self.snet = SNet(spatial_dims, in_channels, out_channels, features, pool_sizes, blocks_per_level,
                         dilated_blocks, aspp_growth, aspp_rates, norm, act)
        f0 = features[0]
        self.sol = SOLHead(spatial_dims, f0, len(organs), norm, act, heatmap_prior) if organs else None
        self.sos = nn.ModuleList([SOSNet(spatial_dims, 2 * f0 + in_channels + 1, r, sos_features, norm, act)
                                  for r in rois])
        self.stage: int | None = None

    # ---------------------------------------------------------------- training-stage control
    def snet_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the S-Net (large-organ segmentation)."""
        return self.snet.parameters()

    def sol_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the SOL-Net (small-organ centre heatmaps)."""
        return self.sol.parameters() if self.sol is not None else iter(())

    def sos_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of all SOS-Nets (small-organ segmentation in the ROIs)."""
        return self.sos.parameters()

    _STAGES = {1: ({"snet"}, ("snet",)), 2: ({"sol"}, ("snet", "sol")), 3: ({"sos"}, ("snet", "sol", "sos")),
               4: ({"snet", "sol", "sos"}, ("snet", "sol", "sos"))}

    def set_stage(self, stage: int | None) -> None:
        """Prepare the four-stage recipe of the paper; ``None`` undoes it (all trainable, all run).

        1. S-Net alone: only it runs and trains (``logits`` are the S-Net logits).
        2. SOL-Net: S-Net frozen; S-Net and SOL-Net run (no ROIs).
        3. SOS-Nets: S-Net and SOL-Net frozen; everything runs.
        4. Everything trains end to end.

        Frozen parts get ``requires_grad=False`` and stay in eval mode (batch-norm statistics
        frozen) even under ``model.train()``. Build the optimiser after calling this (or pass
        it e.g. :meth:`sos_parameters`).
        """
        if stage is not None and stage not in self._STAGES:
            raise ValueError(f"stage must be 1-4 or None, got {stage}")
        trainable = {"snet", "sol", "sos"} if stage is None else self._STAGES[stage][0]
        self.stage = stage
        for name in ("snet", "sol", "sos"):
            module = getattr(self, name)
            if module is not None:
                module.requires_grad_(name in trainable)
        self.train(self.training)

    def _runs(self, part: str) -> bool:
        return self.stage is None or part in self._STAGES[self.stage][1]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.stage is not None:
            for name in ("snet", "sol", "sos"):
                module = getattr(self, name)
                if module is not None and name not in self._STAGES[self.stage][0]:
                    module.eval()
        return self

    # ---------------------------------------------------------------- forward
    def output_heads(self) -> OutputHeads:
        """SOL-Net heatmaps, one per small organ, and the region each SOS-Net segments."""
        return OutputHeads(heatmap_classes=tuple(self.small_organs), threshold=tuple(self.heatmap_thresholds),
                           roi_sizes=tuple(tuple(r) for r in self.roi_sizes), center_prompt=bool(self.small_organs))

    def forward(self, x: torch.Tensor, centers: torch.Tensor | None = None) -> SegOutput:
        snet_logits, feat, first = self.snet(x)
        if not self.small_organs or not self._runs("sol"):
            return SegOutput(logits=snet_logits, extras={"snet_logits": snet_logits})
        return self.from_trunk(x, (snet_logits, feat, first, self.sol(feat)), centers=centers)

    def trunk(self) -> nn.Module | None:
        """S-Net and SOL-Net: ``x -> (snet_logits, decoder features, stem features, heatmaps)``,
        the full-resolution work (on the CPU 90 % of the time of the 2D model's window); what
        follows crops around the heatmap peaks, whose places depend on the values. None without
        small organs."""
        return _Trunk(self) if self.small_organs else None

    def from_trunk(self, x: torch.Tensor, parts, centers: torch.Tensor | None = None) -> SegOutput:
        """:meth:`forward`'s result from the :meth:`trunk`'s four outputs for ``x``: the heatmap
        peaks (or ``centers``), the SOS-Nets on their ROIs and the fusion."""
        snet_logits, feat, first, heatmaps = parts
        extras = {"snet_logits": snet_logits}
        if not self._runs("sos"):
            return SegOutput(logits=snet_logits, heatmaps=heatmaps, extras=extras)

        shape = x.shape[2:]
        b = x.shape[0]
        peaks, scores = heatmap_peaks(heatmaps)
        given = torch.zeros(peaks.shape[:2], dtype=torch.bool, device=peaks.device)
        if centers is not None:
            centers = torch.as_tensor(centers, device=peaks.device).long()
            if centers.shape != peaks.shape:
                raise ValueError(f"centers must have shape {tuple(peaks.shape)}, got {tuple(centers.shape)}")
            given = (centers >= 0).all(dim=-1)
            peaks = torch.where(given[..., None], centers, peaks)
        peaks_l, scores_l, given_l = peaks.tolist(), scores.tolist(), given.tolist()
        # a given centre (the ground truth's in training, a user's point at inference) is an organ found
        active = [[self.training or g or s > t for s, g, t in zip(row, grow, self.heatmap_thresholds)]
                  for row, grow in zip(scores_l, given_l)]

        srcs = [feat, first, x, heatmaps]
        if self.detach_sos_inputs:
            srcs = [t.detach() for t in srcs]
        sos_logits, pasted, masks = [], [], []
        rois: list[list[dict]] = [[] for _ in range(b)]
        for j, (organ, size) in enumerate(zip(self.small_organs, self.roi_sizes)):
            starts = [roi_start(peaks_l[i][j], size) for i in range(b)]
            run = [i for i in range(b) if active[i][j]]  # all in training; in eval the organs found
            logit = self._sos(j, srcs, run, [starts[i] for i in run], size, b)
            sos_logits.append(logit)
            pasted.append(paste_roi(logit, starts, shape, fill=OUTSIDE_LOGIT))
            on = torch.tensor([active[i][j] for i in range(b)], device=x.device).view(b, *[1] * (x.dim() - 1))
            masks.append(roi_mask(starts, size, shape, device=x.device) & on)
            for i in range(b):
                rois[i].append({"organ": organ, "center": [int(c) for c in peaks_l[i][j]], "start": starts[i],
                                "size": list(size), "score": float(scores_l[i][j]), "active": bool(active[i][j])})
        sos_full = torch.cat(pasted, dim=1)
        active_masks = torch.cat(masks, dim=1)
        logits = fuse_small_organs(snet_logits, sos_full, active_masks, self.small_organs)
        extras.update(sos_logits=sos_logits, sos_pasted=sos_full, roi_masks=active_masks)
        return SegOutput(logits=logits, heatmaps=heatmaps, rois=rois, extras=extras)

    def _sos(self, j: int, srcs, run: list[int], starts, size, b: int) -> torch.Tensor:
        """(B, 1, *size) logits of small organ ``j``'s SOS-Net on the batch items ``run`` (ROIs at
        ``starts``); the other items, inactive organs in eval mode whose result the fusion ignores,
        are not run and read ``OUTSIDE_LOGIT`` (most slices of a 2D model hold few small organs:
        on HNOAR cases hn_201 and hn_202 21 % and 24 % of the organ-windows ran)."""
        if not run:
            return srcs[0].new_full((b, 1, *size), OUTSIDE_LOGIT)
        part = srcs if len(run) == b else [t[run] for t in srcs]
        crop = torch.cat([crop_roi(part[0], starts, size), crop_roi(part[1], starts, size),
                          crop_roi(part[2], starts, size), crop_roi(part[3][:, j:j + 1], starts, size)], dim=1)
        logit = self.sos[j](crop)
        if len(run) == b:
            return logit
        full = logit.new_full((b, 1, *size), OUTSIDE_LOGIT)
        return full.index_copy(0, torch.tensor(run, device=logit.device), logit)


class _Trunk(nn.Module):
    """:meth:`FocusNet.trunk`: the S-Net and the SOL-Net of a FocusNet, its weights shared."""

    outputs = ("snet_logits", "features", "first", "heatmaps")

    def __init__(self, net: FocusNet):
        super().__init__()
        self.snet, self.sol = net.snet, net.sol

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        snet_logits, feat, first = self.snet(x)
        return snet_logits, feat, first, self.sol(feat)
