"""Per-voxel confidence from class probabilities, and the "Low confidence" region.

For networks without a confidence head the score is one minus the normalised entropy of the
class probabilities. The entropy is normalised by ``log 2``, the entropy of a two-way tie, and
the score clipped at 0: a voxel split 50/50 between an organ and its neighbour (the usual doubt,
at boundaries) scores 0, one class at 0.9 scores 0.53, a sure voxel 1. Normalising by
``log N`` instead (``normaliser="classes"``) would put that 50/50 tie at 0.67 with eight classes,
so almost no voxel would fall under a threshold of 0.5 (measured on HNOAR: 0.00% of body voxels;
see docs/results.md). Averaging the probabilities over flipped copies first (``--tta``) makes the
score also reflect how stable the prediction is under mirroring.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..data.preprocess import bbox_from_mask


def entropy_confidence(probs: np.ndarray, normaliser: str = "pair") -> np.ndarray:
    """``1 - H(p) / log(2)`` (or ``/ log(N)`` with ``normaliser="classes"``) per voxel, clipped
    to [0, 1], for probabilities (N, *S); float32.

    >>> [round(float(v), 3) for v in entropy_confidence(np.array([[1.0, 0.5, 0.9], [0.0, 0.5, 0.1]]))]
    [1.0, 0.0, 0.531]
    """
    n = probs.shape[0]
    # a class at a time into two buffers of one class's size: the whole (N, *S) array thrice over
    # (clip, log, product) was 230 MB of fresh memory on a full-size CT, which the kernel has to hand over
    h = np.zeros(probs.shape[1:], dtype=np.result_type(probs.dtype, np.float32))
    term = np.empty_like(h)
    for c in range(n):
        np.clip(probs[c], 1e-12, 1.0, out=term)
        np.log(term, out=term)
        term *= probs[c]
        h -= term
    norm = np.log(2.0) if normaliser == "pair" else np.log(n)
    h /= norm
    np.subtract(1.0, h, out=h)
    return np.clip(h, 0.0, 1.0, out=h).astype(np.float32, copy=False)


def low_confidence_mask(confidence: np.ndarray, labels: np.ndarray, threshold: float = 0.5,
                        spacing_zyx=None, margin_mm: float = 5.0) -> np.ndarray:
    """Voxels under ``threshold`` that are inside the foreground or within ``margin_mm`` of it.

    Args:
        confidence: (z, y, x) confidence map.
        labels: (z, y, x) labelmap of the same shape (0 = background).
        threshold: voxels strictly under it are low-confidence.
        spacing_zyx: voxel spacing in mm, (z, y, x); without it the margin is 2 voxels.
        margin_mm: how far from the foreground a low-confidence voxel may lie.

    Returns:
        A bool (z, y, x) mask.
    """
    low = confidence < threshold
    fg = labels > 0
    if not fg.any() or not low.any():
        return low & fg
    if spacing_zyx is not None:
        radius_zyx = [max(1, int(round(margin_mm / float(s)))) for s in spacing_zyx]
    else:
        radius_zyx = [2, 2, 2]
    # dilate only inside the foreground's bounding box grown by the radius: on a full-size CT the
    # organs fill a small part of the grid and a whole-grid ball dilation cost about a second
    box = bbox_from_mask(fg, margin=radius_zyx, min_count=1)
    img = sitk.GetImageFromArray(fg[box].astype(np.uint8))
    near = np.zeros_like(fg)
    near[box] = sitk.GetArrayViewFromImage(sitk.BinaryDilate(img, radius_zyx[::-1], sitk.sitkBall)) > 0
    return low & near


def mean_per_label(confidence: np.ndarray, labels: np.ndarray, names: dict[int, str]) -> dict[str, float | None]:
    """Mean confidence over the voxels given each label (None where the label is absent)."""
    out = {}
    if 0 in names:
        flat_l, flat_c = labels.ravel(), confidence.ravel()
    else:  # the foreground only: a full-size CT is mostly background and the full pass took a second
        fg = labels > 0
        flat_l, flat_c = labels[fg], confidence[fg]
    sums = np.bincount(flat_l, weights=flat_c, minlength=max(names, default=0) + 1)
    counts = np.bincount(flat_l, minlength=max(names, default=0) + 1)
    for v, name in names.items():
        out[name] = round(float(sums[v] / counts[v]), 4) if counts[v] else None
    return out
