"""``medseg segment DICOM_DIR --dicom seg``: a DICOM SEG that highdicom reads back voxel for voxel,
referencing the source series, with the card's names, codes and colours, the algorithm named,
and the "Low confidence" layer as its own segment; on head-first and feet-first series of
anisotropic spacing. Bad requests are one line and write nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import shutil

from dicom_outputs import HEAD_FIRST, dciodvfy_errors, dicom_series as _series
from medseg_core.data.phantom import make_phantom
from medseg_core.errors import InputError
from medseg_core.models import find_model
from medseg_core.segment import segment_files

hd = pytest.importorskip("highdicom", reason="highdicom is optional (pip install -e .[dicom]); without it "
                                             "medseg writes no DICOM SEG")
pydicom = pytest.importorskip("pydicom")

MODEL = "phantom-unet"


def _sources(folder: Path):
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]


def test_the_seg_reads_back_as_the_labelmap_voxel_for_voxel(written):
    folder, out, report = written
    seg_path = Path(report["outputs"]["dicom_seg"])
    assert seg_path == out / f"{folder.name}_seg.dcm" and seg_path.is_file()
    labels = sitk.ReadImage(str(out / f"{folder.name}_labels.nii.gz"))
    seg = hd.seg.segread(str(seg_path))
    card = find_model(MODEL).card
    # the volume's slice order is the series' spatial order: map frames through the source UIDs
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder))
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    organs = list(range(1, len(card.labels) + 1))
    back = seg.get_pixels_by_source_instance(uids, segment_numbers=organs, combine_segments=True, relabel=False)
    values = np.array([0] + [lab.value for lab in card.labels])
    arr = sitk.GetArrayFromImage(labels)
    assert len(np.unique(arr)) >= 4  # the phantom's organs were found
    np.testing.assert_array_equal(values[back], arr)


def test_the_seg_references_the_series_and_has_its_own_uids(written):
    folder, _, report = written
    seg = pydicom.dcmread(report["outputs"]["dicom_seg"])
    src = _sources(folder)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.StudyInstanceUID == src[0].StudyInstanceUID and seg.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    assert seg.PatientID == src[0].PatientID
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence} == {s.SOPInstanceUID for s in src}
    assert seg.SeriesInstanceUID != src[0].SeriesInstanceUID
    assert seg.SOPInstanceUID not in {s.SOPInstanceUID for s in src}


def test_segments_carry_the_cards_names_codes_colours_and_the_algorithm(written):
    _, _, report = written
    seg = pydicom.dcmread(report["outputs"]["dicom_seg"])
    card = find_model(MODEL).card
    segments = list(seg.SegmentSequence)
    assert [s.SegmentLabel for s in segments] == [lab.name for lab in card.labels] + ["Low confidence"]
    spinal = segments[[lab.name for lab in card.labels].index("SpinalCord")]
    assert spinal.SegmentedPropertyTypeCodeSequence[0].CodeValue == "2748008"  # SNOMED-CT spinal cord
    assert spinal.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    for s, lab in zip(segments, card.labels):
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        algo = s.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == (card.name, card.version)
        rgb = hd.color.CIELabColor.from_dicom_value(s.RecommendedDisplayCIELabValue).to_rgb()
        assert np.allclose(np.array(rgb) / 255.0, lab.color, atol=0.02)
    low = segments[-1]
    assert (low.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
            low.SegmentedPropertyTypeCodeSequence[0].CodeMeaning) == ("99MEDSEG", "Low confidence")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed (Debian: "
                    "apt-get install dicom3tools; .ci/run installs it where it can)")
def test_the_seg_passes_the_dicom_validator(written):
    assert dciodvfy_errors(written[2]["outputs"]["dicom_seg"]) == []


def test_dicom_output_needs_a_dicom_series_and_a_known_kind(tmp_path):
    from medseg_core.commands import SegmentRequest

    ph = make_phantom(seed=1)
    sitk.WriteImage(ph.image, str(tmp_path / "ct.nii.gz"))
    with pytest.raises(InputError, match=r"ct\.nii\.gz: --dicom seg needs a DICOM series folder"):
        segment_files([tmp_path / "ct.nii.gz"], MODEL, tmp_path / "out", device="cpu", dicom=["seg"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="^--dicom 'rtss': expected seg or rtstruct"):
        SegmentRequest(inputs=[str(tmp_path / "ct.nii.gz")], model=MODEL, output=str(tmp_path / "o"), dicom="seg,rtss")
    assert SegmentRequest(inputs=[str(tmp_path / "ct.nii.gz")], model=MODEL, output="o", dicom="seg").dicom == ["seg"]
    assert SegmentRequest(inputs=[str(tmp_path / "ct.nii.gz")], model=MODEL, output="o",
                          dicom=" RTSTRUCT,seg").dicom == ["rtstruct", "seg"]


def test_a_series_without_its_uids_is_refused_before_any_work(tmp_path):
    """The shared chest series was anonymised down to empty study, series and instance UIDs: a SEG
    could reference nothing, so the run stops with one line before segmenting, and writes nothing."""
    folder = Path(__file__).resolve().parents[3] / "shared" / "data" / "other-ct" / "chest_dicom"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the shared data are optional)")
    with pytest.raises(InputError, match=r"chest_dicom: the DICOM series has no StudyInstanceUID .*anonymised"):
        segment_files([folder], MODEL, tmp_path / "out", device="cpu", dicom=["seg"])
    assert not (tmp_path / "out").exists()


def test_blank_sop_uids_are_taken_from_the_file_meta_group(tmp_path):
    from medseg_core.io.dicom import dicom_series_files
    from medseg_core.io.dicom import source_datasets

    folder = _series(tmp_path, HEAD_FIRST, "HFS")
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(first)
    uid = ds.file_meta.MediaStorageSOPInstanceUID
    ds.SOPInstanceUID = ""
    ds.save_as(first)
    got = {d.SOPInstanceUID for d in source_datasets(folder, dicom_series_files(folder))}
    assert uid in got and "" not in got


def test_the_command_line_writes_the_seg_and_refuses_what_it_cannot(written_hfs, tmp_path, capsys, monkeypatch):
    from medseg_core.cli import main

    folder = written_hfs[0]
    assert main(["segment", str(folder), "--model", MODEL, "--output", str(tmp_path / "o"), "--dicom", "seg",
                 "--device", "cpu", "--no-confidence", "--progress", "none"]) == 0
    assert (tmp_path / "o" / f"{folder.name}_seg.dcm").is_file()
    assert main(["segment", str(folder), "--model", MODEL, "--output", str(tmp_path / "p"), "--dicom", "rtss",
                 "--progress", "none"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("medseg: error: --dicom 'rtss'")
    monkeypatch.setitem(__import__("sys").modules, "highdicom", None)  # as if it were not installed
    assert main(["segment", str(folder), "--model", MODEL, "--output", str(tmp_path / "q"), "--dicom", "seg",
                 "--progress", "none"]) == 2
    assert "needs highdicom" in capsys.readouterr().err and not (tmp_path / "q").exists()
