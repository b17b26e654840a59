"""Planar contours of a labelmap's slices and back, as RT Structure Sets carry them.

Both directions work in a slice's voxel indices ``(i, j)`` (column, row), voxel centres at whole
numbers, and agree on one rule, the even-odd rule at voxel centres:

* :func:`mask_to_polygons` traces the 0.5 level of the binary slice with marching squares
  (``contourpy``, matplotlib's contouring library): every ring passes half-way between a voxel
  inside and its neighbour outside, and a hole is a ring of its own inside its organ's ring.
  Points on straight runs are dropped (the ring is the same without them).
* :func:`polygons_to_mask` marks a voxel whose centre lies inside an odd number of rings. That is
  how treatment-planning systems read several contours of one structure on a slice (a ring
  inside another is a hole); no library this package depends on fills polygons at voxel centres
  with that rule (Pillow and OpenCV draw the outline's voxels too), hence the few lines here.

Traced by the first and filled by the second, a slice comes back voxel for voxel (tested).
"""

from __future__ import annotations

import numpy as np


def mask_to_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """The rings around a 2D mask's voxels (``mask[j, i]``, rows then columns).

    Returns:
        A list of ``(N, 2)`` float arrays of ``(i, j)`` points, each a closed ring with its first
        point not repeated; outer rings and holes alike.
    """
    import contourpy

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    padded = np.pad(mask, 1).astype(np.float64)  # every ring closes, also at the image's edge
    gen = contourpy.contour_generator(z=padded, name="serial", line_type="Separate", corner_mask=False)
    rings = []
    for line in gen.lines(0.5):
        ring = np.asarray(line, dtype=np.float64)[:-1] - 1.0  # contourpy closes a ring by repeating its start
        rings.append(_without_straight_runs(ring))
    return rings


def _without_straight_runs(ring: np.ndarray) -> np.ndarray:
    before, after = ring - np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0) - ring
    turns = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9
    return ring[turns] if turns.sum() >= 3 else ring


def polygons_to_mask(rings, shape: tuple[int, int]) -> np.ndarray:
    """The voxels of a ``(rows, columns)`` slice whose centres lie inside an odd number of
    ``rings`` (each an ``(N, 2)`` array of ``(i, j)`` points, closed implicitly).

    >>> polygons_to_mask([np.array([[-0.5, -0.5], [1.5, -0.5], [1.5, 0.5], [-0.5, 0.5]])], (2, 3)).astype(int)
    array([[1, 1, 0],
           [0, 0, 0]])
    """
    rows, cols = shape
    edges = [np.concatenate([p, np.roll(p, -1, axis=0)], axis=1)
             for p in (np.asarray(r, dtype=np.float64) for r in rings) if len(p) >= 3]
    if not edges:
        return np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = np.concatenate(edges).T
    keep = y0 != y1  # a horizontal edge crosses no row of centres
    x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
    # an edge crosses the rows j with min(y) <= j < max(y) (half-open: a vertex on a row counts once)
    first = np.clip(np.ceil(np.minimum(y0, y1)), 0, rows).astype(np.int64)
    stop = np.clip(np.ceil(np.maximum(y0, y1)), 0, rows).astype(np.int64)
    count = np.maximum(stop - first, 0)
    edge = np.repeat(np.arange(len(x0)), count)
    j = np.repeat(first, count) + np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    x = x0[edge] + (j - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    # a crossing at x flips every centre i > x; a row's crossings are even in number, so the
    # centres right of an odd number of them are those left of an odd number
    toggles = np.zeros((rows, cols + 1), dtype=np.int32)
    np.add.at(toggles, (j, np.clip(np.floor(x).astype(np.int64) + 1, 0, cols)), 1)
    return (np.cumsum(toggles, axis=1)[:, :cols] % 2) == 1
