"""Preprocessing that training and inference share, and the way back to the input grid.

The steps, in order, each recorded in the model card's ``preprocessing``:

1. reorient to a canonical orientation (``"LPS"``: identity direction) so a network always sees
   anatomy the same way whatever the input's direction cosines; this is a pure permutation/flip,
   with no interpolation;
2. crop to the body's bounding box (CT: voxels above -500 HU) plus a margin;
3. resample to the model's spacing (linear for images, nearest for labels), skipped when the
   spacing already matches;
4. normalise intensities per channel (:mod:`medseg_core.data.normalize`).

Going back, class probabilities on the model grid are resampled onto the input's own grid one
class at a time (linear), and the argmax is kept on the fly, so memory stays bounded by two
input-sized arrays whatever the number of classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .normalize import body_mask, normalize_channels
from .preprocess_config import PreprocessConfig

@dataclass
class Grid:
    """The model-space grid a case was preprocessed onto (identity-free: keeps direction)."""

    origin: tuple
    spacing: tuple
    direction: tuple
    size: tuple  # (x, y, z)

    def image(self, array_zyx: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array_zyx)
        img.SetOrigin(self.origin)
        img.SetSpacing(self.spacing)
        img.SetDirection(self.direction)
        return img

    def sub_grid(self, box_zyx: tuple[slice, ...]) -> "Grid":
        """The grid of the voxel box ``box_zyx`` (slices in (z, y, x) order) of this grid."""
        lo = np.array([b.start for b in box_zyx[::-1]], dtype=float)  # (i, j, k)
        origin = np.asarray(self.origin) + np.reshape(self.direction, (3, 3)) @ (lo * np.asarray(self.spacing))
        return Grid(tuple(float(v) for v in origin), tuple(self.spacing), tuple(self.direction),
                    tuple(int(b.stop - b.start) for b in box_zyx[::-1]))


@dataclass
class Preprocessed:
    """A case on the model grid: ``image`` (C, z, y, x) float32; ``label`` (z, y, x) uint8 or None."""

    image: np.ndarray
    label: np.ndarray | None
    grid: Grid


def bbox_from_mask(mask: np.ndarray, margin=0, min_count: int = 5) -> tuple[slice, ...] | None:
    """Bounding box of a mask as slices (array order), ignoring planes with fewer than
    ``min_count`` voxels (isolated noise in the air), grown by ``margin`` voxels per axis (one
    value or one per axis); None when no plane qualifies."""
    margin = [int(margin)] * mask.ndim if np.isscalar(margin) else list(margin)
    slices = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        hits = mask.any(axis=other) if min_count <= 1 else mask.sum(axis=other) >= min_count
        idx = np.flatnonzero(hits)
        if idx.size == 0:
            return None
        lo = max(0, int(idx[0]) - margin[ax])
        hi = min(mask.shape[ax], int(idx[-1]) + 1 + margin[ax])
        slices.append(slice(lo, hi))
    return tuple(slices)


def _crop(img: sitk.Image, box: tuple[slice, ...]) -> sitk.Image:
    # box is in array (z, y, x) order; SimpleITK indexes (x, y, z).
    lo = [int(s.start) for s in reversed(box)]
    size = [int(s.stop - s.start) for s in reversed(box)]
    return sitk.RegionOfInterest(img, size, lo)


MAX_MODEL_VOXELS = 1 << 28
"""The most voxels an image may have on the model grid (a float32 copy is 1 GiB): more means a wrong
spacing, not a larger patient."""


def _check_grid_size(size, extent_mm, spacing) -> None:
    """Refuses a model grid of more than ``MAX_MODEL_VOXELS`` (a wrong spacing, not a larger patient)."""
    if float(np.prod(size)) > MAX_MODEL_VOXELS:
        extent = " x ".join(f"{e:.4g}" for e in extent_mm)
        raise InputError(f"the image spans {extent} mm, {int(np.prod(size)):,} voxels at the model's spacing (at most "
                         f"{MAX_MODEL_VOXELS:,}); check its voxel spacing {tuple(float(s) for s in spacing)}")


def _resample(img: sitk.Image, spacing, interp) -> sitk.Image:
    old_sp = np.array(img.GetSpacing())
    new_sp = np.array(spacing, dtype=float)
    if np.allclose(old_sp, new_sp, rtol=1e-4, atol=1e-6):
        return img
    size = np.maximum(1, np.round(np.array(img.GetSize()) * old_sp / new_sp))
    _check_grid_size(size, np.array(img.GetSize()) * old_sp, old_sp)
    size = size.astype(int)
    # Keep the physical centre of the first voxel's corner: origin shifts by half a voxel change.
    d = np.array(img.GetDirection()).reshape(3, 3)
    origin = np.array(img.GetOrigin()) + d @ ((new_sp - old_sp) / 2.0)
    return sitk.Resample(img, [int(s) for s in size], sitk.Transform(), interp, origin.tolist(),
                         new_sp.tolist(), img.GetDirection(), 0.0, img.GetPixelID())


OBLIQUE_INTERP = sitk.sitkBSpline
"""Straightening an oblique image: cubic B-spline (on HNOAR case hn_203 rotated 20 degrees it kept
0.731 mean Dice against linear's 0.709; the axis-aligned spacing change stays linear)."""


def is_oblique(img: sitk.Image, tol: float = 1e-3) -> bool:
    """The grid's axes are rotated away from the world axes (after reorientation, whatever is not
    the identity)."""
    return float(np.abs(np.reshape(img.GetDirection(), (3, 3)) - np.eye(3)).max()) > tol


def straighten(img: sitk.Image, spacing, interp, fill: float | None = None) -> sitk.Image:
    """``img`` resampled onto the axis-aligned grid of ``spacing`` that covers it: one interpolation.
    Voxels outside the image take ``fill`` (default: the image's minimum, air for CT)."""
    new_sp = np.asarray(spacing, dtype=float)
    rot = np.reshape(img.GetDirection(), (3, 3))
    size = np.asarray(img.GetSize(), dtype=float)
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in size], indexing="ij")).reshape(3, -1).T
    phys = np.asarray(img.GetOrigin()) + (rot @ (corners * np.asarray(img.GetSpacing())).T).T
    lo, hi = phys.min(0), phys.max(0)
    out_size = np.maximum(1, np.ceil((hi - lo) / new_sp - 1e-6))
    _check_grid_size(out_size, hi - lo, img.GetSpacing())
    if fill is None:
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(img)
        fill = stats.GetMinimum()
    origin = lo + new_sp / 2.0
    return sitk.Resample(img, [int(s) for s in out_size], sitk.Transform(), interp, origin.tolist(),
                         new_sp.tolist(), np.eye(3).ravel().tolist(), float(fill), img.GetPixelID())


