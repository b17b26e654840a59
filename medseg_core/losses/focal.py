"""Softmax focal loss and PGD-UNet's noise-suppression focal loss (NSFL), with partial annotation.

Both take logits (B, N, *S) and integer labels (B, *S). With ``annotated`` (B, N) the probability of
the true class of a background voxel is the marginal one -- background plus every class not
contoured in that case -- as in :func:`~medseg_core.losses.dice.marginal_cross_entropy`, so a
prediction of an uncontoured organ is not punished.

Notation: ``p_t`` is the (marginal) softmax probability of the labelled class, ``alpha_t`` the weight
of the labelled class (1 without ``alpha``).

* Focal (Lin et al. 2017): ``-alpha_t (1 - p_t)^gamma log p_t``.
* NSFL (PGD-UNet): the same for ``p_t >= eps``; below ``eps`` the modulating factor becomes
  ``((1 - eps)^gamma / eps^beta) p_t^beta``. Both factors equal ``(1 - eps)^gamma`` at ``eps``, so
  the loss is continuous there, and for small ``p_t`` -- voxels the network confidently contradicts,
  likely label noise -- the gradient is much smaller than focal's (it even vanishes as ``p_t -> 0``).
  ``alpha_t`` multiplies *both* branches: the public implementation applies it only in the focal
  branch, which makes the loss jump at ``eps`` unless alpha = 1 (see notes/methods.md).
"""

from __future__ import annotations

import torch
from torch import nn

from ._utils import as_float, check_reduction, class_weights, log_pt, reduce
from .dice import soft_dice_loss


def _per_voxel_parts(logits, target, annotated, alpha, include_background):
    """log p_t (B, *S), alpha_t (B, *S) or None, and the counted-voxel mask (B, *S) or None."""
    if logits.ndim < 3 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"expected logits (B, N, *S) and target (B, *S), got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    lp = log_pt(logits, target, annotated)
    a = class_weights(alpha, logits.shape[1], lp)
    alpha_t = None if a is None else a[target.long()]
    mask = None if include_background else (target != 0).to(lp.dtype)
    return lp, alpha_t, mask


def _one_minus(lp: torch.Tensor) -> torch.Tensor:
    """``1 - p`` from ``log p``, accurate near 1 and clamped at the smallest normal number, so that
    ``(1 - p)^gamma`` has a finite gradient (times ``log p = 0``: zero) even for gamma < 1 at p = 1."""
    return (-torch.expm1(lp)).clamp_min(torch.finfo(lp.dtype).tiny)


