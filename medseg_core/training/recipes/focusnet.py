"""FocusNet's four-stage training (Gao et al., MICCAI 2019; notes in ``../shared/notes``).

1. S-Net alone, on every class: focal + Dice.
2. SOL-Net, S-Net frozen: MSE between its heatmaps and Gaussians at the small organs' centres.
3. SOS-Nets, S-Net and SOL-Net frozen: focal + Dice on the fused logits, whose small-organ
   channels inside the ROIs come from the SOS-Nets, so only they learn.
4. Everything end to end: focal + Dice on the fused logits + the heatmap MSE.

Stages follow the fraction of the run (``stage_fractions``, default 0.4 / 0.2 / 0.2 / 0.2), so
the same budget (steps or seconds) splits the same way for every network. The SOS-Nets see
ROIs around the ground-truth centres (teacher forcing), shifted by up to ``center_jitter``
voxels so that they tolerate an imperfect SOL-Net peak at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...losses import HeatmapMSELoss, gaussian_heatmap
from ...nets.focusnet import FocusNet
from .base import FocalDice, Recipe


def organ_centres(target: torch.Tensor, organs: Sequence[int], jitter: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Voxel centres (B, K, D) of each organ's label in each item; -1 where the organ is absent.

    Args:
        target: (B, *S) labels.
        organs: the K label values.
        jitter: add a uniform integer shift in [-jitter, jitter] per axis (clipped to the image).
        generator: for the jitter.
    """
    b, nd = target.shape[0], target.ndim - 1
    out = torch.full((b, len(organs), nd), -1, dtype=torch.long)
    size = torch.tensor(target.shape[1:])
    for i in range(b):
        for k, organ in enumerate(organs):
            idx = (target[i] == organ).nonzero()
            if len(idx) == 0:
                continue
            c = idx.float().mean(0).round().long().cpu()
            if jitter:
                c = c + torch.randint(-jitter, jitter + 1, (nd,), generator=generator)
            out[i, k] = torch.minimum(torch.clamp(c, min=0), size - 1)
    return out


def centre_heatmaps(centres: torch.Tensor, shape: Sequence[int], sigma, device=None) -> torch.Tensor:
    """(B, K, *shape) Gaussian targets at ``centres`` (B, K, D); zero maps where the centre is -1."""
    b, k = centres.shape[:2]
    out = torch.zeros((b, k, *shape), device=device)
    for i in range(b):
        for j in range(k):
            if (centres[i, j] >= 0).all():
                out[i, j] = gaussian_heatmap(shape, centres[i, j][None].tolist(), sigma, device=device)
    return out


class FocusNetStages(Recipe):
    """The four stages; see the module docstring.

    Args:
        stage_fractions: share of the run for stages 1-4.
        heatmap_sigma: Gaussian sigma in voxels (one value or one per axis); SOL-Net used 5.
        heatmap_weight: weight of the heatmap MSE in stage 4 (stage 2 trains on it alone).
        center_jitter: teacher-forced ROI centres move by up to this many voxels per axis.
        gamma: focal exponent.
        seed: of the jitter.
    """

    name = "focusnet"

    def __init__(self, stage_fractions: Sequence[float] = (0.4, 0.2, 0.2, 0.2), heatmap_sigma=5.0,
                 heatmap_weight: float = 1.0, center_jitter: int = 2, gamma: float = 2.0, seed: int = 0):
        if len(stage_fractions) != 4 or any(f < 0 for f in stage_fractions) or sum(stage_fractions) <= 0:
            raise ValueError(f"stage_fractions needs four non-negative shares, got {stage_fractions}")
        total = float(sum(stage_fractions))
        self.bounds = [sum(stage_fractions[:i + 1]) / total for i in range(4)]
        self.sigma = heatmap_sigma
        self.heatmap_weight = float(heatmap_weight)
        self.jitter = int(center_jitter)
        self.seg = FocalDice(gamma=gamma)
        self.mse = HeatmapMSELoss()
        self.gen = torch.Generator().manual_seed(seed)
        self.net = None
        self.stage = None
        self.stage_started: dict[int, int] = {}

    def attach(self, net, make_optimizer):
        if not isinstance(net, FocusNet):
            raise ValueError("the focusnet recipe needs a FocusNet network")
        self.net = net

    def stage_at(self, fraction: float) -> int:
        return next((i + 1 for i, b in enumerate(self.bounds) if fraction < b), 4)

    def before_step(self, step, fraction):
        stage = self.stage_at(fraction)
        if not self.net.small_organs:
            stage = 1
        if stage != self.stage:
            self.net.set_stage(stage)
            self.stage = stage
            self.stage_started[stage] = step

    def forward(self, model, x, target):
        if self.stage in (3, 4):
            centres = organ_centres(target, self.net.small_organs, self.jitter, self.gen)
            return model(x, centers=centres.to(x.device))
        return model(x)

    def loss(self, out, target, annotated):
        if self.stage == 2:
            return self._heatmap_loss(out, target, annotated)
        loss = self.seg(out.logits, target, annotated)
        if self.stage == 4:
            loss = loss + self.heatmap_weight * self._heatmap_loss(out, target, annotated)
        return loss

    def _heatmap_loss(self, out, target, annotated):
        organs = self.net.small_organs
        centres = organ_centres(target, organs)  # the true centres, without jitter
        goal = centre_heatmaps(centres, target.shape[1:], self.sigma, device=out.heatmaps.device)
        return self.mse(out.heatmaps.float(), goal, annotated[:, organs])

    def state(self):
        return {"stage": self.stage, "stage_started": dict(self.stage_started)}