class Preprocessor:
    """Applies a :class:`PreprocessConfig` to images (and labels) and maps results back."""

    def __init__(self, config: PreprocessConfig):
        self.config = config

    def geometric(self, images: list[sitk.Image], label: sitk.Image | None = None):
        """Steps 1-3. Returns (images on the model grid, label or None)."""
        cfg = self.config
        images = [sitk.DICOMOrient(im, cfg.orientation) for im in images]
        if label is not None:
            label = sitk.DICOMOrient(label, cfg.orientation)
        if cfg.crop_to_body:
            arr = sitk.GetArrayViewFromImage(images[0])
            mask = body_mask(arr, cfg.modality)
            sp = images[0].GetSpacing()[::-1]
            margin = tuple(int(np.ceil(cfg.margin_mm / s)) for s in sp)
            box = bbox_from_mask(mask, margin)
            if box is not None:
                images = [_crop(im, box) for im in images]
                label = _crop(label, box) if label is not None else None
        if cfg.resample_oblique and is_oblique(images[0]):
            spacing = cfg.spacing if cfg.spacing is not None else images[0].GetSpacing()
            images = [straighten(sitk.Cast(im, sitk.sitkFloat32), spacing, OBLIQUE_INTERP) for im in images]
            if label is not None:
                label = straighten(label, spacing, sitk.sitkNearestNeighbor, fill=0.0)
        elif cfg.spacing is not None:
            images = [_resample(sitk.Cast(im, sitk.sitkFloat32), cfg.spacing, sitk.sitkLinear)
                      if not np.allclose(im.GetSpacing(), cfg.spacing, rtol=1e-4) else im for im in images]
            if label is not None:
                label = _resample(label, cfg.spacing, sitk.sitkNearestNeighbor)
        return images, label

    def normalize_array(self, raw: np.ndarray) -> np.ndarray:
        """Step 4 on a (C, z, y, x) array."""
        return normalize_channels(raw, self.config.normalization, self.config.modality)

    def __call__(self, images: list[sitk.Image], label: sitk.Image | None = None) -> Preprocessed:
        imgs, lab = self.geometric(images, label)
        raw = np.stack([sitk.GetArrayFromImage(im).astype(np.float32) for im in imgs])
        grid = Grid(imgs[0].GetOrigin(), imgs[0].GetSpacing(), imgs[0].GetDirection(), imgs[0].GetSize())
        lab_arr = sitk.GetArrayFromImage(lab).astype(np.uint8) if lab is not None else None
        return Preprocessed(self.normalize_array(raw), lab_arr, grid)


