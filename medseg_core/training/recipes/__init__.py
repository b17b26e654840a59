"""Training recipes: each paper's loss and training procedure, chosen by name in the config.

========== ======================================================== ===========================
name       method                                                   file
========== ======================================================== ===========================
dice_ce    Dice + cross-entropy (the baseline)                      :mod:`.losses_only`
focal_dice focal + Dice (the control for NSFL)                      :mod:`.losses_only`
pgd_nsfl   PGD-UNet: focal, then noise-suppression focal, + Dice    :mod:`.losses_only`
godc       LFAM + GODC: gradient-optimised Dice (+ CE)              :mod:`.losses_only`
focusnet   FocusNet: S-Net, SOL-Net, SOS-Nets, then joint           :mod:`.focusnet`
lsnet      L-SNet: L-Net update, then whole network on a region     :mod:`.lsnet`
dan        DAN: confidence network and segmentation, alternating    :mod:`.dan`
finetune   fine-tuning on corrections: Dice + CE, encoder frozen    :mod:`.finetune`
========== ======================================================== ===========================
"""

from __future__ import annotations

from .base import FocalDice, Recipe
from .dan import DANAdversarial
from .finetune import Finetune
from .focusnet import FocusNetStages
from .losses_only import GODC, PGDNSFL, DiceCE, FocalDiceRecipe
from .lsnet import LSNetAlternating

RECIPES = {r.name: r for r in (DiceCE, FocalDiceRecipe, PGDNSFL, GODC, FocusNetStages, LSNetAlternating, DANAdversarial,
                                   Finetune)}


def build_recipe(name: str, **kwargs) -> Recipe:
    """The recipe called ``name``, built with the config's ``recipe_kwargs``."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name](**kwargs)


__all__ = ["RECIPES", "FocalDice", "Recipe", "build_recipe"]
