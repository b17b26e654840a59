"""Dice variants: generalised Dice (Sudre 2017), GODC (union-weighted per-sample Dice) and DAN's
organ-attention Dice (FDice, weights from a running per-class Dice).

Shared conventions (those of :class:`~medseg_core.losses.dice.DiceLoss`): input (B, N, *S) logits
(``softmax=True``) or probabilities, target (B, *S) integer labels, ``annotated`` (B, N) bool for
partially contoured cases, ``smooth_nr``/``smooth_dr`` added to numerator/denominator, ``batch`` to
pool the sums over the batch before the ratio, ``reduction`` "mean" | "sum" | "none".

Partial annotation here uses the marginal model: the probabilities of the classes not annotated in
a case are added to that case's background channel (so predicting an uncontoured organ where the
label says background is not punished) and those (case, class) pairs are left out. Labels of
unannotated classes must not occur in the target.

Float64 inputs stay float64 (gradcheck-able); half precision is promoted to float32.
"""

from __future__ import annotations

import torch

from ._utils import DiceBase, as_float, merge_unannotated, one_hot_like, reduce, spatial_sums

_TINY = 1e-12


def _class_sums(input, target, annotated, softmax):
    """Per-sample intersection, prediction and reference volumes (B, N) and validity (B, N) bool."""
    if input.ndim < 3 or target.shape != input.shape[:1] + input.shape[2:]:
        raise ValueError(f"expected input (B, N, *S) and target (B, *S), got {tuple(input.shape)} "
                         f"and {tuple(target.shape)}")
    probs = torch.softmax(as_float(input), 1) if softmax else as_float(input)
    probs = merge_unannotated(probs, annotated)
    inter, psum, gsum = spatial_sums(probs, one_hot_like(target, input.shape[1], probs))
    if annotated is None:
        valid = torch.ones(inter.shape, dtype=torch.bool, device=inter.device)
    else:
        valid = annotated.to(device=inter.device).bool().clone()
        valid[:, 0] = True  # background (merged) is always defined
    return inter, psum, gsum, valid


def _pool(inter, psum, gsum, valid):
    """Sum the valid (sample, class) entries over the batch: three (N,) and validity (N,)."""
    m = valid.to(inter)
    return (inter * m).sum(0), (psum * m).sum(0), (gsum * m).sum(0), valid.any(0)


def _weighted_dice_loss(inter, psum, gsum, weight, smooth_nr, smooth_dr):
    """``1 - (2 sum_c w I + nr) / (sum_c w (P + G) + dr)`` over the last (class) dimension."""
    num = 2 * (weight * inter).sum(-1) + smooth_nr
    den = (weight * (psum + gsum)).sum(-1) + smooth_dr
    return 1 - num / den


def generalized_dice_weights(gsum: torch.Tensor, present: torch.Tensor | None = None,
                             normalize: bool = True) -> torch.Tensor:
    """Sudre's class weights ``1 / (sum g)^2``, zero for absent classes.

    Args:
        gsum: (..., N) reference volumes per class.
        present: (..., N) bool of the classes to weight; default ``gsum > 0``. Classes not present
            get weight exactly 0 (not infinity, and not MONAI's "largest other weight").
        normalize: divide by the sum over the classes (the loss is scale-invariant in the weights
            except for the smoothing terms, which this keeps meaningful for large volumes).

    Returns:
        (..., N) weights.

    >>> import torch
    >>> generalized_dice_weights(torch.tensor([2., 4., 0.]), normalize=False).tolist()
    [0.25, 0.0625, 0.0]
    >>> generalized_dice_weights(torch.tensor([2., 4., 0.])).tolist()
    [0.800000011920929, 0.20000000298023224, 0.0]
    """
    present = gsum > 0 if present is None else present & (gsum > 0)
    w = torch.where(present, 1.0 / gsum.clamp_min(_TINY) ** 2, torch.zeros_like(gsum))
    if normalize:
        w = w / w.sum(-1, keepdim=True).clamp_min(_TINY)
    return w


