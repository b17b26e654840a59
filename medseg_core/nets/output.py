"""The one output type of every network, so the trainer and predictor treat all alike."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SegOutput:
    """What a segmentation network returns.

    Attributes:
        logits: (B, C, *spatial) class scores at the input resolution. Always present.
        deep_supervision: lower-resolution logits, finest first, for deep-supervision losses.
        heatmaps: (B, K, *spatial) centre heatmaps (FocusNet's SOL-Net, L-SNet's L-Net).
        boxes: per-position box distances (L-SNet), or decoded boxes.
        rois: regions of interest the network segmented (list per batch item).
        confidence: (B, 1, *spatial) confidence logits (difficulty-aware network).
        extras: anything else a network wants to expose by name.
    """

    logits: torch.Tensor
    deep_supervision: list[torch.Tensor] = field(default_factory=list)
    heatmaps: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    rois: list | None = None
    confidence: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OutputHeads:
    """What a network's :class:`SegOutput` carries beside ``logits``, as the network declares it
    (:meth:`SegNetwork.output_heads`), so the predictor never guesses from attribute names.

    Attributes:
        confidence: ``SegOutput.confidence`` holds one confidence logit per voxel (DAN).
        heatmap_classes: the label value of each ``SegOutput.heatmaps`` channel (FocusNet's
            SOL-Net: its small organs; L-SNet: every foreground class, or ``[0]`` for one
            channel of any organ). Empty: no heatmaps.
        box_distances: ``SegOutput.boxes`` holds 2 x spatial_dims distances to the box sides (L-SNet).
        threshold: the heatmap value above which an organ is taken as present, one for every
            heatmap channel or one per channel (FocusNet's per-organ thresholds).
        roi_sizes: per heatmap channel, the region side in voxels the network segments (FocusNet).
        stride: the heatmaps' and distances' down-sampling (L-SNet: 4).
        box_prompt: ``forward(x, boxes=...)`` segments given boxes (L-SNet's S-Net on a user box).
        center_prompt: ``forward(x, centers=...)`` segments its small organs around given centres
            (FocusNet's SOS-Net on a user's point), a given centre counting as an organ found.
    """

    confidence: bool = False
    heatmap_classes: tuple[int, ...] = ()
    box_distances: bool = False
    threshold: float | tuple[float, ...] = 0.5
    roi_sizes: tuple[tuple[int, ...], ...] = ()
    stride: int = 1
    box_prompt: bool = False
    center_prompt: bool = False
