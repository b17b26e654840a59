"""All metrics of one case, per label, from two labelmaps."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from medseg_core.metrics.overlap import overlap_metrics, volume_ml
from medseg_core.metrics.surface import surface_metrics

METRIC_NAMES: tuple[str, ...] = ("dice", "jaccard", "precision", "recall", "volume_difference",
                                 "volume_pred_ml", "volume_ref_ml", "hd95", "hd", "assd")
"""Keys of each label's dict returned by ``compute_case_metrics``, in report order."""


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crops two masks to the bounding box of their union (no metric here depends on the rest)."""
    union = pred | ref
    if not union.any():
        return pred[tuple(slice(0, 1) for _ in pred.shape)], ref[tuple(slice(0, 1) for _ in ref.shape)]
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return pred[tuple(box)], ref[tuple(box)]


def compute_case_metrics(pred_labelmap_array, ref_labelmap_array, spacing_zyx,
                         label_values: Iterable[int]) -> dict[int, dict[str, float]]:
    """Computes every metric for each label of one case.

    Args:
        pred_labelmap_array: predicted labelmap, integer array of shape (z, y, x) (or (y, x)).
        ref_labelmap_array: reference labelmap, same shape.
        spacing_zyx: voxel size in mm in numpy axis order (``image.GetSpacing()[::-1]``).
        label_values: the label values to score (0 is allowed but is background).

    Returns:
        ``{value: {metric: float}}`` with the keys of ``METRIC_NAMES``: overlap metrics (unitless),
        ``volume_difference`` relative ((pred - ref) / ref), volumes in ml, distances in mm. See
        ``overlap`` and ``surface`` for the NaN/inf conventions of empty masks.
    """
    pred = np.asarray(pred_labelmap_array)
    ref = np.asarray(ref_labelmap_array)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}")
    spacing = tuple(float(s) for s in spacing_zyx)
    result: dict[int, dict[str, float]] = {}
    for value in label_values:
        p, r = _crop_to_union(pred == value, ref == value)
        metrics = overlap_metrics(p, r)
        metrics.update(volume_pred_ml=volume_ml(p, spacing), volume_ref_ml=volume_ml(r, spacing))
        metrics.update(surface_metrics(p, r, spacing))
        result[int(value)] = {name: float(metrics[name]) for name in METRIC_NAMES}
    return result
