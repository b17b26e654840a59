"""Synthetic DICOM series for the tests (one file per slice, as scanners write them)."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str, compress: bool = False) -> None:
    """Writes an int16 volume as one DICOM file per slice (after SimpleITK's DicomSeriesFromArray);
    ``compress``: a compressed transfer syntax (GDCM's lossless JPEG 2000)."""
    folder.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    series_tags = [
        ("0008|0031", "120000"), ("0008|0021", "20240101"), ("0008|0008", "DERIVED\\SECONDARY"),
        ("0020|000e", series_uid), ("0020|000d", series_uid + ".1"), ("0008|0060", "CT"),
        ("0008|103e", "synthetic"),
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
        writer.SetFileName(str(folder / f"{series_uid[-4:]}_{k:03d}.dcm"))
        writer.Execute(slice_k)
