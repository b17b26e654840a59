"""Gradient scaling: the identity in the forward pass, a constant factor on the gradient backward.

L-SNet (Xie et al.) decays the gradient that flows from its segmentation network back into its
localisation network by 0.1. ``0.1 * x + 0.9 * x.detach()`` does nearly that but is not
bit-identical in the forward pass (rounding); the autograd function below is exact both ways.
A factor of -1 gives the gradient-reversal layer of domain-adversarial training.
"""

from __future__ import annotations

import torch
from torch import nn


class _GradScaleFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = float(factor)
        return x.view_as(x)  # a view: forward is the input bit for bit

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Return ``x`` unchanged; in the backward pass multiply its gradient by ``factor``.

    Args:
        x: any tensor.
        factor: gradient multiplier (1 = plain identity, 0 = stop-gradient, -1 = reversal).

    Returns:
        A tensor equal to ``x`` bit for bit (a view of it).
    """
    if factor == 1.0 or not x.requires_grad:
        return x
    return _GradScaleFn.apply(x, factor)


class GradScale(nn.Module):
    """Module form of :func:`grad_scale` (no parameters)."""

    def __init__(self, factor: float = 0.1):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_scale(x, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
