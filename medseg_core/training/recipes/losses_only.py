"""Recipes that are a loss (and a switch) around the trainer's own step.

* ``dice_ce`` (default): Dice + cross-entropy, deep supervision where the network has it.
* ``pgd_nsfl`` (PGD-UNet): lambda * focal + (1 - lambda) * Dice, switching focal to the
  noise-suppression focal loss once the running mean p_t passes ``switch_threshold`` (or after
  ``switch_step`` steps).
* ``godc`` (GODC + LFAM): the gradient-optimised Dice loss, plus cross-entropy for a stable
  start (a choice: the paper uses GODC alone; ``ce_weight: 0`` restores that).
* ``focal_dice``: focal + Dice, the control against which NSFL is compared.
"""

from __future__ import annotations


from ...losses import DiceCELoss, GODCLoss, NSFLDiceLoss, deep_supervision_loss, marginal_cross_entropy
from .base import FocalDice, Recipe


class DiceCE(Recipe):
    name = "dice_ce"

    def __init__(self, **kw):
        self.fn = DiceCELoss(**kw)

    def loss(self, out, target, annotated):
        return deep_supervision_loss(self.fn, out.logits.float(), [d.float() for d in out.deep_supervision],
                                     target, annotated)


class PGDNSFL(Recipe):
    """PGD-UNet: focal first, NSFL once the network fits most voxels, always with Dice."""

    name = "pgd_nsfl"

    def __init__(self, lambda_: float = 0.5, switch_threshold: float = 0.9, switch_step: int | None = None,
                 eps: float = 0.2, beta: float = 0.2, gamma: float = 2.0, momentum: float = 0.98):
        self.fn = NSFLDiceLoss(lambda_=lambda_, eps=eps, beta=beta, gamma=gamma,
                               switch_threshold=switch_threshold, switch_step=switch_step)
        self.momentum = momentum
        self.mean_pt = None
        self.switched_at = None

    def loss(self, out, target, annotated):
        total = deep_supervision_loss(lambda lg, t, a: self.fn(lg, t, a), out.logits.float(),
                                      [d.float() for d in out.deep_supervision], target, annotated)
        pt = float(self.fn.nsfl.last_mean_pt) if hasattr(self.fn, "nsfl") else None
        if pt is not None:
            self.mean_pt = pt if self.mean_pt is None else self.momentum * self.mean_pt + (1 - self.momentum) * pt
        return total

    def after_step(self, step):
        was = bool(self.fn.active)
        self.fn.update(mean_pt=self.mean_pt, step=step)
        if bool(self.fn.active) and not was:
            self.switched_at = step

    def state(self):
        return {"nsfl_active": bool(self.fn.active), "nsfl_switched_at": self.switched_at,
                "mean_pt": None if self.mean_pt is None else round(self.mean_pt, 4)}


class GODC(Recipe):
    name = "godc"

    def __init__(self, mode: str = "minmax", ce_weight: float = 1.0):
        self.fn = GODCLoss(mode=mode)
        self.ce_weight = ce_weight

    def loss(self, out, target, annotated):
        def one(lg, t, a):
            return self.fn(lg, t, a) + self.ce_weight * marginal_cross_entropy(lg, t, a)

        return deep_supervision_loss(one, out.logits.float(), [d.float() for d in out.deep_supervision],
                                     target, annotated)


class FocalDiceRecipe(Recipe):
    """``focal + Dice``: PGD-UNet's loss without the NSFL switch (the control for NSFL)."""

    name = "focal_dice"

    def __init__(self, gamma: float = 2.0, dice_weight: float = 1.0):
        self.fn = FocalDice(gamma=gamma, dice_weight=dice_weight)

    def loss(self, out, target, annotated):
        return deep_supervision_loss(self.fn, out.logits.float(), [d.float() for d in out.deep_supervision],
                                     target, annotated)
