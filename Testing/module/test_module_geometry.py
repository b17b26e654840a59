"""Where the outputs land in RAS, as Slicer would compute it from the written headers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import module_helpers  # noqa: F401 (first: it puts SlicerMedSeg/ on sys.path)
from SlicerMedSegLib import Geometry


# ---- geometry: what Slicer would compute from the written headers --------------------------------
def _nrrd_ras_corners(path) -> tuple[np.ndarray, np.ndarray]:
    """RAS of the 8 corner voxel centres, and the IJK->RAS matrix, from a NRRD header (as Slicer's
    reader does: space directions and origin in LPS, flipped to RAS)."""
    import nrrd

    header = nrrd.read_header(str(path))
    assert header["space"] == "left-posterior-superior"
    dirs = np.asarray(header["space directions"], dtype=float)
    domain = [i for i, kind in enumerate(header["kinds"]) if kind == "domain"]
    sizes = np.asarray(header["sizes"])[domain]
    dirs = dirs[[i for i in range(len(dirs)) if np.isfinite(dirs[i]).all()]]
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = dirs.T
    ijk_to_lps[:3, 3] = header["space origin"]
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps
    corners = np.array([[i, j, k, 1.0] for i in (0, sizes[0] - 1) for j in (0, sizes[1] - 1) for k in (0, sizes[2] - 1)])
    return (corners @ ijk_to_ras.T)[:, :3], ijk_to_ras


def _same_points(a, b, tol=1e-3) -> bool:
    return all(np.min(np.linalg.norm(b - p, axis=1)) < tol for p in a) and len(a) == len(b)


def test_segmentations_have_the_input_geometry_in_ras(segmented):
    outputs = segmented["result"].outputs[0]
    expected, _ = _nrrd_ras_corners(segmented["tmp"] / "input.nrrd")
    for kind in ("segmentation", "rois_segmentation"):
        corners, _ = _nrrd_ras_corners(outputs[kind])
        assert _same_points(corners, expected), kind


def _vtk_nifti(path):
    """(voxels (z, y, x), RAS of every voxel centre as a function of (i, j, k) arrays) the way VTK
    reads a NIfTI file: the sform (else qform) maps VTK's data coordinates to RAS."""
    vtk = pytest.importorskip("vtk", reason="the vtk package is not installed (pip install vtk)")
    from vtkmodules.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkNIFTIImageReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    matrix = reader.GetSFormMatrix() or reader.GetQFormMatrix()
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    nx, ny, nz = image.GetDimensions()
    voxels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx)
    origin, spacing = np.asarray(image.GetOrigin()), np.asarray(image.GetSpacing())

    def to_ras(i, j, k):
        p = np.stack([origin[0] + spacing[0] * i, origin[1] + spacing[1] * j, origin[2] + spacing[2] * k,
                      np.ones_like(i, dtype=float)], axis=-1)
        return (p @ m.T)[..., :3]

    return voxels, to_ras


def _centroid_ras(mask_zyx, to_ras) -> np.ndarray:
    k, j, i = np.nonzero(mask_zyx)
    return to_ras(i.astype(float), j.astype(float), k.astype(float)).mean(axis=0)


def test_nifti_outputs_land_where_the_organs_are_in_ras(segmented):
    """Orientation flips (TotalSegmentator #20/#31, nnU-Net #1956) would move the organs: compare the
    organs' RAS centroids read through VTK's NIfTI reader with the phantom's truth."""
    pytest.importorskip("vtk", reason="the vtk package is not installed (pip install vtk)")
    outputs, phantom = segmented["result"].outputs[0], segmented["phantom"]
    _, input_ijk_to_ras = _nrrd_ras_corners(segmented["tmp"] / "input.nrrd")
    truth = sitk.GetArrayFromImage(phantom.label)

    def truth_centroid(value):
        k, j, i = np.nonzero(truth == value)
        return (np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float) @ input_ijk_to_ras.T)[:, :3].mean(axis=0)

    labels, to_ras = _vtk_nifti(outputs["labels"])
    assert labels.shape == truth.shape
    expected_corners, _ = _nrrd_ras_corners(segmented["tmp"] / "input.nrrd")
    nz, ny, nx = labels.shape
    corners = np.array([to_ras(np.array(float(i)), np.array(float(j)), np.array(float(k)))
                        for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)])
    assert _same_points(corners, expected_corners, tol=1e-2)
    for value in (1, 2, 4, 5):  # liver, cord and the two (small, lateral) glands
        assert np.linalg.norm(_centroid_ras(labels == value, to_ras) - truth_centroid(value)) < 1.5, value

    confidence, conf_to_ras = _vtk_nifti(outputs["confidence"])
    assert confidence.shape == truth.shape and 0.0 <= confidence.min() and confidence.max() <= 1.0
    assert np.allclose(conf_to_ras(np.array(3.0), np.array(4.0), np.array(5.0)), to_ras(np.array(3.0), np.array(4.0),
                                                                                         np.array(5.0)), atol=1e-3)

    # the markups ROIs made from STEM_rois.json (LPS -> RAS) sit on their organ
    regions = json.loads(Path(outputs["rois"]).read_text())["regions"]
    assert {r["label"] for r in regions} == {"LeftGland", "RightGland"}
    for region in regions:
        center, size = Geometry.lps_box_to_ras_center_size(region["box_mm"])
        organ = _centroid_ras(labels == region["value"], to_ras)
        assert np.all(np.abs(np.asarray(center) - organ) <= np.asarray(size) / 2 + 1.0), region["label"]
