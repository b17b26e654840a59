"""``medseg segment DICOM_DIR --dicom rtstruct``: an RT Structure Set whose contours fill back to the
labelmap (medseg's reader voxel for voxel; an independent reader, dicompyler-core's method, at Dice
0.97 or more with every slice kept), referencing the series, coded, passing dciodvfy; on head-first
and feet-first series of anisotropic voxels. Structure sets and SEGs read back as fine-tuning
corrections, TG-263 names matched, and bad ones refused in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_outputs import dciodvfy_errors, independent_masks
from medseg_core.io.contours import mask_to_polygons, polygons_to_mask
from medseg_core.models import find_model

pydicom = pytest.importorskip("pydicom", reason="pydicom is optional (pip install -e .[dicom])")
pytest.importorskip("contourpy", reason="contourpy is optional (pip install -e .[dicom])")

MODEL = "phantom-unet"
needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not "
                                    "installed (Debian: apt-get install dicom3tools; .ci/run installs it where it can)")


def _labels(out: Path, folder: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{folder.name}_labels.nii.gz")))


def test_rings_fill_back_to_the_slice_voxel_for_voxel():
    """Holes, diagonal neighbours, single voxels, voxels on the image's edge: 200 random slices."""
    rng = np.random.default_rng(0)
    for t in range(200):
        mask = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) > rng.uniform(0.2, 0.8)
        np.testing.assert_array_equal(polygons_to_mask(mask_to_polygons(mask), mask.shape), mask)
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6], ring[3, 3] = True, False
    rings = mask_to_polygons(ring)
    assert len(rings) == 2  # the organ's outline and its hole, each a ring
    outer = max(rings, key=len)
    assert outer[:, 0].min() == 0.5 and outer[:, 0].max() == 5.5  # half-way between inside and outside
    assert mask_to_polygons(np.zeros((4, 4), bool)) == []


def test_the_structure_set_fills_back_to_the_labelmap(written):
    from medseg_core.io.dicom import dicom_series_files, read_dicom_folder, source_datasets
    from medseg_core.io.rtstruct import read_rtstruct

    folder, out, report = written
    path = Path(report["outputs"]["dicom_rtstruct"])
    assert path == out / f"{folder.name}_rtstruct.dcm"
    arr, card = _labels(out, folder), find_model(MODEL).card
    back = read_rtstruct(path, source_datasets(folder, dicom_series_files(folder)), read_dicom_folder(folder))
    assert set(back) == {lab.name for lab in card.labels if (arr == lab.value).any()} and len(back) >= 3
    for lab in card.labels:
        if lab.name in back:
            np.testing.assert_array_equal(back[lab.name], arr == lab.value)


def test_an_independent_reader_finds_the_same_organs_on_the_same_slices(written):
    folder, out, report = written
    arr, card = _labels(out, folder), find_model(MODEL).card
    masks = independent_masks(folder, Path(report["outputs"]["dicom_rtstruct"]))
    big = 0
    for lab in card.labels:
        ref = arr == lab.value
        if not ref.any():
            continue
        got = masks[lab.name]
        np.testing.assert_array_equal(np.flatnonzero(got.any(axis=(1, 2))), np.flatnonzero(ref.any(axis=(1, 2))))
        if ref.sum() > 300:
            big += 1
            assert 2 * (got & ref).sum() / (got.sum() + ref.sum()) >= 0.97, lab.name
    assert big >= 2