class GeneralizedDiceLoss(DiceBase):
    """Generalised Dice loss (Sudre et al. 2017).

    ``1 - 2 sum_c w_c sum_i p_ci g_ci / sum_c w_c sum_i (p_ci + g_ci)`` with
    ``w_c = 1 / (sum_i g_ci)^2`` (normalised to sum to one, see :func:`generalized_dice_weights`).

    Absent classes: a class with no reference voxel (in the sample, or in the batch with
    ``batch=True``) -- or not annotated -- gets weight 0 and is excluded, so its false positives
    are *not* penalised by this loss (pair it with a cross-entropy). A sample with no present class
    at all (possible with ``include_background=False``) has loss 0 and is excluded from "mean".

    Args:
        include_background: count class 0 (Sudre's formulation includes it).
        softmax: apply softmax to the input (else the input is probabilities).
        batch: pool the sums (and hence the weights) over the batch, as NiftyNet did; then the
            loss is one number. Else one loss per sample.
        smooth_nr, smooth_dr: added to numerator and denominator.
        reduction: "mean", "sum" or "none" ((B,) without ``batch``; 0-d with it).

    Shapes:
        input (B, N, *S); target (B, *S); annotated (B, N) bool, optional.

    Two present classes with volumes 2 and 2 and a perfect prediction give 0:

    >>> import torch
    >>> probs = torch.tensor([[[1., 1., 0., 0.], [0., 0., 1., 1.]]])  # (B=1, N=2, S=4)
    >>> GeneralizedDiceLoss(softmax=False)(probs, torch.tensor([[0, 0, 1, 1]])).item()
    0.0
    """

    def __init__(self, include_background: bool = True, softmax: bool = True, batch: bool = True,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, reduction: str = "mean"):
        super().__init__(include_background, softmax, smooth_nr, smooth_dr, reduction, batch)

    def forward(self, input: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of input (B, N, *S) against labels (B, *S); see the class docstring."""
        inter, psum, gsum, valid = _class_sums(input, target, annotated, self.softmax)
        if self.batch:
            inter, psum, gsum, valid = _pool(inter, psum, gsum, valid)
        if not self.include_background:
            inter, psum, gsum, valid = inter[..., 1:], psum[..., 1:], gsum[..., 1:], valid[..., 1:]
        w = generalized_dice_weights(gsum, valid)
        any_present = (w > 0).any(-1)
        loss = _weighted_dice_loss(inter, psum, gsum, w, self.smooth_nr, self.smooth_dr)
        return reduce(loss, self.reduction, any_present.to(loss))


def godc_weights(unions: torch.Tensor, mode: str = "minmax", mask: torch.Tensor | None = None) -> torch.Tensor:
    """GODC's per-sample weights from the unions, detached.

    Args:
        unions: (B,) per-sample union volumes.
        mode: "minmax": ``1 + (U_i - min U) / (max U - min U)`` in [1, 2]; "mean": ``U_i / mean U``.
            One sample, equal unions (or a zero mean) give weights exactly 1.
        mask: (B,) bool of the samples that take part in min/max/mean (others get weight 1).

    Returns:
        (B,) weights without gradient.

    >>> import torch
    >>> godc_weights(torch.tensor([1., 3.])).tolist(), godc_weights(torch.tensor([5.])).tolist()
    ([1.0, 2.0], [1.0])
    >>> godc_weights(torch.tensor([1., 3.]), mode="mean").tolist()
    [0.5, 1.5]
    """
    u = unions.detach()
    m = torch.ones_like(u, dtype=torch.bool) if mask is None else mask.to(device=u.device).bool()
    if mode == "minmax":
        lo = torch.where(m, u, torch.full_like(u, float("inf"))).min()
        hi = torch.where(m, u, torch.full_like(u, float("-inf"))).max()
        rng = hi - lo
        ok = m & torch.isfinite(rng) & (rng > 0)
        w = torch.where(ok, 1 + (u - lo) / torch.where(ok, rng, torch.ones_like(rng)), torch.ones_like(u))
    elif mode == "mean":
        mean = (u * m).sum() / m.sum().clamp_min(1)
        ok = m & (mean > 0)
        w = torch.where(ok, u / torch.where(ok, mean, torch.ones_like(mean)), torch.ones_like(u))
    else:
        raise ValueError(f"mode must be 'minmax' or 'mean', got {mode!r}")
    return w


class GODCLoss(DiceBase):
    """Union-weighted per-sample Dice loss (GODC): ``w_i (1 - Dice_i)``.

    ``Dice_i`` is sample i's soft Dice averaged over its included classes (foreground by default;
    unannotated classes skipped); each class Dice is ``(2 I + nr) / (P + G + dr)``, so a class absent
    from the sample scores 1 only when it is not predicted. The union ``U_i`` is the soft union
    ``sum_c (P_ic + G_ic - I_ic)`` over the same classes. The plain Dice gradient shrinks like
    ``1 / U``, which under-trains large (or badly over-segmented) samples; ``w_i`` from
    :func:`godc_weights` (detached, batch-normalised) compensates. A batch of one, or equal unions,
    gives ``w = 1``: the plain Dice loss.

    Args:
        mode: "minmax" (default, weights in [1, 2]) or "mean" (``U_i / mean U``).
        include_background: count class 0 (default False).
        softmax: apply softmax to the input.
        smooth_nr, smooth_dr: Dice smoothing.
        reduction: "mean" over the samples, "sum", or "none" (B,).

    Shapes:
        input (B, N, *S); target (B, *S); annotated (B, N) bool, optional.
    """

    def __init__(self, mode: str = "minmax", include_background: bool = False, softmax: bool = True,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, reduction: str = "mean"):
        super().__init__(include_background, softmax, smooth_nr, smooth_dr, reduction)
        if mode not in ("minmax", "mean"):
            raise ValueError(f"mode must be 'minmax' or 'mean', got {mode!r}")
        self.mode = mode
        self.last_weights: torch.Tensor | None = None

    def forward(self, input: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of input (B, N, *S) against labels (B, *S); ``last_weights`` keeps the (B,) weights."""
        inter, psum, gsum, valid = _class_sums(input, target, annotated, self.softmax)
        if not self.include_background:
            inter, psum, gsum, valid = inter[:, 1:], psum[:, 1:], gsum[:, 1:], valid[:, 1:]
        m = valid.to(inter)
        dice_c = (2 * inter + self.smooth_nr) / (psum + gsum + self.smooth_dr)
        count = m.sum(1)
        dice = (dice_c * m).sum(1) / count.clamp_min(1)
        sample_ok = count > 0
        union = ((psum + gsum - inter) * m).sum(1)
        w = godc_weights(union, self.mode, sample_ok)
        self.last_weights = w
        return reduce(w * (1 - dice), self.reduction, sample_ok.to(dice))


