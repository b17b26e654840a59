"""Keeping what a parent model knew while it learns from a correction.

* :func:`masked_kl_divergence`: knowledge distillation ("Learning without Forgetting", Li and
  Hoiem, ECCV 2016): the new model's softmax is held to the parent's probabilities, here only on
  the voxels a mask names (where the user's correction agrees with the parent, so what the user
  accepted stays as the parent drew it, soft edges included).
* :func:`l2_sp`: the L2-SP penalty ("Explicit inductive bias for transfer learning", Li, Grandvalet
  and Davoine, ICML 2018): the squared distance of the weights from the parent's, instead of
  from zero as weight decay has it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def masked_kl_divergence(logits: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(teacher || softmax(logits))`` summed over classes, averaged over the masked voxels.

    Args:
        logits: (B, N, *S) the student's logits.
        teacher: (B, N, *S) the teacher's probabilities (each voxel's sum is one).
        mask: (B, *S) bool, the voxels that count; None: all. No voxel: zero (with a gradient).

    Zero exactly when the student's softmax equals the teacher's on every masked voxel.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    t = teacher.float().clamp_min(0.0)
    kl = (t * (torch.log(t.clamp_min(1e-8)) - log_p)).sum(1)
    if mask is None:
        return kl.mean()
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1.0)


def l2_sp(params: Iterable[torch.Tensor], anchors: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum ||w - w0||^2`` over paired parameters and their starting values (a scalar)."""
    total = None
    for p, p0 in zip(params, anchors):
        d = ((p.float() - p0.float()) ** 2).sum()
        total = d if total is None else total + d
    return total if total is not None else torch.zeros(())
