"""Synthetic DICOM series for the tests (one file per slice, as scanners write them)."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk


CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str, compress: bool = False,
                       patient_position: str = "HFS") -> None:
    """Writes an int16 volume as one DICOM file per slice (after SimpleITK's DicomSeriesFromArray):
    a CT series with its study, frame of reference, patient and SOP instance UIDs derived from
    ``series_uid``; ``compress``: a compressed transfer syntax (GDCM's lossless JPEG 2000)."""
    folder.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    series_tags = [
        ("0008|0031", "120000"), ("0008|0021", "20240101"), ("0008|0020", "20240101"), ("0008|0030", "120000"),
        ("0008|0008", "ORIGINAL\\PRIMARY\\AXIAL"), ("0008|0016", CT_IMAGE_STORAGE),
        ("0020|000e", series_uid), ("0020|000d", series_uid + ".1"), ("0020|0052", series_uid + ".2"),
        ("0008|0060", "CT"), ("0008|103e", "synthetic"), ("0020|0011", "3"), ("0008|0050", "A1"),
        ("0010|0010", "Phantom^Synthetic"), ("0010|0020", "SYN001"), ("0018|5100", patient_position),
        ("0028|1052", "0"), ("0028|1053", "1"), ("0018|0050", f"{image.GetSpacing()[2]:.6g}"),
        ("0020|0037", "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))),
    ]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetUseCompression(compress)
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        for tag, value in series_tags:
            slice_k.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_k.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
        slice_k.SetMetaData("0020|0013", str(k + 1))
        slice_k.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"{series_uid[-4:]}_{k:03d}.dcm"))
        writer.Execute(slice_k)
