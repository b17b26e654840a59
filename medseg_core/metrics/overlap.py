"""Overlap and volume metrics of binary masks.

Masks are numpy arrays of any shape (typically (z, y, x)); non-boolean arrays are read as
``mask != 0``. Prediction and reference must have the same shape.

Empty-mask conventions (as MONAI's ``compute_dice(ignore_empty=True)``): every metric here is
NaN when the reference is empty, whatever the prediction, since the structure is absent and there
is nothing to score (a false positive shows in the prediction's volume instead). With a non-empty
reference and an empty prediction, Dice, Jaccard, recall and precision are 0.0 (precision is 0/0
there; it is scored 0 so that a missed structure is not dropped from means).
"""

from __future__ import annotations

import math

import numpy as np


def _counts(pred_mask, ref_mask) -> tuple[int, int, int]:
    """Returns (|pred & ref|, |pred|, |ref|) in voxels."""
    pred, ref = np.asarray(pred_mask).astype(bool, copy=False), np.asarray(ref_mask).astype(bool, copy=False)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}")
    return int(np.count_nonzero(pred & ref)), int(np.count_nonzero(pred)), int(np.count_nonzero(ref))


def dice(pred_mask, ref_mask) -> float:
    """Dice coefficient 2|P&R| / (|P| + |R|).

    Args:
        pred_mask: predicted mask, any shape.
        ref_mask: reference mask, same shape.

    Returns:
        Dice in [0, 1]; NaN if the reference is empty.

    >>> dice(np.array([1, 1, 1, 0]), np.array([0, 1, 1, 1]))
    0.6666666666666666
    """
    tp, p, r = _counts(pred_mask, ref_mask)
    return math.nan if r == 0 else 2.0 * tp / (p + r)


def dice_per_value(pred, ref, values) -> dict[int, float]:
    """Dice of each label value that is present in ``ref``; labelmaps as numpy arrays or torch
    tensors (on any device) of the same shape. Values absent from ``ref`` are left out.

    >>> dice_per_value(np.array([1, 1, 2, 0]), np.array([1, 2, 2, 0]), [1, 2, 3])
    {1: 0.6666666666666666, 2: 0.6666666666666666}
    """
    out = {}
    for v in values:
        r = ref == v
        n = int(r.sum())
        if n:
            p = pred == v
            out[int(v)] = 2.0 * int((p & r).sum()) / (int(p.sum()) + n)
    return out


def jaccard(pred_mask, ref_mask) -> float:
    """Jaccard index (IoU) |P&R| / |P|R|; NaN if the reference is empty.

    >>> jaccard(np.array([1, 1, 1, 0]), np.array([0, 1, 1, 1]))
    0.5
    """
    tp, p, r = _counts(pred_mask, ref_mask)
    return math.nan if r == 0 else tp / (p + r - tp)


def precision(pred_mask, ref_mask) -> float:
    """Precision (positive predictive value) |P&R| / |P|.

    Returns:
        NaN if the reference is empty; 0.0 if only the prediction is empty.
    """
    tp, p, r = _counts(pred_mask, ref_mask)
    if r == 0:
        return math.nan
    return 0.0 if p == 0 else tp / p


def recall(pred_mask, ref_mask) -> float:
    """Recall (sensitivity) |P&R| / |R|; NaN if the reference is empty."""
    tp, _, r = _counts(pred_mask, ref_mask)
    return math.nan if r == 0 else tp / r


def volume_difference(pred_mask, ref_mask) -> float:
    """Signed relative volume difference (|P| - |R|) / |R| (unitless, e.g. 0.1 = 10 % too large).

    Relative, so spacing cancels out; use ``volume_ml`` for volumes in millilitres.

    Returns:
        The difference in [-1, inf); NaN if the reference is empty.

    >>> volume_difference(np.ones(11), np.r_[np.ones(10), 0])
    0.1
    """
    _, p, r = _counts(pred_mask, ref_mask)
    return math.nan if r == 0 else (p - r) / r


def overlap_metrics(pred_mask, ref_mask) -> dict[str, float]:
    """Dice, Jaccard, precision, recall and relative volume difference from one count.

    Returns:
        ``{"dice", "jaccard", "precision", "recall", "volume_difference"}`` as the functions above.
    """
    tp, p, r = _counts(pred_mask, ref_mask)
    if r == 0:
        return dict.fromkeys(("dice", "jaccard", "precision", "recall", "volume_difference"), math.nan)
    return {"dice": 2.0 * tp / (p + r), "jaccard": tp / (p + r - tp), "precision": 0.0 if p == 0 else tp / p,
            "recall": tp / r, "volume_difference": (p - r) / r}


def volume_ml(mask, spacing) -> float:
    """Volume of a mask in millilitres.

    Args:
        mask: a mask, shape (z, y, x) or any.
        spacing: voxel size in mm, one value per axis (any order: only the product is used).
    """
    return float(np.count_nonzero(mask)) * float(np.prod(np.asarray(spacing, dtype=float))) / 1000.0
