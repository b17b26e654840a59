"""Corrections from the planning system: ``medseg finetune --label`` takes the RT Structure Set (or
DICOM SEG) of the image's DICOM series; clinical structure names are matched to the model's labels,
derived structures never, and a structure set of another series, one without contours or with a
contour off the slices, is one line."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medseg_core.errors import InputError
from medseg_core.io.roi_names import is_derived, match_rois, roi_key
from medseg_core.models import find_model

pydicom = pytest.importorskip("pydicom", reason="pydicom is optional (pip install -e .[dicom])")
pytest.importorskip("contourpy", reason="contourpy is optional (pip install -e .[dicom])")

MODEL = "phantom-unet"


@pytest.mark.parametrize("name, key", [
    ("Parotid_L", "leftparotid"), ("Lt Parotid", "leftparotid"), ("PAROTID LEFT", "leftparotid"),
    ("LeftParotid", "leftparotid"), ("Parotid_R", "rightparotid"), ("BrainStem", "brainstem"),
    ("Spinal Cord", "spinalcord"), ("Cord", "spinalcord"), ("Oesophagus", "esophagus"),
    ("Bone_Mandible", "mandible"), ("Glnd_Submand_L", "leftsubmandibular"), ("Larynx", "larynx")])
def test_clinical_names_have_the_models_keys(name, key):
    assert roi_key(name) == key


@pytest.mark.parametrize("name", ["SpinalCord_PRV", "PRV_Brainstem_3mm", "SpinalCord_PRV05", "BrainStemPRV",
                                  "Cord+5mm", "Parotid_L_exp", "z_Ring", "opt_Parotid_L", "Parotid_avoid",
                                  "Cord_3mm"])
def test_derived_structures_are_never_the_organ(name):
    assert is_derived(name)


def test_hnoar_structure_names_match_the_default_models_labels():
    card = find_model("hn-oar-unet").card
    values = {lab.name: lab.value for lab in card.labels}
    names = ["BrainStem", "SpinalCord", "SpinalCord_PRV", "Parotid_R", "Parotid_L", "Esophagus", "Larynx",
             "Bone_Mandible", "External", "PTV70", "z_opt"]
    assert match_rois(names, card.labels) == {
        "BrainStem": values["Brainstem"], "SpinalCord": values["SpinalCord"], "Parotid_R": values["RightParotid"],
        "Parotid_L": values["LeftParotid"], "Esophagus": values["Esophagus"], "Larynx": values["Larynx"],
        "Bone_Mandible": values["Mandible"]}
    assert not is_derived("PTV70")  # a target model's labels are targets
    assert match_rois(["PTV70", "PTV_70"], find_model("hn-ptv").card.labels) == {"PTV70": 3, "PTV_70": 3}


def _read(written, label_path):
    from medseg_core.io.corrections import read_correction
    from medseg_core.io.dicom import read_dicom_folder

    folder = written[0]
    lab, annotated = read_correction(label_path, read_dicom_folder(folder), find_model(MODEL).card, image=folder)
    return sitk.GetArrayFromImage(lab), annotated


def _labels(written) -> np.ndarray:
    folder, out, _ = written
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{folder.name}_labels.nii.gz")))


def test_the_written_seg_and_structure_set_read_back_as_the_result(written):
    arr = _labels(written)
    for kind in ("dicom_rtstruct", "dicom_seg"):  # the SEG's "Low confidence" is no label: left out
        got, annotated = _read(written, written[2]["outputs"][kind])
        np.testing.assert_array_equal(got, arr)
        assert annotated == sorted(int(v) for v in np.unique(arr) if v)


def test_a_planning_systems_structure_set_is_matched_by_name(written, tmp_path):
    """Clinical names, a PRV shifted 5 mm (taken, it would show), the body, and a template's organ
    nobody drew: the organs come back under the model's values; the undrawn one is not annotated."""
    card = find_model(MODEL).card
    value = {lab.name: lab.value for lab in card.labels}
    rt = pydicom.dcmread(written[2]["outputs"]["dicom_rtstruct"])
    rename = {"Liver": "LIVER", "SpinalCord": "Spinal_Cord", "LeftGland": "Gland_L", "RightGland": "Rt Gland"}
    number = {r.ROIName: r.ROINumber for r in rt.StructureSetROISequence}
    for r in rt.StructureSetROISequence:
        r.ROIName = rename.get(r.ROIName, r.ROIName)
    contours = {c.ReferencedROINumber: c for c in rt.ROIContourSequence}
    del contours[number["Tumour"]].ContourSequence  # listed by the template, not drawn
    for new_name, source, shift in (("SpinalCord_PRV05", "SpinalCord", 5.0), ("External", "Liver", 0.0)):
        roi = copy.deepcopy(next(r for r in rt.StructureSetROISequence if r.ROINumber == number[source]))
        roi.ROINumber, roi.ROIName = 90 + len(rt.StructureSetROISequence), new_name
        contour = copy.deepcopy(contours[number[source]])
        contour.ReferencedROINumber = roi.ROINumber
        for c in contour.ContourSequence:
            xyz = np.array(c.ContourData, dtype=float).reshape(-1, 3) + [shift, 0, 0]
            c.ContourData = [f"{v:.4f}" for v in xyz.ravel()]
        rt.StructureSetROISequence.append(roi)
        rt.ROIContourSequence.append(contour)
    rt.save_as(tmp_path / "planning.dcm")
    got, annotated = _read(written, tmp_path / "planning.dcm")
    expected = _labels(written).copy()
    expected[expected == value["Tumour"]] = 0
    np.testing.assert_array_equal(got, expected)
    assert annotated == sorted(value[n] for n in ("Liver", "SpinalCord", "LeftGland", "RightGland"))