class FocalLoss(nn.Module):
    """Softmax focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` per voxel.

    Args:
        gamma: focusing exponent; 0 gives (weighted) cross-entropy.
        alpha: ``None``; a sequence of N per-class weights; or a float ``a`` meaning MONAI's
            ``[1 - a, a, ..., a]``.
        include_background: if False, voxels labelled background contribute zero (the softmax still
            runs over all N classes). As in MONAI, "mean" still divides by the number of all voxels.
        reduction: "mean" over voxels, "sum", or "none" for the per-voxel map (B, *S).

    Shapes:
        logits (B, N, *S); target (B, *S) integer; annotated (B, N) bool, optional.

    Example: two voxels, class probabilities (0.5, 0.5) and (0.8, 0.2), both labelled 0; with
    gamma = 2 the losses are 0.25 log 2 and 0.04 log 1.25, mean 0.09111:

    >>> import math, torch
    >>> logits = torch.tensor([[[0.0, math.log(4.0)], [0.0, 0.0]]])  # (B=1, N=2, S=2)
    >>> round(FocalLoss()(logits, torch.tensor([[0, 0]])).item(), 5)
    0.09111
    """

    def __init__(self, gamma: float = 2.0, alpha=None, include_background: bool = True, reduction: str = "mean"):
        super().__init__()
        self.gamma = float(gamma)
        self.alpha = alpha
        self.include_background = include_background
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of logits (B, N, *S) against labels (B, *S); see the class docstring."""
        lp, alpha_t, mask = _per_voxel_parts(logits, target, annotated, self.alpha, self.include_background)
        loss = -_one_minus(lp).pow(self.gamma) * lp
        if alpha_t is not None:
            loss = loss * alpha_t
        if mask is not None:
            loss = loss * mask
        return reduce(loss, self.reduction)


class NoiseSuppressionFocalLoss(nn.Module):
    """Noise-suppression focal loss (NSFL) of PGD-UNet, continuous at ``eps``.

    Per voxel ``-alpha_t f(p_t) log p_t`` with ``f(p) = (1 - p)^gamma`` for ``p >= eps`` and
    ``f(p) = ((1 - eps)^gamma / eps^beta) p^beta`` for ``p < eps``.

    Switching from focal to NSFL. Early in training almost every voxel has a small ``p_t``, so
    suppressing them from the start would suppress learning. The module therefore holds a boolean
    buffer ``active`` (saved in the state dict, so a resumed run keeps it): while it is False the
    loss is exactly :class:`FocalLoss` with the same ``gamma``/``alpha``. The *trainer* decides
    when to switch, through :meth:`update`, which latches ``active`` to True once either
    ``mean_pt >= switch_threshold`` or ``step >= switch_step`` (whichever is configured).
    ``step`` is in whatever unit the trainer counts (iterations or epochs); ``mean_pt`` is whatever
    running mean of ``p_t`` it keeps -- each forward stores the batch's mean ``p_t`` over the
    counted voxels in ``last_mean_pt`` (a detached 0-d tensor) to help with that. With neither
    ``switch_threshold`` nor ``switch_step`` the loss is NSFL from the start. The branch is chosen
    with ``torch.where``, so no host synchronisation happens in ``forward``.

    Args:
        alpha: per-class weights as in :class:`FocalLoss` (applied in both branches), default None.
        beta: exponent of the suppressed branch, default 0.2.
        gamma: focal exponent, default 2.
        eps: threshold on ``p_t``, default 0.2.
        include_background, reduction: as in :class:`FocalLoss`.
        switch_threshold: activate NSFL once the mean ``p_t`` given to :meth:`update` reaches it
            (e.g. 0.9).
        switch_step: activate NSFL once the step given to :meth:`update` reaches it.

    >>> import torch
    >>> loss = NoiseSuppressionFocalLoss(switch_step=10)
    >>> bool(loss.active), loss.update(step=9), loss.update(step=10), loss.update(step=0)
    (False, False, True, True)
    """

    def __init__(self, alpha=None, beta: float = 0.2, gamma: float = 2.0, eps: float = 0.2,
                 include_background: bool = True, reduction: str = "mean",
                 switch_threshold: float | None = None, switch_step: int | None = None):
        super().__init__()
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        self.alpha = alpha
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.include_background = include_background
        self.reduction = check_reduction(reduction)
        self.switch_threshold = switch_threshold
        self.switch_step = switch_step
        self.register_buffer("active", torch.tensor(switch_threshold is None and switch_step is None))
        self.last_mean_pt: torch.Tensor | None = None

    @property
    def scale(self) -> float:
        """The constant ``(1 - eps)^gamma / eps^beta`` of the suppressed branch."""
        return (1.0 - self.eps) ** self.gamma / self.eps ** self.beta

    @torch.no_grad()
    def update(self, mean_pt: float | torch.Tensor | None = None, step: int | None = None) -> bool:
        """Activate NSFL if a configured switch condition holds; latched. Returns ``active``."""
        if not bool(self.active):
            hit = (self.switch_threshold is not None and mean_pt is not None
                   and float(mean_pt) >= self.switch_threshold)
            hit = hit or (self.switch_step is not None and step is not None and step >= self.switch_step)
            if hit:
                self.active.fill_(True)
        return bool(self.active)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of logits (B, N, *S) against labels (B, *S); see the class docstring."""
        lp, alpha_t, mask = _per_voxel_parts(logits, target, annotated, self.alpha, self.include_background)
        pt = lp.exp()
        focal = _one_minus(lp).pow(self.gamma)
        suppressed = self.scale * torch.exp(self.beta * lp)  # scale * p^beta, safe for tiny p
        use_suppressed = self.active.to(pt.device) & (pt < self.eps)
        loss = -torch.where(use_suppressed, suppressed, focal) * lp
        if alpha_t is not None:
            loss = loss * alpha_t
        with torch.no_grad():
            if mask is None:
                self.last_mean_pt = pt.mean()
            else:
                self.last_mean_pt = (pt * mask).sum() / mask.sum().clamp_min(1)
        if mask is not None:
            loss = loss * mask
        return reduce(loss, self.reduction)


class NSFLDiceLoss(nn.Module):
    """``lambda_ * NSFL + (1 - lambda_) * Dice`` on logits, both aware of ``annotated``.

    The Dice term has exactly the semantics of :class:`~medseg_core.losses.dice.DiceLoss` (softmax
    input, ``include_background``, ``batch``, ``smooth_nr``/``smooth_dr``, unannotated (case, class)
    pairs skipped, mean reduction) but keeps float64 inputs in float64. As in
    :class:`~medseg_core.losses.dice.DiceCELoss`, ``include_background`` applies to the Dice term;
    the NSFL term counts every voxel.

    Args:
        lambda_: weight of NSFL in [0, 1], default 0.5.
        alpha, beta, gamma, eps, switch_threshold, switch_step: of :class:`NoiseSuppressionFocalLoss`.
        include_background, batch, smooth_nr, smooth_dr: of the Dice term.

    Returns a scalar. :meth:`update` and :attr:`active` forward to the NSFL term.
    """

    def __init__(self, lambda_: float = 0.5, alpha=None, beta: float = 0.2, gamma: float = 2.0, eps: float = 0.2,
                 switch_threshold: float | None = None, switch_step: int | None = None,
                 include_background: bool = False, batch: bool = True, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5):
        super().__init__()
        if not 0.0 <= lambda_ <= 1.0:
            raise ValueError(f"lambda_ must lie in [0, 1], got {lambda_}")
        self.lambda_ = float(lambda_)
        self.nsfl = NoiseSuppressionFocalLoss(alpha=alpha, beta=beta, gamma=gamma, eps=eps,
                                              switch_threshold=switch_threshold, switch_step=switch_step)
        self.include_background = include_background
        self.batch = batch
        self.smooth_nr = smooth_nr
        self.smooth_dr = smooth_dr

    @property
    def active(self) -> torch.Tensor:
        return self.nsfl.active

    def update(self, mean_pt=None, step=None) -> bool:
        """See :meth:`NoiseSuppressionFocalLoss.update`."""
        return self.nsfl.update(mean_pt, step)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss of logits (B, N, *S) against labels (B, *S), annotated (B, N) optional."""
        probs = torch.softmax(as_float(logits), 1)
        dice = soft_dice_loss(probs, target, annotated, include_background=self.include_background,
                              batch=self.batch, smooth_nr=self.smooth_nr, smooth_dr=self.smooth_dr)
        return self.lambda_ * self.nsfl(logits, target, annotated) + (1 - self.lambda_) * dice
