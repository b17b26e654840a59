"""Intensity normalisation per modality, recorded in the model card so inference repeats it.

* CT: clip to the 0.5 and 99.5 percentiles of the foreground (labelled) voxels of the training
  set, then subtract their mean and divide by their standard deviation (nnU-Net's CT scheme).
* anything else (MR, ...): z-score per volume over voxels inside the body mask (or all voxels).
"""

from __future__ import annotations

import numpy as np

CT_BODY_HU = -500.0


def ct_statistics(foreground_samples: np.ndarray) -> dict:
    """The CT scheme's parameters from foreground intensities pooled over the training cases."""
    x = np.asarray(foreground_samples, dtype=np.float64).ravel()
    if x.size == 0:
        return {"scheme": "ct", "clip": [-1000.0, 1000.0], "mean": 0.0, "std": 500.0}
    lo, hi = np.percentile(x, [0.5, 99.5])
    c = np.clip(x, lo, hi)
    return {"scheme": "ct", "clip": [float(lo), float(hi)], "mean": float(c.mean()),
            "std": float(max(c.std(), 1e-3))}


def scheme_for(modality: str) -> dict:
    """The default scheme of a channel before statistics are known."""
    return {"scheme": "ct"} if modality.upper() == "CT" else {"scheme": "zscore"}


def normalize(channel: np.ndarray, params: dict, mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise one channel (any shape) to float32.

    >>> normalize(np.array([-2000., 0., 2000.]), {"scheme": "ct", "clip": [-1000, 1000], "mean": 0, "std": 500})
    array([-2.,  0.,  2.], dtype=float32)
    """
    x = channel.astype(np.float32, copy=True)
    scheme = params.get("scheme", "zscore")
    if scheme == "ct":
        lo, hi = params["clip"]
        np.clip(x, lo, hi, out=x)
        x -= params["mean"]
        x /= params["std"]
        return x
    if scheme == "zscore":
        ref = x[mask] if mask is not None and mask.any() else x
        mean, std = float(ref.mean()), float(ref.std())
        x -= mean
        x /= max(std, 1e-6)
        return x
    if scheme == "none":
        return x
    raise ValueError(f"unknown normalisation scheme {scheme!r}")


def body_mask(array_zyx: np.ndarray, modality: str) -> np.ndarray:
    """Voxels inside the body: CT above -500 HU; otherwise above 10% of the 99th percentile."""
    if modality.upper() == "CT":
        return array_zyx > CT_BODY_HU
    hi = np.percentile(array_zyx, 99)
    return array_zyx > array_zyx.min() + 0.1 * (hi - array_zyx.min())


def normalize_channels(raw: np.ndarray, norms: list[dict], modality: str) -> np.ndarray:
    """Normalise a (C, *S) array channel by channel; z-scores use the body mask of channel 0."""
    if len(norms) != raw.shape[0]:
        raise ValueError(f"{raw.shape[0]} channels but {len(norms)} normalisation entries")
    mask = body_mask(raw[0], modality) if any(n.get("scheme") == "zscore" for n in norms) else None
    return np.stack([normalize(raw[c], norms[c], mask) for c in range(raw.shape[0])])