def covered_region(grid: Grid, reference: sitk.Image, margin: int = 1,
                   within=None) -> tuple[tuple[slice, ...], sitk.Image] | None:
    """The part of the reference grid that the model grid covers (and, if given, that lies in
    the voxel box ``within = [i0, j0, k0, i1, j1, k1]``).

    Returns ``(slices in (z, y, x) order, an empty image with that sub-grid's geometry)``, or None
    when they do not overlap. Resampling only there, and filling the rest with the default, gives
    the same result as resampling the whole reference grid, for a fraction of the work when the
    body fills little of the field of view.
    """
    size = np.array(grid.size, dtype=float)
    rot = np.reshape(grid.direction, (3, 3))
    pts = []
    for corner in np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in size], indexing="ij")).reshape(3, -1).T:
        phys = np.array(grid.origin) + rot @ (corner * np.array(grid.spacing))
        pts.append(reference.TransformPhysicalPointToContinuousIndex(phys.tolist()))
    pts = np.array(pts)
    ref_size = np.array(reference.GetSize())
    lo = np.clip(np.floor(pts.min(0)).astype(int) - margin, 0, ref_size)
    hi = np.clip(np.ceil(pts.max(0)).astype(int) + 1 + margin, 0, ref_size)
    if within is not None:
        lo = np.maximum(lo, np.asarray(within[:3], dtype=int))
        hi = np.minimum(hi, np.asarray(within[3:], dtype=int))
    if np.any(hi <= lo):
        return None
    sub = sitk.Image([int(v) for v in hi - lo], sitk.sitkUInt8)
    sub.SetSpacing(reference.GetSpacing())
    sub.SetDirection(reference.GetDirection())
    sub.SetOrigin(reference.TransformIndexToPhysicalPoint([int(v) for v in lo]))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1])), sub


def to_input_grid(array_zyx: np.ndarray, grid: Grid, reference: sitk.Image, default: float = 0.0,
                  interp=sitk.sitkLinear, index_box=None) -> np.ndarray:
    """Resample one model-grid map (z, y, x) onto the reference image's grid; outside -> default.

    With ``index_box = [i0, j0, k0, i1, j1, k1]`` only that box of the reference grid is
    computed and returned (an array of the box's (z, y, x) shape).
    """
    if index_box is None:
        shape, offset = reference.GetSize()[::-1], np.zeros(3, dtype=int)
    else:
        lo, hi = np.asarray(index_box[:3], dtype=int), np.asarray(index_box[3:], dtype=int)
        shape, offset = tuple((hi - lo)[::-1]), lo
    region = covered_region(grid, reference, within=index_box)
    if region is None:
        return np.full(shape, default, dtype=np.float32)
    box, sub = region
    box = tuple(slice(b.start - o, b.stop - o) for b, o in zip(box, offset[::-1]))
    src = grid.image(np.ascontiguousarray(array_zyx, dtype=np.float32))
    resampled = sitk.Resample(src, sub, sitk.Transform(), interp, float(default), sitk.sitkFloat32)
    if tuple(b.stop - b.start for b in box) == tuple(shape):  # the model grid covers it all (a full-size CT)
        return sitk.GetArrayFromImage(resampled)  # one full-size array, not three
    out = np.full(shape, default, dtype=np.float32)
    out[box] = sitk.GetArrayViewFromImage(resampled)  # a view: ``resampled`` outlives the copy
    return out


def probabilities_to_labels(probs: np.ndarray, grid: Grid, reference: sitk.Image) -> np.ndarray:
    """Resample class probabilities (N, z, y, x) onto the reference grid and take the argmax.

    Only where a class can win: the background over the part of the reference that the model
    grid's foreground box covers (the box around the model voxels where a foreground class wins,
    grown by one voxel), each foreground class over its own box (around the model voxels where it
    is ahead of the background, grown by one voxel). Outside a class's box every model voxel that
    linear interpolation reads has the background at least as high, so any convex combination of
    them does too: the class cannot win there, and the restriction is exact. On a full-size CT it
    cut this step from 3.3 s to 0.8 s (the foreground box), then to a fraction (the class boxes).
    Memory is one float32 and one uint8 array of the reference's size plus the running maximum.
    Outside the model grid the background wins; ties go to the lower class, as in ``np.argmax``.
    """
    labels = np.zeros(reference.GetSize()[::-1], dtype=np.uint8 if probs.shape[0] < 256 else np.uint16)
    fg_box = bbox_from_mask(np.argmax(probs, axis=0) != 0, margin=1, min_count=1)
    region = covered_region(grid.sub_grid(fg_box), reference) if fg_box is not None else None
    if region is None:
        return labels
    box, sub = region
    within = [b.start for b in box[::-1]] + [b.stop for b in box[::-1]]  # the region, (i, j, k) order
    best = _resampled(probs[0], fg_box, grid, sub, 1.0)
    sub_labels = labels[box]
    for c in range(1, probs.shape[0]):
        c_box = bbox_from_mask(probs[c] > probs[0], margin=1, min_count=1)
        c_region = covered_region(grid.sub_grid(c_box), reference, within=within) if c_box is not None else None
        if c_region is None:
            continue
        c_ref, c_sub = c_region
        inner = tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(c_ref, box))
        pc, top, lab = _resampled(probs[c], c_box, grid, c_sub, 0.0), best[inner], sub_labels[inner]
        lab[pc > top] = c
        np.maximum(top, pc, out=top)
    return labels


def _resampled(prob: np.ndarray, box: tuple[slice, ...], grid: Grid, onto: sitk.Image, default: float) -> np.ndarray:
    """One class's probabilities in the model-grid ``box``, linearly resampled onto ``onto``'s grid."""
    src = grid.sub_grid(box).image(np.ascontiguousarray(prob[box], dtype=np.float32))
    out = sitk.Resample(src, onto, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)
