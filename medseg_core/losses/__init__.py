"""Losses, with one argument vocabulary in the manner of MONAI."""

from .dice import DiceCELoss, DiceLoss, deep_supervision_loss, marginal_cross_entropy

__all__ = ["DiceCELoss", "DiceLoss", "deep_supervision_loss", "marginal_cross_entropy"]
