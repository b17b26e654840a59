"""Losses, with one argument vocabulary in the manner of MONAI."""

from .box import diou_loss
from .confidence import ConfidenceWeightedCE, adversarial_loss, confidence_bce, confidence_weights
from .dice import DiceCELoss, DiceLoss, deep_supervision_loss, marginal_cross_entropy, soft_dice_loss
from .dice_variants import (GeneralizedDiceLoss, GODCLoss, OrganAttentionDiceLoss, generalized_dice_weights,
                            godc_weights)
from .distill import l2_sp, masked_kl_divergence
from .focal import FocalLoss, NoiseSuppressionFocalLoss, NSFLDiceLoss
from .heatmap import CenterNetFocalLoss, HeatmapMSELoss, gaussian_heatmap

__all__ = [
    "CenterNetFocalLoss", "ConfidenceWeightedCE", "DiceCELoss", "DiceLoss", "FocalLoss", "GODCLoss",
    "GeneralizedDiceLoss", "HeatmapMSELoss", "NSFLDiceLoss", "NoiseSuppressionFocalLoss", "OrganAttentionDiceLoss",
    "adversarial_loss", "confidence_bce", "confidence_weights", "deep_supervision_loss", "diou_loss",
    "gaussian_heatmap", "generalized_dice_weights", "godc_weights", "l2_sp", "marginal_cross_entropy",
    "masked_kl_divergence", "soft_dice_loss",
]
