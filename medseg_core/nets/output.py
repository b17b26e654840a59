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
