"""Training recipes: each paper's loss (and the schedule around it), chosen by name in the config.

A recipe turns a network's :class:`~medseg_core.nets.SegOutput` and the labels of a batch into a
loss, and may react after each step. The trainer does the rest (sampling, optimiser, validation,
checkpoints), the same for every recipe, so methods compare on an equal footing.

* ``dice_ce`` (default): Dice + cross-entropy, deep supervision where the network has it.
* ``pgd_nsfl`` (PGD-UNet): lambda * focal + (1 - lambda) * Dice, switching focal to the
  noise-suppression focal loss once the running mean p_t passes ``switch_threshold`` (or after
  ``switch_step`` steps).
* ``godc`` (GODC + LFAM): the gradient-optimised Dice loss, plus cross-entropy for a stable
  start (a choice: the paper uses GODC alone; ``ce_weight: 0`` restores that).

FocusNet's four stages, L-SNet's alternating updates and the difficulty-aware network's
adversarial confidence learning need their own loops and are not recipes here yet.
"""

from __future__ import annotations

import torch

from ..losses import DiceCELoss, GODCLoss, NSFLDiceLoss, deep_supervision_loss, marginal_cross_entropy


class Recipe:
    """Base recipe: ``loss(out, target, annotated)``; ``after_step(step)``; ``state()`` for logs."""

    name = "base"

    def loss(self, out, target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        pass

    def state(self) -> dict:
        return {}


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


RECIPES = {r.name: r for r in (DiceCE, PGDNSFL, GODC)}


def build_recipe(name: str, **kwargs) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name](**kwargs)
