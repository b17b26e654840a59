"""Differentiable region-of-interest recalibration: crop a box to a fixed size, and paste it back.

Both directions are one axis-aligned affine transform applied with ``F.affine_grid`` and
``F.grid_sample`` (``align_corners=False``), so they are differentiable with respect to the image
*and* the box coordinates (L-SNet's recalibration; the 2D/3D analogue of a spatial transformer).

Box convention (all functions here): a box is ``[z0, y0, x0, z1, y1, x1]`` in 3D or
``[y0, x0, y1, x1]`` in 2D, in voxel *edge* coordinates of the tensor it refers to: voxel ``i``
covers ``[i, i + 1)``, so the integer box ``[2, 3, 7, 9]`` is exactly the slice
``image[..., 2:7, 3:9]``. Cropping that box with ``size=(5, 6)`` reproduces the slice up to float
rounding, and pasting the crop back gives exactly zero outside the box. For boxes off the grid, or
a crop size that differs from the box size, pasting is zero at every voxel whose centre lies outside
the box -- see :func:`roi_paste`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _as_size(size, nd: int) -> tuple[int, ...]:
    if isinstance(size, int):
        return (size,) * nd
    size = tuple(int(s) for s in size)
    if len(size) != nd:
        raise ValueError(f"size {size} does not have {nd} entries")
    return size


def expand_boxes(boxes: torch.Tensor, margin: float, min_size: float = 1.0) -> torch.Tensor:
    """Enlarge boxes by ``margin`` times their size on *each* side (so 0.2 makes them 1.4x).

    Args:
        boxes: (..., 2 * nd) boxes ``[lo..., hi...]``.
        margin: relative margin per side, >= 0.
        min_size: sizes are first raised to at least this many voxels (differentiably), so a
            degenerate predicted box still gives a valid transform.

    Returns:
        (..., 2 * nd) boxes with the same centres.
    """
    nd = boxes.shape[-1] // 2
    lo, hi = boxes[..., :nd], boxes[..., nd:]
    centre = (lo + hi) / 2
    half = torch.clamp((hi - lo) / 2, min=min_size / 2) * (1.0 + 2.0 * margin)
    return torch.cat([centre - half, centre + half], dim=-1)


def box_to_theta(boxes: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
    """The ``affine_grid`` matrices that map crop coordinates into the image, one per box.

    With normalised coordinates (``align_corners=False``) ``u = 2 p / S - 1`` for an edge
    coordinate ``p``, a box of centre ``c`` and size ``w`` spans ``u = s v + t`` for crop
    coordinates ``v`` in [-1, 1], with ``s = w / S`` and ``t = 2 c / S - 1``.

    Args:
        boxes: (R, 2 * nd) boxes in voxel edge coordinates, axis order (z, y, x) / (y, x).
        spatial_size: the image's spatial size (nd entries, same axis order).

    Returns:
        theta: (R, nd, nd + 1), rows in ``affine_grid``'s (x, y[, z]) order.
    """
    nd = len(spatial_size)
    if boxes.shape[-1] != 2 * nd:
        raise ValueError(f"boxes need {2 * nd} coordinates for a {nd}D image, got {boxes.shape[-1]}")
    size = torch.as_tensor(spatial_size, dtype=boxes.dtype, device=boxes.device)
    lo, hi = boxes[:, :nd], boxes[:, nd:]
    scale = (hi - lo) / size
    shift = (lo + hi) / size - 1.0
    # affine_grid's coordinate i is tensor axis nd - 1 - i (x is the last axis).
    scale, shift = scale.flip(-1), shift.flip(-1)
    theta = torch.cat([torch.diag_embed(scale), shift.unsqueeze(-1)], dim=-1)
    return theta


def invert_theta(theta: torch.Tensor) -> torch.Tensor:
    """Inverse of the axis-aligned transforms from :func:`box_to_theta`: ``v = (u - t) / s``."""
    nd = theta.shape[-2]
    scale = torch.diagonal(theta[..., :nd], dim1=-2, dim2=-1)
    shift = theta[..., nd]
    return torch.cat([torch.diag_embed(1.0 / scale), (-shift / scale).unsqueeze(-1)], dim=-1)


def roi_crop(image: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor | None,
             size, mode: str = "bilinear") -> torch.Tensor:
    """Resample each box of ``image`` to a fixed ``size`` (zeros outside the image).

    Args:
        image: (B, C, *S) images or feature maps.
        boxes: (R, 2 * nd) boxes in ``image``'s voxel edge coordinates.
        batch_index: (R,) long, the batch item of each box; ``None`` means box r is in item r.
        size: crop size, an int or nd ints.
        mode: ``"bilinear"`` (linear in 2D and 3D; differentiable in the boxes too) or
            ``"nearest"`` (for label maps).

    Returns:
        (R, C, *size) crops.
    """
    nd = image.dim() - 2
    size = _as_size(size, nd)
    src = image if batch_index is None else image.index_select(0, batch_index)
    work = _work_dtype(src)
    theta = box_to_theta(boxes.to(work), image.shape[2:])
    grid = F.affine_grid(theta, [src.shape[0], src.shape[1], *size], align_corners=False)
    out = F.grid_sample(src.to(work), grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.to(src.dtype)


def roi_paste(crops: torch.Tensor, boxes: torch.Tensor, spatial_size: Sequence[int],
              mode: str = "bilinear") -> torch.Tensor:
    """Resample each crop back into its box of a zero image of ``spatial_size`` (the inverse of
    :func:`roi_crop`).

    An on-grid box whose size equals the crop size is pasted exactly (the crop's voxels land on
    the image's voxels). Paste a
    tensor of ones the same way to get each box's (soft-edged) coverage weight.

    Args:
        crops: (R, C, *size).
        boxes: (R, 2 * nd) boxes in the target image's voxel edge coordinates.
        spatial_size: the target image size (nd ints).
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        (R, C, *spatial_size).
    """
    spatial_size = tuple(int(s) for s in spatial_size)
    work = _work_dtype(crops)
    theta = invert_theta(box_to_theta(boxes.to(work), spatial_size))
    grid = F.affine_grid(theta, [crops.shape[0], crops.shape[1], *spatial_size], align_corners=False)
    pasted = F.grid_sample(crops.to(work), grid, mode=mode, padding_mode="border", align_corners=False)
    return (pasted * box_mask(boxes, spatial_size).to(work)).to(crops.dtype)


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    """Sampling precision: at least float32, since bfloat16/float16 grids are off by up to a
    voxel at these sizes. Results are cast back to the input's dtype."""
    return torch.promote_types(t.dtype, torch.float32)


def box_mask(boxes: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
    """(R, 1, *spatial_size) boolean masks of the voxels whose centres lie inside each box."""
    nd = len(spatial_size)
    boxes = boxes.detach().to(torch.float32)
    mask = None
    for ax, n in enumerate(spatial_size):
        centres = torch.arange(n, device=boxes.device, dtype=boxes.dtype) + 0.5
        inside = (centres >= boxes[:, ax:ax + 1]) & (centres <= boxes[:, nd + ax:nd + ax + 1])  # (R, n)
        shape = [boxes.shape[0]] + [1] * nd
        shape[1 + ax] = n
        inside = inside.reshape(shape)
        mask = inside if mask is None else mask & inside
    return mask.unsqueeze(1)
