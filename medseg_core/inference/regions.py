"""Regions of interest: small organs found in a labelmap, and user boxes in physical space.

Boxes are reported twice: in voxel indices of the input image (``[i0, j0, k0, i1, j1, k1]``,
inclusive-exclusive, SimpleITK's (x, y, z) index order) and in physical LPS millimetres
(``[x0, y0, z0, x1, y1, z1]``, the axis-aligned box around the voxels' corners).
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

from ..data.preprocess import bbox_from_mask


def index_box_to_physical(img: sitk.Image, lo, hi) -> list[float]:
    """The LPS axis-aligned box (x0, y0, z0, x1, y1, z1) around voxels lo..hi-1 (their corners)."""
    corners = [img.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
               for corner in itertools.product(*[(l - 0.5, h - 0.5) for l, h in zip(lo, hi)])]
    pts = np.array(corners)
    return [round(float(v), 3) for v in np.concatenate([pts.min(0), pts.max(0)])]


def physical_box_to_index(img: sitk.Image, box_mm, margin_mm: float = 0.0) -> tuple[list[int], list[int]]:
    """Voxel index range (lo, hi), clipped to the image, covering an LPS box grown by a margin."""
    b = np.asarray(box_mm, dtype=float)
    lo_mm, hi_mm = np.minimum(b[:3], b[3:]) - margin_mm, np.maximum(b[:3], b[3:]) + margin_mm
    pts = np.array([img.TransformPhysicalPointToContinuousIndex(list(map(float, c)))
                    for c in itertools.product(*zip(lo_mm, hi_mm))])
    size = np.array(img.GetSize())
    lo = np.clip(np.floor(pts.min(0) + 0.5).astype(int), 0, size)
    hi = np.clip(np.ceil(pts.max(0) + 0.5).astype(int), 0, size)
    return lo.tolist(), hi.tolist()


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean (z, y, x) mask (empty when the mask is),
    found inside the mask's bounding box only.

    >>> m = np.zeros((1, 4, 8), bool); m[0, :2, :3] = True; m[0, 3, 6:] = True
    >>> int(largest_component(m).sum()), bool(largest_component(m)[0, 3, 7])
    (6, False)
    """
    out = np.zeros(mask.shape, dtype=bool)
    crop = bbox_from_mask(mask, min_count=1)
    if crop is None:
        return out
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(mask[crop].astype(np.uint8)), True))
    out[crop] = sitk.GetArrayViewFromImage(cc) == 1  # relabelled by size: 1 is the largest
    return out


def component_regions(labels: sitk.Image, organs: dict[int, str], probability=None, min_voxels: int = 3,
                      max_per_organ: int = 3) -> list[dict]:
    """Connected components of each small organ's label, largest first.

    Components are found inside each organ's bounding box (on a full-size CT the whole grid took
    seconds).

    Args:
        labels: labelmap on the input grid.
        organs: {label value: name} of the small organs.
        probability: optional ``f(value, index_box) -> (z, y, x) array`` of that class's
            probability over the voxel box ``[i0, j0, k0, i1, j1, k1]`` of the input grid; the
            score is its mean over the component (else the component's share of the organ's
            voxels).
        min_voxels: smaller components are dropped.
        max_per_organ: at most this many components (the largest) per organ.
    """
    regions = []
    arr = sitk.GetArrayViewFromImage(labels)
    for value, name in organs.items():
        organ = arr == value
        crop = bbox_from_mask(organ, min_count=1)
        if crop is None:
            continue
        offset = [s.start for s in crop[::-1]]  # (i, j, k) of the crop's first voxel
        cc = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(organ[crop].astype(np.uint8))),
                                   min_voxels)
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(cc)  # the crop image has unit spacing and zero origin: positions are crop indices
        found = sorted(stats.GetLabels())[:max_per_organ]
        if not found:
            continue
        total = sum(stats.GetNumberOfPixels(k) for k in stats.GetLabels())
        cc_arr = sitk.GetArrayViewFromImage(cc)
        prob = None
        if probability is not None:
            prob = probability(value, offset + [o + s.stop - s.start for o, s in zip(offset, crop[::-1])])
        for k in found:
            x, y, z, sx, sy, sz = stats.GetBoundingBox(k)
            lo = [x + offset[0], y + offset[1], z + offset[2]]
            hi = [lo[0] + sx, lo[1] + sy, lo[2] + sz]
            score = float(prob[cc_arr == k].mean()) if prob is not None else stats.GetNumberOfPixels(k) / total
            centre_index = [c + o for c, o in zip(stats.GetCentroid(k), offset)]
            regions.append({
                "label": name, "value": int(value), "source": "components", "score": round(score, 4),
                "voxels": int(stats.GetNumberOfPixels(k)),
                "center_mm": [round(float(c), 3) for c in labels.TransformContinuousIndexToPhysicalPoint(centre_index)],
                "box_mm": index_box_to_physical(labels, lo, hi),
                "center_index": [int(round(c)) for c in centre_index],
                "box_index": lo + hi,
            })
    return regions


