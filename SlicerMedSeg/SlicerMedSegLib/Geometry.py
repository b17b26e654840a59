"""RAS (Slicer's world) <-> LPS (DICOM, ITK, ``medseg``) conversions of boxes.

Pure Python: imports neither slicer nor qt. RAS and LPS differ by the sign of x and y.

>>> ras_bounds_to_lps_box([10, 20, -5, 5, 0, 30])   # Slicer bounds: xmin, xmax, ymin, ymax, zmin, zmax
[-20.0, -5.0, 0.0, -10.0, 5.0, 30.0]
>>> lps_box_to_ras_center_size([-20, -5, 0, -10, 5, 30])
([15.0, 0.0, 15.0], [10.0, 10.0, 30.0])
"""

from __future__ import annotations

import math


def lps_to_ras_point(p) -> list[float]:
    return [0.0 - float(p[0]), 0.0 - float(p[1]), float(p[2])]  # 0.0 - x: never a negative zero


def ras_to_lps_point(p) -> list[float]:
    return lps_to_ras_point(p)  # the same flip both ways


def ras_bounds_to_lps_box(bounds) -> list[float]:
    """Slicer RAS bounds ``[xmin, xmax, ymin, ymax, zmin, zmax]`` -> ``medseg --roi`` LPS box
    ``[x0, y0, z0, x1, y1, z1]`` with x0 < x1, y0 < y1, z0 < z1.

    Raises:
        ValueError: not six finite numbers, or an empty box.
    """
    b = [float(v) for v in bounds]
    if len(b) != 6 or not all(math.isfinite(v) for v in b):
        raise ValueError(f"expected six finite bounds, got {bounds!r}")
    (xa, xb), (ya, yb), (za, zb) = sorted(b[0:2]), sorted(b[2:4]), sorted(b[4:6])
    if xa == xb or ya == yb or za == zb:
        raise ValueError("the region of interest is empty along one axis")
    return [0.0 - xb, 0.0 - yb, za, 0.0 - xa, 0.0 - ya, zb]


def lps_box_to_ras_center_size(box) -> tuple[list[float], list[float]]:
    """An LPS box ``[x0, y0, z0, x1, y1, z1]`` (``STEM_rois.json`` ``box_mm``) -> RAS centre and
    size, as a markups ROI takes them."""
    b = [float(v) for v in box]
    if len(b) != 6:
        raise ValueError(f"expected six numbers, got {box!r}")
    center_lps = [(b[i] + b[i + 3]) / 2.0 for i in range(3)]
    size = [abs(b[i + 3] - b[i]) for i in range(3)]
    return lps_to_ras_point(center_lps), size


def roi_argument(box_lps) -> str:
    """The ``--roi`` text of an LPS box (shortest exact float text)."""
    return ",".join(repr(float(v)) if float(v) != int(float(v)) else str(int(float(v))) for v in box_lps)
