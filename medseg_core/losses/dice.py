"""Soft Dice, cross-entropy and their sum, with partially annotated cases handled explicitly.

Arguments follow MONAI's vocabulary: ``include_background``, ``softmax``, ``smooth_nr``,
``smooth_dr``, ``batch``, ``reduction``.

Partial annotation: in clinical data an organ missing from a label file was usually *not
contoured*, which is not the same as absent. ``annotated`` (B, N) marks, per case, the classes
whose contours can be trusted. The cross-entropy then uses the marginal likelihood: background and
every unannotated class are merged into one (their probabilities summed), so predicting an
uncontoured organ is not punished; Dice skips the unannotated (case, class) pairs (Shi et al.,
"Marginal loss and exclusion loss for partially supervised multi-organ segmentation", MedIA 2021).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import DiceBase, as_float, log_pt, one_hot_like, reduce, spatial_sums


def soft_dice_terms(probs: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None,
                    include_background: bool = False, batch: bool = True, smooth_nr: float = 1e-5,
                    smooth_dr: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft Dice loss per (sample, class), or per class with ``batch``, and its 0/1 weights.

    Unannotated (sample, class) pairs get weight 0 (skipped, not merged). Keeps ``probs``' dtype.

    Args:
        probs: (B, N, *S) probabilities.
        target: (B, *S) labels.
        annotated: (B, N) bool, optional.

    Returns:
        ``(loss, weight)``, both (B, N') or (N',) with ``batch``; N' = N - 1 without background.
    """
    gt = one_hot_like(target, probs.shape[1], probs)
    inter, psum, gsum = spatial_sums(probs, gt)
    w = annotated.to(inter) if annotated is not None else torch.ones_like(inter)
    if batch:
        inter, psum, gsum = (inter * w).sum(0), (psum * w).sum(0), (gsum * w).sum(0)
        w = (w.sum(0) > 0).to(inter)
    loss = 1 - (2 * inter + smooth_nr) / (psum + gsum + smooth_dr)
    if not include_background:
        loss, w = loss[..., 1:], w[..., 1:]
    return loss, w


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None,
                   include_background: bool = False, batch: bool = True, smooth_nr: float = 1e-5,
                   smooth_dr: float = 1e-5) -> torch.Tensor:
    """Mean soft Dice loss of probabilities: :class:`DiceLoss` without the softmax; a scalar."""
    loss, w = soft_dice_terms(probs, target, annotated, include_background, batch, smooth_nr, smooth_dr)
    return reduce(loss, "mean", w)


class DiceLoss(DiceBase):
    """Soft Dice loss, ``1 - (2 sum(p g) + smooth_nr) / (sum p + sum g + smooth_dr)``.

    Args:
        include_background: count class 0.
        softmax: apply softmax to the input first (else it is taken as probabilities).
        batch: sum over the batch before the ratio (one Dice per class, stabler for small
            structures) instead of one per (sample, class).
        reduction: "mean", "sum" or "none" (then (B, N) or (N,) with ``batch``).

    >>> import torch
    >>> probs = torch.tensor([[[1., 0.], [0., 1.]]]).permute(0, 2, 1)  # (B=1, N=2, S=2), perfect
    >>> round(DiceLoss(softmax=False)(probs, torch.tensor([[0, 1]])).item(), 6)
    0.0
    """

    def __init__(self, include_background: bool = False, softmax: bool = True, batch: bool = True,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, reduction: str = "mean"):
        super().__init__(include_background, softmax, smooth_nr, smooth_dr, reduction, batch)

    def forward(self, input: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> torch.Tensor:
        """input (B, N, *S) logits or probabilities; target (B, *S) labels; annotated (B, N) bool."""
        probs = torch.softmax(as_float(input), 1) if self.softmax else as_float(input)
        loss, w = soft_dice_terms(probs, target, annotated, self.include_background, self.batch,
                                  self.smooth_nr, self.smooth_dr)
        return reduce(loss, self.reduction, w)


def marginal_cross_entropy(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy where background absorbs every unannotated class (mean over voxels).

    With every class annotated this equals ``F.cross_entropy(logits, target)``.
    """
    return -log_pt(logits, target, annotated).mean()


class DiceCELoss(nn.Module):
    """``lambda_dice * Dice + lambda_ce * CE`` on logits, both aware of ``annotated``."""

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, include_background: bool = False,
                 batch: bool = True):
        super().__init__()
        self.dice = DiceLoss(include_background=include_background, softmax=True, batch=batch)
        self.lambda_dice = lambda_dice
        self.lambda_ce = lambda_ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> torch.Tensor:
        return (self.lambda_dice * self.dice(logits, target, annotated)
                + self.lambda_ce * marginal_cross_entropy(logits, target, annotated))


def deep_supervision_loss(loss_fn, logits: torch.Tensor, extra: list[torch.Tensor], target: torch.Tensor,
                          annotated: torch.Tensor | None = None) -> torch.Tensor:
    """Loss on the full-resolution logits plus coarser ones against nearest-down-sampled targets,
    weighted 1, 1/2, 1/4, ... and normalised to sum to one (nnU-Net's scheme)."""
    weights = [0.5 ** i for i in range(1 + len(extra))]
    total = weights[0] * loss_fn(logits, target, annotated)
    for w, lg in zip(weights[1:], extra):
        t = F.interpolate(target[:, None].float(), size=lg.shape[2:], mode="nearest")[:, 0].long()
        total = total + w * loss_fn(lg, t, annotated)
    return total / sum(weights)
