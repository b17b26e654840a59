"""Heatmap losses: FocusNet's SOL-Net MSE and the CornerNet/CenterNet penalty-reduced focal loss
(L-SNet), with the Gaussian target builder.

Heatmaps are (B, K, *S): one channel per organ (SOL-Net) or per class of centre (CenterNet), values
in [0, 1]. ``annotated`` (B, K) bool, where given, leaves out the channels of organs that were not
contoured in a case.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import as_float, as_sequence, check_reduction, reduce


def gaussian_heatmap(shape: Sequence[int], centers, sigma: float | Sequence[float] = 5.0, cutoff: float = 0.01,
                     dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Gaussian heatmap ``max_k exp(-sum_d (x_d - c_kd)^2 / (2 sigma_d^2))``, zeroed below ``cutoff``.

    Args:
        shape: spatial shape (D axes, 2 or 3).
        centers: (K, D) voxel coordinates (index order of ``shape``; may be fractional). K may be 0.
        sigma: in voxels, one value or one per axis (e.g. a small through-plane sigma for
            anisotropic CT). SOL-Net used 5.
        cutoff: values below it become 0 (SOL-Net's 0.01).
        dtype, device: of the result.

    Returns:
        (*shape) map; exactly 1 at an integer centre (CenterNet targets need integer centres).

    >>> h = gaussian_heatmap((1, 5), [[0, 2]], sigma=1.0)
    >>> [round(v, 4) for v in h[0].tolist()]
    [0.1353, 0.6065, 1.0, 0.6065, 0.1353]
    """
    shape = tuple(int(s) for s in shape)
    sig = as_sequence(sigma, len(shape), "sigma")
    c = torch.as_tensor(centers, dtype=torch.float64).reshape(-1, len(shape))
    axes = [torch.arange(s, dtype=torch.float64) for s in shape]
    out = torch.zeros(shape, dtype=torch.float64)
    for center in c:
        d2 = torch.zeros((), dtype=torch.float64)
        for d, (ax, s) in enumerate(zip(axes, sig)):
            view = [1] * len(shape)
            view[d] = shape[d]
            d2 = d2 + ((ax - center[d]) / s).square().view(view)
        out = torch.maximum(out, torch.exp(-0.5 * d2))
    out = torch.where(out < cutoff, torch.zeros_like(out), out)
    return out.to(dtype=dtype, device=device)


def _channel_mask(annotated, ref):
    if annotated is None:
        return None
    return annotated.to(device=ref.device, dtype=ref.dtype).view(annotated.shape + (1,) * (ref.ndim - 2))


class HeatmapMSELoss(nn.Module):
    """Mean squared error between predicted and target heatmaps (SOL-Net).

    Args:
        sigmoid: apply a sigmoid to the input first (else it is taken as the heatmap).
        reduction: "mean" over the voxels of the counted channels, "sum", or "none" (B, K, *S).

    Shapes:
        input and target (B, K, *S); annotated (B, K) bool, optional.
    """

    def __init__(self, sigmoid: bool = False, reduction: str = "mean"):
        super().__init__()
        self.sigmoid = sigmoid
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of the heatmaps; see the class docstring."""
        if input.shape != target.shape:
            raise ValueError(f"input {tuple(input.shape)} and target {tuple(target.shape)} differ")
        x = as_float(input)
        x = torch.sigmoid(x) if self.sigmoid else x
        loss = (x - as_float(target).to(x)).square()
        return reduce(loss, self.reduction, _channel_mask(annotated, loss))


class CenterNetFocalLoss(nn.Module):
    """Penalty-reduced focal loss of CornerNet/CenterNet on heatmaps.

    With ``p`` the predicted heatmap and ``g`` the Gaussian target (exactly 1 at the peaks):
    at peaks ``-(1 - p)^alpha log p``; elsewhere ``-(1 - g)^beta p^alpha log(1 - p)``; summed and
    divided by the number of peaks (by 1 when there are none).

    Args:
        alpha: focal exponent, default 2.
        beta: penalty-reduction exponent near peaks, default 4.
        sigmoid: the input is logits (uses log-sigmoid, numerically stable); default False, input
            probabilities (clamped to ``[eps, 1 - eps]`` before the logs).
        eps: the clamp for probability input.
        reduction: "mean" = sum / number of peaks (CenterNet's normalisation), "sum", or "none"
            (the unnormalised per-voxel map, B, K, *S).

    Shapes:
        input and target (B, K, *S); annotated (B, K) bool, optional (uncounted channels neither add
        loss nor peaks).

    >>> import torch
    >>> p, g = torch.tensor([[[0.5, 0.5]]]), torch.tensor([[[1.0, 0.0]]])
    >>> round(CenterNetFocalLoss()(p, g).item(), 6)  # 0.25 log 2 + 0.25 log 2
    0.346574
    """

    def __init__(self, alpha: float = 2.0, beta: float = 4.0, sigmoid: bool = False, eps: float = 1e-6,
                 reduction: str = "mean"):
        super().__init__()
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.sigmoid = sigmoid
        self.eps = eps
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of the heatmaps; see the class docstring."""
        if input.shape != target.shape:
            raise ValueError(f"input {tuple(input.shape)} and target {tuple(target.shape)} differ")
        x = as_float(input)
        g = as_float(target).to(x)
        if self.sigmoid:
            p, logp, log1mp = torch.sigmoid(x), F.logsigmoid(x), F.logsigmoid(-x)
        else:
            p = x.clamp(self.eps, 1 - self.eps)
            logp, log1mp = torch.log(p), torch.log1p(-p)
        pos = (g >= 1).to(x)
        pos_term = -(1 - p).pow(self.alpha) * logp
        neg_term = -(1 - g).clamp_min(0).pow(self.beta) * p.pow(self.alpha) * log1mp
        loss = torch.where(pos > 0, pos_term, neg_term)
        mask = _channel_mask(annotated, loss)
        if mask is not None:
            loss, pos = loss * mask, pos * mask
        if self.reduction == "none":
            return loss
        total = loss.sum()
        return total / pos.sum().clamp_min(1) if self.reduction == "mean" else total
