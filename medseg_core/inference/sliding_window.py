"""Sliding-window prediction with Gaussian blending, batched windows and bounded memory.

Windows overlap by ``overlap`` of the patch size; each window's softmax is weighted by a Gaussian
(sigma = patch/8, nnU-Net's and MONAI's choice) so window borders, where a network sees the least
context, count least. The blending is numpy on the CPU: the window function decides where and in
what precision the network runs (PyTorch on any device, or OpenVINO without PyTorch at all), and
hands back each batch's logits, so the accumulators hold one case on the CPU whatever the device.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np


@lru_cache(maxsize=8)
def gaussian_importance(patch_size: tuple[int, ...], sigma_scale: float = 0.125) -> np.ndarray:
    """A float32 Gaussian weight map of the patch size, maximum 1, minimum clamped above zero."""
    w = np.ones((), dtype=np.float64)
    for n in patch_size:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        w = w[..., None] * np.exp(-0.5 * (x / (sigma_scale * n)) ** 2)
    w = np.maximum(w / w.max(), 1e-3).astype(np.float32)
    w.flags.writeable = False  # shared by every call through the cache
    return w


STEP_SLACK = 0.05
"""How far, as a share of one step, the windows' even spacing may exceed the overlap's step
before another window is added."""


def window_starts(size: int, patch: int, overlap: float, slack: float = STEP_SLACK) -> list[int]:
    """Start indices covering [0, size) with windows of ``patch`` (size >= patch), evenly spaced
    at most a step of ``patch * (1 - overlap)`` apart, or up to ``slack`` of a step more where
    that saves a window: the full-size chest CT's 161 slices in windows of 64 took five windows
    for a step of 32.3 against 32 (four now, overlap 0.495); none of the 33 HNOAR validation
    cases changes.

    >>> window_starts(161, 64, 0.5), window_starts(161, 64, 0.5, slack=0.0)
    ([0, 32, 65, 97], [0, 24, 48, 73, 97])
    """
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = max(2, int(np.ceil((size - patch) / step - slack)) + 1)  # two at least: the axis is longer
    return sorted({int(round(i * (size - patch) / (n - 1))) for i in range(n)})


STRETCH = 0.125
"""How much longer than the trained window an axis may be and still run in one window."""


def stretched_patch(patch: tuple[int, ...], spatial, stretch: float = STRETCH, multiple=16) -> tuple[int, ...]:
    """The window for a volume of ``spatial`` voxels: the trained ``patch``, except that an axis
    a little longer than it (by at most ``stretch`` of it) runs in one window as long as the axis,
    rounded up to ``multiple`` (the network's down-sampling factor; one per axis or one for all),
    where two windows would overlap on all but a few voxels and cost twice the network's time. An
    axis shorter than the patch keeps it (the volume is padded, as before).

    >>> stretched_patch((64, 96, 128), (154, 76, 133))
    (64, 96, 144)
    >>> stretched_patch((64, 96, 128), (154, 76, 145))
    (64, 96, 128)
    """
    out = []
    multiples = multiple if isinstance(multiple, (tuple, list)) else (multiple,) * len(patch)
    for p, n, m in zip(patch, spatial, multiples):
        grown = -(-int(n) // int(m)) * int(m)
        out.append(grown if p < n and grown <= p * (1 + stretch) else int(p))
    return tuple(out)


def fitted_patch(patch: Sequence[int], spatial: Sequence[int]) -> tuple[int, ...]:
    """The window for a volume of ``spatial`` (z, y, x) voxels: per axis the volume's extent
    rounded up to a multiple of the largest power of two that divides every side of the trained
    window (the networks down-sample by two, so their total factor divides it), and never more
    than the window.

    >>> fitted_patch((64, 96, 128), (44, 28, 28))
    (64, 32, 32)
    >>> fitted_patch((1, 160, 160), (30, 50, 170))
    (1, 64, 160)
    """
    sides = [int(p) for p in patch if int(p) > 1]
    g = math.gcd(*sides) if sides else 1
    step = g & -g
    return tuple(int(p) if p == 1 else min(int(p), -(-int(s) // step) * step) for p, s in zip(patch, spatial))


def downsampling(card) -> tuple[int, ...] | None:
    """Per spatial axis, the factor a U-Net-family network (``features``, optional ``strides``)
    down-samples by, so a window it runs must be a multiple of it (exported to OpenVINO the size
    matching of odd inputs is fixed at export); None for other networks (they keep the card's window).

    >>> from types import SimpleNamespace as N
    >>> downsampling(N(spatial_dims=3, network=N(kwargs={"features": [16, 32, 64, 128, 256]})))
    (16, 16, 16)
    >>> downsampling(N(spatial_dims=3, network=N(kwargs={"features": [4, 8, 16], "strides": [[1, 2, 2], 2]})))
    (2, 4, 4)
    """
    kw = card.network.kwargs
    kw = kw.get("base", {}).get("kwargs", kw) if "base" in kw else kw  # a routed network: its parent's
    if "features" not in kw:
        return None
    strides = kw.get("strides") or [2] * (len(kw["features"]) - 1)
    out = [1] * card.spatial_dims
    for s in strides:
        for axis, f in enumerate(s if isinstance(s, (list, tuple)) else [s] * card.spatial_dims):
            out[axis] *= int(f)
    return tuple(out)


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax along ``axis``, into a new float32 array (``logits`` is left as it is)."""
    # the copy and the shift in one pass: copying first, then subtracting, read the logits twice
    out = np.subtract(logits, logits.max(axis=axis, keepdims=True), dtype=np.float32)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


def sliding_window_predict(
    image: np.ndarray,
    predictor: Callable[..., np.ndarray],
    patch_size: tuple[int, ...],
    num_classes: int,
    overlap: float = 0.5,
    batch_size: int = 4,
    progress: Callable[[float], None] | None = None,
    num_extra: int = 0,
    with_starts: bool = False,
    weighted: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Softmax probabilities of a whole image by blended windows.

    Args:
        image: (C, *S) float32 array of one case, any spatial size S (padded with its minimum
            where smaller than a patch).
        predictor: maps a (B, C, *patch) float32 array to (B, num_classes + num_extra, *patch)
            logits (an array); it runs the network where and how it likes.
        patch_size: window size, same length as S.
        progress: called with the fraction of windows done.
        num_extra: trailing predictor channels that are not class logits (a confidence head,
            heatmaps, box distances): blended as they are, without the softmax.
        with_starts: call ``predictor(batch, starts)`` with each window's start in ``image``'s
            voxels (one tuple per window; negative where the image was padded), for predictors
            that place something in the window.
        weighted: maps one window ``(1, C, *patch)`` to its ``(num_classes, *patch)``
            probabilities already multiplied by ``gaussian_importance(patch)``, where a runtime
            computes both in its own graph (:meth:`~.runtime.OpenVinoWindows.weighted`): used
            instead of ``predictor``, so no logits come back. Not with ``num_extra`` or
            ``with_starts``.

    Returns:
        (num_classes + num_extra, *S) float32: class probabilities that sum to one, then the
        blended extra channels.
    """
    if weighted is not None and (num_extra or with_starts):
        raise ValueError("weighted windows carry class probabilities only")
    image = np.asarray(image, dtype=np.float32)
    spatial = tuple(image.shape[1:])
    pad = [max(0, p - s) for s, p in zip(spatial, patch_size)]
    if any(pad):
        image = np.pad(image, [(0, 0)] + [(p // 2, p - p // 2) for p in pad], constant_values=float(image.min()))
    full = tuple(image.shape[1:])
    starts = [window_starts(s, p, overlap) for s, p in zip(full, patch_size)]
    boxes = list(itertools.product(*starts))
    weight = gaussian_importance(tuple(patch_size))
    acc = np.zeros((num_classes + num_extra, *full), dtype=np.float32)
    norm = np.zeros(full, dtype=np.float32)
    for b0 in range(0, len(boxes), batch_size):
        chunk = boxes[b0:b0 + batch_size]
        sl = [tuple(slice(s, s + p) for s, p in zip(box, patch_size)) for box in chunk]
        if weighted is not None:  # the runtime's own softmax times the weight, window by window
            for s in sl:
                acc[(slice(None),) + s] += weighted(image[(slice(None),) + s][None])
        else:
            batch = np.stack([image[(slice(None),) + s] for s in sl])
            if with_starts:
                logits = predictor(batch, [tuple(s - p // 2 for s, p in zip(box, pad)) for box in chunk])
            else:
                logits = predictor(batch)
            logits = np.asarray(logits, dtype=np.float32)
            probs = softmax(logits[:, :num_classes])
            probs *= weight  # in place: a product per window was a fresh 25 MB array to fault in
            for i, s in enumerate(sl):
                acc[(slice(None, num_classes),) + s] += probs[i]
                if num_extra:
                    acc[(slice(num_classes, None),) + s] += logits[i, num_classes:] * weight
        for s in sl:
            norm[s] += weight
        if progress is not None:
            progress(min(1.0, (b0 + len(chunk)) / len(boxes)))
    acc /= norm
    if any(pad):
        crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad, spatial))
        acc = acc[(slice(None),) + crop]
    return np.ascontiguousarray(acc)