class OrganAttentionDiceLoss(DiceBase):
    """DAN's organ-attention ("focal") Dice loss: a generalised Dice whose class weights are
    ``(1 - dsc_c)^r`` with ``dsc_c`` a *running* per-class Dice.

    ``1 - (2 sum_c w_c I_c + nr) / (sum_c w_c (P_c + G_c) + dr)`` with ``w_c`` normalised to sum to
    one over the included, annotated classes. Classes absent from the reference keep their weight,
    so their false positives are penalised (unlike :class:`GeneralizedDiceLoss`).

    Running Dice: the buffer ``running_dice`` (N,) is an exponential moving average of the batch's
    detached per-class Dice (pooled over the batch), updated at the start of each call in training
    mode (``self.training``), BatchNorm-style: ``running = (1 - momentum) * running + momentum * dice``.
    A class's first observation initialises it; only classes present (and annotated) in the batch
    are updated. Before a class is seen its running Dice is 0, i.e. weight 1. In eval mode nothing
    is updated. ``(1 - dsc)`` is clamped at 1e-3 so that weights never all vanish.

    ``r = 2`` by default: the DAN paper's organ-level weighting is not in either public repository
    (notes/methods.md); 2 matches the focal exponent gamma = 2 and the confidence weighting
    ``(1 - M)^2`` used elsewhere in the same method.

    Args:
        num_classes: N, including background (sizes the buffers).
        r: exponent of the weights.
        momentum: weight of the new batch Dice in the running average.
        include_background: count class 0 (default False).
        softmax: apply softmax to the input.
        batch: pool the sums over the batch (one loss) or one loss per sample.
        smooth_nr, smooth_dr: Dice smoothing.
        reduction: "mean", "sum" or "none" ((B,) without ``batch``; 0-d with it).
    """

    def __init__(self, num_classes: int, r: float = 2.0, momentum: float = 0.1, include_background: bool = False,
                 softmax: bool = True, batch: bool = True, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 reduction: str = "mean"):
        super().__init__(include_background, softmax, smooth_nr, smooth_dr, reduction, batch)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must lie in (0, 1], got {momentum}")
        self.num_classes = num_classes
        self.r = float(r)
        self.momentum = float(momentum)
        self.register_buffer("running_dice", torch.zeros(num_classes))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def class_weights(self) -> torch.Tensor:
        """Current un-normalised weights ``(1 - running_dice)^r`` (N,)."""
        return (1 - self.running_dice).clamp_min(1e-3) ** self.r

    @torch.no_grad()
    def _update(self, inter, psum, gsum, valid):
        i, p, g, v = _pool(inter.detach(), psum.detach(), gsum.detach(), valid)
        dice = ((2 * i + self.smooth_nr) / (p + g + self.smooth_dr)).to(self.running_dice)
        present = (v & (g > 0)).to(self.running_dice.device)
        ema = (1 - self.momentum) * self.running_dice + self.momentum * dice
        new = torch.where(self.seen, ema, dice)
        self.running_dice.copy_(torch.where(present, new, self.running_dice))
        self.seen |= present

    def forward(self, input: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of input (B, N, *S) against labels (B, *S); see the class docstring."""
        if input.shape[1] != self.num_classes:
            raise ValueError(f"built for {self.num_classes} classes, input has {input.shape[1]}")
        inter, psum, gsum, valid = _class_sums(input, target, annotated, self.softmax)
        if self.training:
            self._update(inter, psum, gsum, valid)
        if self.batch:
            inter, psum, gsum, valid = _pool(inter, psum, gsum, valid)
        w = self.class_weights().to(inter) * valid.to(inter)
        if not self.include_background:
            inter, psum, gsum, w = inter[..., 1:], psum[..., 1:], gsum[..., 1:], w[..., 1:]
        any_valid = (w > 0).any(-1)
        w = w / w.sum(-1, keepdim=True).clamp_min(_TINY)
        loss = _weighted_dice_loss(inter, psum, gsum, w, self.smooth_nr, self.smooth_dr)
        return reduce(loss, self.reduction, any_valid.to(loss))