def test_the_structure_set_references_the_series_codes_its_rois_and_names_the_model(written):
    folder, out, report = written
    rt = pydicom.dcmread(report["outputs"]["dicom_rtstruct"])
    src = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]
    card = find_model(MODEL).card
    assert rt.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3" and rt.Modality == "RTSTRUCT"
    assert (rt.StudyInstanceUID, rt.FrameOfReferenceUID, rt.PatientID) == (
        src[0].StudyInstanceUID, src[0].FrameOfReferenceUID, src[0].PatientID)
    assert rt.SeriesInstanceUID != src[0].SeriesInstanceUID and rt.ApprovalStatus == "UNAPPROVED"
    series = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == src[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == {s.SOPInstanceUID for s in src}
    slice_of = {s.SOPInstanceUID: float(s.ImagePositionPatient[2]) for s in src}
    names = [r.ROIName for r in rt.StructureSetROISequence]
    assert "Low confidence" not in names and not any("region" in n.lower() for n in names)  # organs only
    by_name = {lab.name: lab for lab in card.labels}
    for roi, contour, obs in zip(rt.StructureSetROISequence, rt.ROIContourSequence, rt.RTROIObservationsSequence):
        lab = by_name[roi.ROIName]
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC"
        algo = roi.ROIDerivationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == (card.name, card.version)
        assert list(contour.ROIDisplayColor) == [int(round(255 * c)) for c in lab.color]
        for c in contour.ContourSequence:  # each contour lies in the plane of the slice it references
            z = np.array(c.ContourData, dtype=float).reshape(-1, 3)[:, 2]
            assert np.allclose(z, slice_of[c.ContourImageSequence[0].ReferencedSOPInstanceUID], atol=1e-3)
            assert c.ContourGeometricType == "CLOSED_PLANAR" and c.NumberOfContourPoints == len(z)
        assert obs.RTROIInterpretedType == "ORGAN" and obs.ReferencedROINumber == roi.ROINumber
    cord = rt.RTROIObservationsSequence[names.index("SpinalCord")].RTROIIdentificationCodeSequence[0]
    assert (cord.CodingSchemeDesignator, cord.CodeValue) == ("SCT", "2748008")


@needs_dciodvfy
def test_the_structure_set_passes_the_dicom_validator(written):
    assert dciodvfy_errors(written[2]["outputs"]["dicom_rtstruct"]) == []


@needs_dciodvfy
def test_the_validator_finds_a_broken_structure_set(written, tmp_path):
    """So that the test above could fail: a structure set without its label, a contour type unknown."""
    rt = pydicom.dcmread(written[2]["outputs"]["dicom_rtstruct"])
    del rt.StructureSetLabel
    rt.ROIContourSequence[0].ContourSequence[0].ContourGeometricType = "CLOSED"
    rt.save_as(tmp_path / "broken.dcm")
    assert len(dciodvfy_errors(tmp_path / "broken.dcm")) == 2


def test_the_shared_chest_series_round_trips_through_seg_and_structure_set(tmp_path):
    """The real chest CT (512 x 512, JPEG 2000), its blank study and series UIDs filled in as a PACS
    export has them: the body (with the lungs as holes) and the lungs, thresholded, written as SEG
    and RT Structure Set and read back."""
    hd = pytest.importorskip("highdicom", reason="highdicom is optional (pip install -e .[dicom])")
    from medseg_core.io.dicom import dicom_series_files, read_dicom_folder, source_datasets
    from medseg_core.io.dicom_seg import read_dicom_seg, write_dicom_seg
    from medseg_core.io.rtstruct import read_rtstruct, write_rtstruct
    from medseg_core.labels import Label

    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "other-ct" / "chest_dicom"
    if not shared.is_dir():
        pytest.skip(f"{shared} is absent (the shared data are optional)")
    folder = tmp_path / "chest"
    folder.mkdir()
    study, series = hd.UID(), hd.UID()
    for f in sorted(shared.iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(folder / f.name)
    image = read_dicom_folder(folder)
    hu = sitk.GetArrayFromImage(image)
    body = np.stack([sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray((s > -300).astype(np.uint8))))
                     for s in hu])  # slice by slice: the lungs are holes of the body
    lungs = (hu < -400) & (body > 0)
    arr = np.where(lungs, 1, np.where(body > 0, 2, 0)).astype(np.uint8)
    labels = sitk.GetImageFromArray(arr)
    labels.CopyInformation(image)
    organs = [Label(1, "Lungs", (0.9, 0.7, 0.6)), Label(2, "Body", (0.5, 0.5, 0.5))]
    sources = source_datasets(folder, dicom_series_files(folder))
    write_rtstruct(labels, organs, sources, tmp_path / "rt.dcm", "test", "1")
    write_dicom_seg(labels, organs, sources, tmp_path / "seg.dcm", "test", "1")
    back, seg_back = read_rtstruct(tmp_path / "rt.dcm", sources, image), read_dicom_seg(tmp_path / "seg.dcm", sources)
    independent = independent_masks(folder, tmp_path / "rt.dcm")
    for lab in organs:
        ref = arr == lab.value
        assert ref.sum() > 10000
        np.testing.assert_array_equal(back[lab.name], ref)
        np.testing.assert_array_equal(seg_back[lab.name], ref)
        got = independent[lab.name]
        assert 2 * (got & ref).sum() / (got.sum() + ref.sum()) >= 0.97
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(tmp_path / "rt.dcm") == [] and dciodvfy_errors(tmp_path / "seg.dcm") == []
