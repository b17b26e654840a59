"""Shared helpers of the losses (private): dtype handling, reductions, marginal log-likelihoods.

All helpers keep float64 inputs in float64 (so ``torch.autograd.gradcheck`` works) and promote
half precision to float32.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of "mean", "sum", "none", else raise ``ValueError``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


class DiceBase(nn.Module):
    """The arguments every Dice-type loss shares (MONAI's vocabulary), checked in one place.

    Args:
        include_background: count class 0.
        softmax: apply softmax to the input first (else it is taken as probabilities).
        smooth_nr, smooth_dr: added to the numerator and the denominator.
        reduction: "mean", "sum" or "none".
        batch: pool the sums over the batch before the ratio (``None`` for losses without it).
    """

    def __init__(self, include_background: bool, softmax: bool, smooth_nr: float, smooth_dr: float,
                 reduction: str, batch: bool | None = None):
        super().__init__()
        self.include_background = include_background
        self.softmax = softmax
        self.smooth_nr = smooth_nr
        self.smooth_dr = smooth_dr
        self.reduction = check_reduction(reduction)
        self.batch = batch


def as_float(x: torch.Tensor) -> torch.Tensor:
    """float32/float64 unchanged; anything else (half, bfloat16, integers) promoted to float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def one_hot_like(target: torch.Tensor, num_classes: int, ref: torch.Tensor) -> torch.Tensor:
    """(B, *S) integer labels -> (B, N, *S) one-hot in ``ref``'s dtype and device."""
    return F.one_hot(target.long(), num_classes).movedim(-1, 1).to(dtype=ref.dtype, device=ref.device)


def reduce(loss: torch.Tensor, reduction: str, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce ``loss``; with ``weight`` (broadcastable 0/1 mask) "mean" divides by its sum.

    "none" returns ``loss * weight`` (zeros where excluded) in ``loss``'s shape.
    """
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    count = loss.numel() if weight is None else torch.broadcast_to(weight, loss.shape).sum().clamp_min(1)
    return total / count


def class_weights(alpha, num_classes: int, ref: torch.Tensor) -> torch.Tensor | None:
    """Per-class weights (N,) from ``alpha``.

    ``None`` -> ``None``; a sequence or tensor of length N -> itself; a float ``a`` -> MONAI's
    convention ``[1 - a, a, ..., a]`` (background ``1 - a``, every foreground class ``a``).
    """
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)):
        return torch.tensor([1.0 - alpha] + [float(alpha)] * (num_classes - 1), dtype=ref.dtype, device=ref.device)
    a = torch.as_tensor(alpha, dtype=ref.dtype, device=ref.device).flatten()
    if a.numel() != num_classes:
        raise ValueError(f"alpha has {a.numel()} entries but the input has {num_classes} classes")
    return a


def merged_background_mask(annotated: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: the classes that merge into background -- class 0 and every unannotated one."""
    merge = ~annotated.bool()
    merge[:, 0] = True
    return merge


def log_pt(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probability of the true class per voxel, (B, *S), with marginal merging.

    Args:
        logits: (B, N, *S) unnormalised scores.
        target: (B, *S) integer labels.
        annotated: optional (B, N) bool. For a voxel labelled background, the probability of the
            true class is the *sum* of the probabilities of background and of every class not
            annotated in that case (the marginal likelihood of ``marginal_cross_entropy``).

    Returns:
        (B, *S) tensor of ``log p_t``; ``-log_pt(...).mean()`` equals ``marginal_cross_entropy``.
    """
    logp = torch.log_softmax(as_float(logits), 1)
    picked = logp.gather(1, target.long().unsqueeze(1)).squeeze(1)
    if annotated is None:
        return picked
    merge = merged_background_mask(annotated.to(logits.device))
    shape = merge.shape + (1,) * (logits.ndim - 2)
    bg = torch.logsumexp(logp.masked_fill(~merge.view(shape), float("-inf")), dim=1)
    return torch.where(target == 0, bg, picked)


def merge_unannotated(probs: torch.Tensor, annotated: torch.Tensor | None) -> torch.Tensor:
    """Add the probabilities of unannotated classes to background and zero their channels.

    Args:
        probs: (B, N, *S) class probabilities.
        annotated: (B, N) bool or ``None`` (then ``probs`` is returned unchanged).
    """
    if annotated is None:
        return probs
    ann = annotated.to(device=probs.device).bool().clone()
    ann[:, 0] = True
    keep = ann.to(probs.dtype).view(ann.shape + (1,) * (probs.ndim - 2))
    moved = (probs * (1 - keep)).sum(1)
    out = probs * keep
    return torch.cat([(out[:, 0] + moved).unsqueeze(1), out[:, 1:]], 1)


def spatial_sums(probs: torch.Tensor, gt: torch.Tensor):
    """Per (sample, class) intersection, prediction volume, reference volume: three (B, N)."""
    dims = tuple(range(2, probs.ndim))
    return (probs * gt).sum(dims), probs.sum(dims), gt.sum(dims)


def as_sequence(value, n: int, name: str) -> Sequence[float]:
    """A float repeated ``n`` times, or a length-``n`` sequence checked."""
    if isinstance(value, (int, float)):
        return [float(value)] * n
    value = [float(v) for v in value]
    if len(value) != n:
        raise ValueError(f"{name} needs {n} values, got {len(value)}")
    return value
