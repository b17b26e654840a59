"""Segmentation metrics on numpy masks, distances in mm from the voxel spacing.

Overlap metrics (``overlap``), surface distances (``surface``; spacing in numpy (z, y, x) order)
and ``compute_case_metrics`` for every label of a pair of labelmaps.
"""

from medseg_core.metrics.case import METRIC_NAMES, compute_case_metrics
from medseg_core.metrics.overlap import (dice, dice_per_value, jaccard, overlap_metrics, precision, recall,
                                         volume_difference, volume_ml)
from medseg_core.metrics.surface import assd, hausdorff_distance, hd95, surface_distances, surface_metrics

__all__ = ["METRIC_NAMES", "assd", "compute_case_metrics", "dice", "dice_per_value", "hausdorff_distance", "hd95",
           "jaccard", "overlap_metrics", "precision", "recall", "surface_distances", "surface_metrics",
           "volume_difference", "volume_ml"]
