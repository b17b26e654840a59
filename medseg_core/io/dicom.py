"""DICOM series: the series with the most files in a folder, read only when it is complete.

GDCM leaves a file it cannot parse out of every series, and SimpleITK reads what remains, so a
damaged or missing slice would silently shorten the volume. :func:`check_dicom_series` refuses
that: a DICOM-looking file in no series, a slice whose raw pixels are cut short, a gap in the
slice positions.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg_core.errors import InputError
from medseg_core.io.door import quiet_stderr, sitk_error_detail


def read_dicom_folder(folder: Path) -> sitk.Image:
    """The folder's series (the one with the most files) as one volume, checked complete."""
    files = dicom_series_files(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with quiet_stderr():
            return reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{folder}: cannot read the DICOM series ({sitk_error_detail(error)})") from None


def dicom_series_files(folder: Path, check: bool = True) -> list[str]:
    """The files of the folder's series with the most files, in the order of the volume's slices
    (what :func:`read_dicom_folder` reads, slice k of the volume from file k), checked complete
    (``check=False``: where :func:`read_dicom_folder` has just checked the folder)."""
    reader = sitk.ImageSeriesReader()
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM warns on stderr when no series is found
    try:
        series_ids = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as error:
        raise InputError(f"{folder}: cannot scan the folder for DICOM ({sitk_error_detail(error)})") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    series = [reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids]
    series = [files for files in series if files]
    if not series:
        raise InputError(f"{folder}: is a folder with no DICOM series in it")
    files = max(series, key=len)
    if check:
        check_dicom_series(folder, files, [f for s in series for f in s])
    return list(files)


def source_datasets(folder: Path, files: list[str]):
    """The series' headers (no pixels), as the DICOM SEG and RT Structure Set writers and readers
    need them, checked before any work: each slice's SOP class and instance UIDs (from the file
    meta group where an anonymiser blanked them in the data set, which the standard defines
    equal), and the study, series and frame of reference UIDs that a SEG or a structure set must
    reference. One clear error where they are missing, or where the slices do not share one study
    and one frame of reference (their contours could not be placed)."""
    try:
        import pydicom
    except ImportError:
        raise InputError("DICOM objects need pydicom, which is not installed: pip install -e '.[dicom]'") from None

    out = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        for attr, meta_attr in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(attr, "") or "") and meta is not None and str(meta.get(meta_attr, "") or ""):
                setattr(ds, attr, meta.get(meta_attr))
        for attr in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if not str(ds.get(attr, "") or ""):
                raise InputError(f"{folder}: the DICOM series has no {attr} (in {Path(f).name}; anonymised?), "
                                 f"so no DICOM SEG or RT Structure Set can reference it")
        for attr in ("StudyInstanceUID", "FrameOfReferenceUID"):
            if out and ds.get(attr) != out[0].get(attr):
                raise InputError(f"{folder}: the DICOM series mixes {attr}s ({Path(f).name} has another than "
                                 f"{Path(files[0]).name})")
        out.append(ds)
    return out


MANUFACTURER = "SlicerMedSeg"
"""The manufacturer the DICOM objects medseg writes give (SEG, RT Structure Set)."""


def check_series_grid(shape: tuple[int, ...], sources) -> None:
    """A labelmap of ``shape`` (z, y, x) must lie on the series whose headers are ``sources``
    (slice k from ``sources[k]``) to be written as a DICOM object referencing it."""
    first = sources[0]
    if tuple(shape) != (len(sources), int(first.Rows), int(first.Columns)):
        raise InputError(f"{getattr(first, 'filename', 'the series')}: the series has {len(sources)} slices of "
                         f"{first.Rows} x {first.Columns}, the result {tuple(shape)}: it is not on the series' grid")


def check_references(path: Path, what: str, series: set[str], frames: set[str], sources) -> None:
    """A DICOM object read as a correction (``what``: "the SEG", "the structure set") must refer to
    the image's series and frame of reference, where it names them (``series``, ``frames``)."""
    if series and sources[0].SeriesInstanceUID not in series:
        raise InputError(f"{path}: {what} refers to series {sorted(series)[0]}, not to the image's series "
                         f"{sources[0].SeriesInstanceUID}")
    if frames and sources[0].FrameOfReferenceUID not in frames:
        raise InputError(f"{path}: {what}'s frame of reference is not the image's ({sources[0].FrameOfReferenceUID})")


def check_dicom_series(folder: Path, files: list[str], in_any_series: list[str]) -> None:
    """A series must be complete: every slice readable and whole, slices evenly spaced.

    GDCM leaves a file it cannot parse out of every series, so a damaged slice would simply be
    missing from the volume; a file that starts like DICOM but is in no series is taken as one.
    """
    listed = {os.path.abspath(f) for f in in_any_series}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and os.path.abspath(entry) not in listed and _looks_like_dicom(entry):
            raise InputError(f"{entry}: is a damaged DICOM file in the series folder {folder}")
    positions, normal = [], None
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            with quiet_stderr():
                reader.ReadImageInformation()
        except RuntimeError as error:
            raise InputError(f"{name}: cannot be read as a DICOM slice ({sitk_error_detail(error)})") from None
        size = reader.GetSize()
        bits = int(reader.GetMetaData("0028|0100")) if reader.HasMetaDataKey("0028|0100") else 16
        pixel_bytes = size[0] * size[1] * reader.GetNumberOfComponents() * bits // 8
        if _uncompressed(Path(name)) and Path(name).stat().st_size < pixel_bytes:
            raise InputError(f"{name}: the DICOM slice is cut short ({Path(name).stat().st_size} bytes for "
                             f"{size[0]} x {size[1]} voxels)")
        if normal is None:
            d = np.reshape(reader.GetDirection(), (3, 3))
            normal = d[:, 2]
        positions.append(float(np.dot(normal, reader.GetOrigin())))
    if len(positions) >= 3:
        steps = np.diff(np.sort(positions))
        typical = float(np.median(steps))
        if typical <= 0:
            raise InputError(f"{folder}: the DICOM series has slices at the same position")
        gap = int(np.argmax(steps))
        if steps[gap] > 1.5 * typical:
            missing = int(round(steps[gap] / typical)) - 1
            raise InputError(f"{folder}: the DICOM series misses {missing} slice(s) after position "
                             f"{np.sort(positions)[gap]:.2f} mm (slices every {typical:.2f} mm elsewhere)")


_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def _uncompressed(path: Path) -> bool:
    """The file stores its pixels raw (implicit or explicit VR, little or big endian), so its size
    can be checked against the pixel count; a compressed transfer syntax (JPEG, RLE, deflate)
    cannot. Reads the transfer syntax from the file meta group (always explicit VR little endian)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if head[128:132] != b"DICM":
        return True  # no meta group: implicit VR little endian, uncompressed
    pos = 132
    while pos + 8 <= len(head):
        group, element = struct.unpack("<HH", head[pos:pos + 4])
        if group != 0x0002:
            break
        vr = head[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length, value_at = struct.unpack("<I", head[pos + 8:pos + 12])[0], pos + 12
        else:
            length, value_at = struct.unpack("<H", head[pos + 6:pos + 8])[0], pos + 8
        if element == 0x0010:
            return head[value_at:value_at + length].rstrip(b"\0 ").decode("ascii", "replace") in _UNCOMPRESSED
        pos = value_at + length
    return True


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"