def test_where_two_structures_overlap_the_smaller_keeps_the_voxels(written_hfs, tmp_path):
    card = find_model(MODEL).card
    value = {lab.name: lab.value for lab in card.labels}
    rt = pydicom.dcmread(written_hfs[2]["outputs"]["dicom_rtstruct"])
    names = [r.ROIName for r in rt.StructureSetROISequence]
    liver, tumour = rt.ROIContourSequence[names.index("Liver")], rt.ROIContourSequence[names.index("Tumour")]
    liver.ContourSequence.extend(copy.deepcopy(list(tumour.ContourSequence)))  # the liver drawn over its tumour
    rt.save_as(tmp_path / "overlap.dcm")
    got, _ = _read(written_hfs, tmp_path / "overlap.dcm")
    np.testing.assert_array_equal(got, _labels(written_hfs))  # the tumour kept every voxel
    assert (got == value["Tumour"]).sum() > 50


def _refused(written, tmp_path, change, match: str):
    rt = pydicom.dcmread(written[2]["outputs"]["dicom_rtstruct"])
    change(rt)
    rt.save_as(tmp_path / "bad.dcm")
    with pytest.raises(InputError, match=match) as error:
        _read(written, tmp_path / "bad.dcm")
    assert "\n" not in str(error.value) and str(tmp_path / "bad.dcm") in str(error.value)


def test_a_structure_set_of_another_series_or_frame_is_refused(written_hfs, tmp_path):
    def other_series(rt):
        rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0] \
            .SeriesInstanceUID = "1.2.3.4"

    def other_frame(rt):
        rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.5"

    _refused(written_hfs, tmp_path, other_series, "refers to series 1.2.3.4, not to the image's series")
    _refused(written_hfs, tmp_path, other_frame, "frame of reference is not the image's")


def test_a_structure_set_without_contours_or_off_the_slices_is_refused(written_hfs, tmp_path):
    def no_contours(rt):
        for c in rt.ROIContourSequence:
            del c.ContourSequence

    def between_slices(rt):
        for c in rt.ROIContourSequence[0].ContourSequence:
            c.ContourData = [f"{v + (1.6 if k % 3 == 2 else 0):.4f}" for k, v in enumerate(c.ContourData)]

    def not_a_structure_set(rt):
        rt.Modality = "RTPLAN"

    _refused(written_hfs, tmp_path, no_contours, "holds no contours")
    cut = Path(written_hfs[2]["outputs"]["dicom_rtstruct"]).read_bytes()
    (tmp_path / "bad.dcm").write_bytes(cut[:len(cut) // 2])  # a damaged copy, cut in the middle
    with pytest.raises(InputError, match=r"bad\.dcm: (cannot be read as DICOM|the structure set is damaged)") as e:
        _read(written_hfs, tmp_path / "bad.dcm")
    assert "\n" not in str(e.value)
    _refused(written_hfs, tmp_path, between_slices, "lies off the series' slices")
    _refused(written_hfs, tmp_path, not_a_structure_set, "is a DICOM RTPLAN, not an RT Structure Set")


def test_a_structure_set_needs_its_series_folder_as_the_image(written_hfs, tmp_path):
    from medseg_core.io.corrections import read_correction
    from medseg_core.io.dicom import read_dicom_folder

    image = read_dicom_folder(written_hfs[0])
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    with pytest.raises(InputError, match=r"rtstruct\.dcm: a DICOM structure set or SEG corrects a DICOM series"):
        read_correction(written_hfs[2]["outputs"]["dicom_rtstruct"], image, find_model(MODEL).card,
                        image=tmp_path / "ct.nii.gz")


def test_a_series_mixing_frames_of_reference_is_refused(written_hfs, tmp_path):
    import shutil

    from medseg_core.io.dicom import dicom_series_files, source_datasets

    folder = tmp_path / "mixed"
    shutil.copytree(written_hfs[0], folder)
    last = sorted(folder.iterdir())[-1]
    ds = pydicom.dcmread(last)
    ds.FrameOfReferenceUID = "1.2.3.6"
    ds.save_as(last)
    with pytest.raises(InputError, match="mixed: the DICOM series mixes FrameOfReferenceUIDs"):
        source_datasets(folder, dicom_series_files(folder))


def test_finetune_learns_from_a_structure_set_from_the_command_line(written_hfs):
    from medseg_core.cli import main

    folder, _, report = written_hfs
    assert main(["finetune", "--model", MODEL, "--image", str(folder), "--label", report["outputs"]["dicom_rtstruct"],
                 "--steps", "1", "--name", "phantom-from-rt", "--device", "cpu", "--progress", "none"]) == 0
    card = find_model("phantom-from-rt").card
    case = card.training["finetune"]["cases"][0]
    assert case["label"].endswith("_rtstruct.dcm") and len(case["labels_trained"]) >= 3


def test_a_seg_of_another_series_is_refused(written_hfs, tmp_path):
    seg = pydicom.dcmread(written_hfs[2]["outputs"]["dicom_seg"])
    seg.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.7"
    seg.save_as(tmp_path / "other_seg.dcm")
    with pytest.raises(InputError, match=r"other_seg\.dcm: the SEG refers to series 1\.2\.3\.7, not to the image's"):
        _read(written_hfs, tmp_path / "other_seg.dcm")
