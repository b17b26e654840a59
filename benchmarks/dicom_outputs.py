"""How long the RT Structure Set and the DICOM SEG take to write and read back, on a HNOAR case's
result (the default model's seven organs) and on the full-size chest CT with two large
structures traced from thresholds (the body, whose air pockets make thousands of holes, and the
lungs): the worst case for contours. Each object is read back and compared voxel for voxel.
Needs ../shared/data.

    python benchmarks/dicom_outputs.py [--model hn-oar] [--case hn_201]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg_core.io.dicom_seg import read_dicom_seg, write_dicom_seg  # noqa: E402
from medseg_core.io.rtstruct import read_rtstruct, write_rtstruct  # noqa: E402
from medseg_core.labels import Label  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _sources(shape):
    """Stand-in headers of a series on the labelmap's grid (the writers read only UIDs and size)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for _ in range(shape[0]):
        d = Dataset()
        d.Rows, d.Columns, d.SOPClassUID, d.SOPInstanceUID = shape[1], shape[2], "1.2.840.10008.5.1.4.1.1.2", \
            generate_uid()
        d.StudyInstanceUID, d.SeriesInstanceUID, d.FrameOfReferenceUID = study, series, frame
        d.PatientID, d.PatientName, d.Modality, d.ImageOrientationPatient = "B", "Bench^Mark", "CT", [1, 0, 0, 0, 1, 0]
        d.PatientBirthDate, d.PatientSex, d.StudyDate, d.StudyTime, d.StudyID = "", "", "20260101", "120000", "1"
        d.AccessionNumber, d.ReferringPhysicianName, d.SeriesNumber = "", "", 1
        out.append(d)
    return out


def _measure(title: str, labels: sitk.Image, organs: list[Label], tmp: Path) -> None:
    arr = sitk.GetArrayFromImage(labels)
    sources = _sources(arr.shape)
    t0 = time.perf_counter()
    write_rtstruct(labels, organs, sources, tmp / "rt.dcm", "bench", "1")
    t1 = time.perf_counter()
    back = read_rtstruct(tmp / "rt.dcm", sources, labels)
    t2 = time.perf_counter()
    exact = all(np.array_equal(back.get(lab.name, np.zeros_like(arr, bool)), arr == lab.value) for lab in organs)
    import pydicom

    rt = pydicom.dcmread(tmp / "rt.dcm")
    contours = sum(len(r.get("ContourSequence", [])) for r in rt.ROIContourSequence)
    print(f"{title}: {arr.shape[::-1]} voxels, {len(organs)} structures, {contours} contours, "
          f"{(tmp / 'rt.dcm').stat().st_size / 1e6:.1f} MB")
    print(f"  RT Structure Set: write {t1 - t0:.2f} s, read {t2 - t1:.2f} s, back voxel for voxel: {exact}")
    try:
        import highdicom  # noqa: F401
    except ImportError:
        print("  DICOM SEG: highdicom is not installed")
        return
    # highdicom checks the source images' geometry: give the stand-ins the labelmap's
    for k, d in enumerate(sources):
        d.ImagePositionPatient = list(labels.TransformIndexToPhysicalPoint((0, 0, k)))
        d.PixelSpacing = [labels.GetSpacing()[1], labels.GetSpacing()[0]]
        d.SliceThickness = labels.GetSpacing()[2]
        dcm = np.reshape(labels.GetDirection(), (3, 3))
        d.ImageOrientationPatient = list(dcm[:, 0]) + list(dcm[:, 1])
    t0 = time.perf_counter()
    write_dicom_seg(labels, organs, sources, tmp / "seg.dcm", "bench", "1")
    t1 = time.perf_counter()
    seg = read_dicom_seg(tmp / "seg.dcm", sources)
    t2 = time.perf_counter()
    exact = all(np.array_equal(seg[lab.name], arr == lab.value) for lab in organs)
    print(f"  DICOM SEG: write {t1 - t0:.2f} s, read {t2 - t1:.2f} s, back voxel for voxel: {exact}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hn-oar")
    ap.add_argument("--case", default="hn_201")
    a = ap.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(f"CPU: {cpu}, {os.cpu_count()} cores, {os.environ.get('OMP_NUM_THREADS', 'all')} threads")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image = DATA / "HNOAR" / "imagesTr" / f"{a.case}_0000.nii.gz"
        if image.is_file():
            from medseg_core.models import find_model
            from medseg_core.segment import segment_files

            report = segment_files([image], a.model, tmp / "out", device="cpu", confidence=False)[0]
            _measure(f"{a.case} ({a.model})", sitk.ReadImage(report["outputs"]["labels"]),
                     find_model(a.model).card.labels, tmp)
        ct = DATA / "other-ct" / "lung1_ct.nii.gz"
        if ct.is_file():
            img = sitk.ReadImage(str(ct))
            hu = sitk.GetArrayFromImage(img)
            body = np.stack([sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(
                (s > -300).astype(np.uint8)))) for s in hu])
            arr = np.where((hu < -400) & (body > 0), 1, np.where(body > 0, 2, 0)).astype(np.uint8)
            labels = sitk.GetImageFromArray(arr)
            labels.CopyInformation(img)
            _measure("lung1 full-size CT, thresholded", labels, [Label(1, "Lungs"), Label(2, "Body")], tmp)


if __name__ == "__main__":
    main()
