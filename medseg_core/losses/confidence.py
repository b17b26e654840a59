"""Losses of the difficulty-aware network with confidence learning (DAN).

* :class:`ConfidenceWeightedCE` (FCE): the segmentation network's cross-entropy, weighted per voxel
  by ``(1 - M)^beta`` where ``M`` is the confidence network's map -- hard (low-confidence) voxels
  count more. ``M`` is detached, and each batch item uses its *own* map (the public 3D code used
  item 0's map for the whole batch; see notes/methods.md).
* :func:`confidence_bce`: the confidence network's loss, BCE with the map on the ground truth
  towards 1 and on the prediction towards 0.
* :func:`adversarial_loss`: the segmentation network's term pushing the confidence of its own
  prediction towards 1, weighted 0.005 (the paper; the 2D port used 0.05).

A typical step: ``probs = softmax(seg_logits)``; confidence network loss
``confidence_bce(D(x, onehot(y)), D(x, probs.detach()))``; segmentation loss
``FCE(seg_logits, y, sigmoid(D(x, probs)).detach()) + dice + adversarial_loss(D(x, probs))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import as_float, check_reduction, log_pt, reduce


def confidence_weights(confidence: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """``(1 - M)^beta`` per voxel, detached, with M clamped to [0, 1]; same shape as ``confidence``.

    >>> import torch
    >>> confidence_weights(torch.tensor([0.0, 0.5, 1.0])).tolist()
    [1.0, 0.25, 0.0]
    """
    return (1 - as_float(confidence.detach()).clamp(0, 1)) ** beta


class ConfidenceWeightedCE(nn.Module):
    """Confidence-weighted cross-entropy ``-(1 - M)^beta log p_t`` per voxel (FCE).

    Args:
        beta: exponent of the weight, default 2.
        reduction: "mean" over voxels (a plain mean of the weighted terms, not divided by the sum
            of the weights), "sum", or "none" for the map (B, *S).

    Shapes:
        logits (B, N, *S); target (B, *S) integer; confidence (B, 1, *S) or (B, *S) in [0, 1]
        (the *sigmoid* of the confidence network's logits; detached here); annotated (B, N) bool,
        optional (marginal likelihood for background voxels, as ``marginal_cross_entropy``).

    With ``M = 0`` everywhere it is the cross-entropy:

    >>> import torch, torch.nn.functional as F
    >>> lg, t = torch.randn(2, 3, 4), torch.randint(0, 3, (2, 4))
    >>> bool(torch.isclose(ConfidenceWeightedCE()(lg, t, torch.zeros(2, 1, 4)), F.cross_entropy(lg, t)))
    True
    """

    def __init__(self, beta: float = 2.0, reduction: str = "mean"):
        super().__init__()
        self.beta = float(beta)
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, confidence: torch.Tensor,
                annotated: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of logits against labels, weighted by each item's own confidence map."""
        if confidence.ndim == logits.ndim:
            if confidence.shape[1] != 1:
                raise ValueError(f"confidence must have one channel, got shape {tuple(confidence.shape)}")
            confidence = confidence[:, 0]
        if confidence.shape != target.shape:
            raise ValueError(f"confidence {tuple(confidence.shape)} does not match target {tuple(target.shape)}")
        lp = log_pt(logits, target, annotated)
        loss = -confidence_weights(confidence, self.beta).to(lp) * lp
        return reduce(loss, self.reduction)


def confidence_bce(conf_logits_gt: torch.Tensor, conf_logits_pred: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The confidence network's loss: ``BCE(gt -> 1) + BCE(pred -> 0)`` on logits.

    Args:
        conf_logits_gt: (B, 1, *S) confidence logits for the image with the one-hot ground truth.
        conf_logits_pred: (B, 1, *S) confidence logits for the image with the (detached)
            prediction.
        reduction: of each BCE term ("mean" or "sum"; "none" gives the per-voxel sum of the two maps
            when the shapes agree).

    Returns:
        the sum of the two terms.

    >>> import torch
    >>> round(confidence_bce(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2)).item(), 6)  # 2 log 2
    1.386294
    """
    check_reduction(reduction)
    real = as_float(conf_logits_gt)
    fake = as_float(conf_logits_pred)
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real), reduction=reduction)
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake), reduction=reduction))


def adversarial_loss(conf_logits_pred: torch.Tensor, weight: float = 0.005, reduction: str = "mean") -> torch.Tensor:
    """The segmentation network's adversarial term ``weight * BCE(pred -> 1)`` on confidence logits.

    Args:
        conf_logits_pred: (B, 1, *S) confidence logits of the image with the (not detached)
            prediction; gradients flow back into the segmentation network.
        weight: default 0.005 (the paper).
        reduction: of the BCE.

    >>> import torch
    >>> round(adversarial_loss(torch.zeros(1, 1, 3), weight=1.0).item(), 6)  # log 2
    0.693147
    """
    check_reduction(reduction)
    x = as_float(conf_logits_pred)
    return weight * F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction=reduction)
