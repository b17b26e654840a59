"""Helpers for the DICOM output tests: synthetic CT series, the dciodvfy validator, and an
independent reader of RT Structure Sets."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dicom_helpers import write_dicom_series
from medseg_core.data.phantom import make_phantom

HEAD_FIRST = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
FEET_FIRST = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # rows run to the patient's right, slices upward


def dicom_series(tmp_path: Path, direction, position: str) -> Path:
    """The phantom CT as a DICOM series of anisotropic voxels (1.4 x 1.5 x 3.2 mm, x y z)."""
    ph = make_phantom(seed=4, spacing=(1.4, 1.5, 3.2), direction=direction)
    folder = tmp_path / f"ct_{position}"
    write_dicom_series(sitk.Cast(ph.image, sitk.sitkInt16), folder, "1.2.826.0.1.3680043.2.1125.900" +
                       ("1" if position == "HFS" else "2"), patient_position=position)
    return folder


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines of dicom3tools' validator on ``path`` (warnings are not errors)."""
    out = subprocess.run([shutil.which("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    lines = (out.stdout + out.stderr).splitlines()
    assert any(line.strip() in ("RTStructureSet", "Segmentation") for line in lines), lines[:5]  # it ran
    return [line for line in lines if line.startswith("Error")]


def independent_masks(series_folder: Path, rtstruct: Path) -> dict[str, np.ndarray]:
    """Each ROI of an RT Structure Set filled the way dicompyler-core computes DVHs, with nothing
    of medseg: each slice's voxel centres from its own DICOM headers (pydicom), matched to the
    contours by their SOP instance, inside or out by matplotlib's ``Path`` (even-odd across a
    slice's contours). ``{ROI name: bool (k, j, i)}`` in the slices' spatial order."""
    import pydicom
    from matplotlib.path import Path as Polygon

    slices = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(series_folder.iterdir())]
    ipp0 = np.array(slices[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(ipp0[:3], ipp0[3:])
    slices.sort(key=lambda s: float(np.dot(normal, np.array(s.ImagePositionPatient, dtype=float))))
    rt = pydicom.dcmread(rtstruct)
    names = {r.ROINumber: r.ROIName for r in rt.StructureSetROISequence}
    out = {}
    for roi in rt.ROIContourSequence:
        by_instance: dict[str, list] = {}
        for c in roi.ContourSequence:
            by_instance.setdefault(c.ContourImageSequence[0].ReferencedSOPInstanceUID, []).append(
                np.array(c.ContourData, dtype=float).reshape(-1, 3))
        masks = []
        for s in slices:
            row_dir, col_dir = (np.array(s.ImageOrientationPatient[:3], float),
                                np.array(s.ImageOrientationPatient[3:], float))
            row_spacing, col_spacing = (float(v) for v in s.PixelSpacing)  # between rows, between columns
            j, i = np.mgrid[:int(s.Rows), :int(s.Columns)]
            centres = (np.array(s.ImagePositionPatient, float) + i[..., None] * col_spacing * row_dir
                       + j[..., None] * row_spacing * col_dir)
            u, v = centres @ row_dir, centres @ col_dir  # in-plane coordinates of the centres
            mask = np.zeros((int(s.Rows), int(s.Columns)), dtype=bool)
            uid = s.get("SOPInstanceUID") or s.file_meta.MediaStorageSOPInstanceUID  # blanked by an anonymiser
            for ring in by_instance.get(uid, []):
                ru, rv = ring @ row_dir, ring @ col_dir
                near = (u >= ru.min()) & (u <= ru.max()) & (v >= rv.min()) & (v <= rv.max())  # its bounding box
                mask[near] ^= Polygon(np.column_stack([ru, rv])).contains_points(np.column_stack([u[near], v[near]]))
            masks.append(mask)
        out[names[roi.ReferencedROINumber]] = np.stack(masks)
    return out
