"""Sliding-window prediction with Gaussian blending, batched windows and bounded memory.

Windows overlap by ``overlap`` of the patch size; each window's softmax is weighted by a Gaussian
(sigma = patch/8, nnU-Net's and MONAI's choice) so window borders, where a network sees the least
context, count least. Windows run on ``device`` in batches; the accumulators live on
``accumulate_device`` (the CPU by default), so the GPU holds only one batch of windows.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


@lru_cache(maxsize=8)
def gaussian_importance(patch_size: tuple[int, ...], sigma_scale: float = 0.125) -> torch.Tensor:
    """A Gaussian weight map of the patch size, maximum 1, minimum clamped above zero."""
    axes = []
    for n in patch_size:
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0
        axes.append(torch.exp(-0.5 * (x / (sigma_scale * n)) ** 2))
    w = axes[0]
    for a in axes[1:]:
        w = w[..., None] * a
    w = w / w.max()
    return w.clamp_min(1e-3).float()


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices covering [0, size) with windows of ``patch`` (size >= patch)."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = int(np.ceil((size - patch) / step)) + 1
    return sorted({int(round(i * (size - patch) / (n - 1))) for i in range(n)})


def sliding_window_predict(
    image: torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    patch_size: tuple[int, ...],
    num_classes: int,
    overlap: float = 0.5,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    accumulate_device: str | torch.device = "cpu",
    amp: bool = False,
    progress: Callable[[float], None] | None = None,
    num_extra: int = 0,
    with_starts: bool = False,
) -> torch.Tensor:
    """Softmax probabilities of a whole image by blended windows.

    Args:
        image: (C, *S) one case, any spatial size S (padded internally if smaller than a patch).
        predictor: maps (B, C, *patch) on ``device`` to logits (B, num_classes + num_extra, *patch).
        patch_size: window size, same length as S.
        amp: bf16 autocast for the predictor (CUDA, or a CPU with native bf16: the caller decides).
        progress: called with the fraction of windows done.
        num_extra: trailing predictor channels that are not class logits (a confidence head,
            heatmaps, box distances): blended as they are, without the softmax.
        with_starts: call ``predictor(batch, starts)`` with each window's start in ``image``'s
            voxels (one tuple per window; negative where the image was padded), for predictors
            that place something in the window.

    Returns:
        (num_classes + num_extra, *S) float32 on ``accumulate_device``: class probabilities that
        sum to one, then the blended extra channels.
    """
    spatial = tuple(image.shape[1:])
    pad = [max(0, p - s) for s, p in zip(spatial, patch_size)]
    if any(pad):
        pads = []
        for p in reversed(pad):
            pads += [p // 2, p - p // 2]
        image = F.pad(image, pads, mode="constant", value=float(image.min()))
    full = tuple(image.shape[1:])
    starts = [window_starts(s, p, overlap) for s, p in zip(full, patch_size)]
    boxes = list(itertools.product(*starts))
    weight = gaussian_importance(tuple(patch_size)).to(accumulate_device)
    acc = torch.zeros((num_classes + num_extra, *full), dtype=torch.float32, device=accumulate_device)
    norm = torch.zeros(full, dtype=torch.float32, device=accumulate_device)
    dev_type = torch.device(device).type
    with torch.inference_mode():
        for b0 in range(0, len(boxes), batch_size):
            chunk = boxes[b0:b0 + batch_size]
            sl = [tuple(slice(s, s + p) for s, p in zip(box, patch_size)) for box in chunk]
            batch = torch.stack([image[(slice(None),) + s] for s in sl]).to(device, non_blocking=True)
            with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp and dev_type in ("cuda", "cpu")):
                if with_starts:
                    logits = predictor(batch, [tuple(s - p // 2 for s, p in zip(box, pad)) for box in chunk])
                else:
                    logits = predictor(batch)
            logits = logits.float()
            probs = torch.softmax(logits[:, :num_classes], dim=1)
            if num_extra:
                probs = torch.cat([probs, logits[:, num_classes:]], dim=1)
            probs = probs.to(accumulate_device)
            for i, s in enumerate(sl):
                acc[(slice(None),) + s] += probs[i] * weight
                norm[s] += weight
            if progress is not None:
                progress(min(1.0, (b0 + len(chunk)) / len(boxes)))
    acc /= norm
    if any(pad):
        crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad, spatial))
        acc = acc[(slice(None),) + crop]
    return acc.contiguous()