def box_mask(reference: sitk.Image, box_index) -> np.ndarray:
    """A (z, y, x) boolean array with the voxel box ``[i0, j0, k0, i1, j1, k1]`` set."""
    m = np.zeros(reference.GetSize()[::-1], dtype=bool)
    i0, j0, k0, i1, j1, k1 = box_index
    m[k0:k1, j0:j1, i0:i1] = True
    return m


def _grid_point(grid, index_zyx) -> np.ndarray:
    """Physical point of a continuous (z, y, x) index on a model grid."""
    idx = np.asarray(index_zyx, dtype=float)[::-1]
    return np.asarray(grid.origin) + np.reshape(grid.direction, (3, 3)) @ (idx * np.asarray(grid.spacing))


def _grid_box_mm(grid, lo_zyx, hi_zyx) -> list[float]:
    """The LPS box around the continuous-index box [lo, hi] of a model grid."""
    pts = np.array([_grid_point(grid, c) for c in itertools.product(*zip(lo_zyx, hi_zyx))])
    return [round(float(v), 3) for v in np.concatenate([pts.min(0), pts.max(0)])]


def _slice_run(on: np.ndarray, at: int) -> tuple[int, int]:
    """First and last index of the run of True values of ``on`` around index ``at``."""
    lo = hi = at
    while lo > 0 and on[lo - 1]:
        lo -= 1
    while hi < on.size - 1 and on[hi + 1]:
        hi += 1
    return lo, hi


def network_regions(heatmaps: np.ndarray, distances: np.ndarray | None, heads, grid, reference: sitk.Image,
                    names: dict[int, str], labels_model: np.ndarray | None = None) -> list[dict]:
    """Regions from a network's own heads, on the model grid, reported on the input grid.

    FocusNet (``distances`` None): one region per small organ whose heatmap peak passes the
    network's threshold, a box of the organ's ROI size around the peak. L-SNet: one region per
    connected component of each heatmap above its threshold, the box decoded from the distances
    at the component's peak.
    """
    regions = []
    for k in range(heatmaps.shape[0]):
        hm, threshold = heatmaps[k], heads.threshold_of(k)
        if distances is None:
            peaks = [np.unravel_index(int(np.argmax(hm)), hm.shape)] if hm.max() > threshold else []
        else:
            cc = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray((hm > threshold).astype(np.uint8))))
            peaks = []
            for c in range(1, int(cc.max()) + 1):
                flat = np.where(cc.ravel() == c, hm.ravel(), -np.inf)
                peaks.append(np.unravel_index(int(np.argmax(flat)), hm.shape))
        for n, p in enumerate(peaks):
            p = np.array(p)
            value = heads.heatmap_classes[k] if heads.heatmap_classes else 0
            if value == 0 and labels_model is not None:  # a shared heatmap: the label predicted there
                value = int(labels_model[tuple(p)])
            # voxel centres covered, as continuous (z, y, x) indices; a 2D model's boxes lack the
            # slice axis, which then spans the run of slices where this region shows
            lo, hi = p.astype(float), p.astype(float)
            if distances is None:
                half = np.array(heads.roi_sizes[k], dtype=float) / 2
                first = p.size - half.size
                lo[first:], hi[first:] = p[first:] - half, p[first:] + half - 1
                source = "heatmap"
                shows = hm > threshold
            else:
                nd = distances.shape[0] // 2
                first = p.size - nd
                d = distances[(slice(None),) + tuple(p)]
                lo[first:], hi[first:] = p[first:] - d[:nd], p[first:] + d[nd:] - 1  # edges -> centre indices
                source = "boxes"
                shows = cc == n + 1
            if first:
                lo[0], hi[0] = _slice_run(shows.reshape(shows.shape[0], -1).any(1), int(p[0]))
            box_mm = _grid_box_mm(grid, lo - 0.5, hi + 0.5)
            ilo, ihi = physical_box_to_index(reference, box_mm)
            centre = _grid_point(grid, p)
            regions.append({
                "label": names.get(value, f"class {value}"), "value": int(value), "source": source,
                "score": round(float(hm[tuple(p)]), 4), "center_mm": [round(float(c), 3) for c in centre],
                "box_mm": box_mm,
                "center_index": [int(round(c)) for c in reference.TransformPhysicalPointToContinuousIndex(centre.tolist())],
                "box_index": ilo + ihi,
            })
    return regions
