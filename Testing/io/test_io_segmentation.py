"""Slicer segmentations (.seg.nrrd) and terminology codes."""

from __future__ import annotations

import os

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from io_helpers import ORIGIN, ROTATION_FLIP, SPACING, assert_one_line_error, assert_same_geometry, make_image
from medseg_core.errors import InputError
from medseg_core.io import (array_to_image, default_color, read_segmentation, terminology_for, write_labelmap,
                            write_segmentation)
from medseg_core.io.segmentation import ijk_to_lps, reference_geometry
from medseg_core.labels import Label


# --- Slicer segmentation --------------------------------------------------------------------

SEG_LABELS = [
    Label(1, "Brainstem"),
    Label(2, "Right Parotid", (1.0, 0.0, 0.0)),
    Label(3, "Liver", (0.2, 0.4, 0.6), {"category": ["SCT", "123037004", "Anatomical Structure"],
                                         "type": ["SCT", "10200004", "Liver"]}),
    Label(9, "Nothing here"),  # empty segment
]


def low_confidence_mask(shape) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[2:4, :, :] = 1  # overlaps labels 1 and 2
    return mask


def expected_color(label: Label) -> list[float]:
    return list(label.color) if label.color != (0.5, 0.5, 0.5) else list(default_color(label.name, label.value))


def expected_terminology(label: Label) -> dict:
    terminology = label.terminology or terminology_for(label.name) or {
        "contextName": "Segmentation category and type - SlicerMedSeg",
        "category": ["99MEDSEG", "100", "Model review"], "type": ["99MEDSEG", "103", "Model label"]}
    return {"contextName": "Segmentation category and type - DICOM master list",
            "anatomicContextName": "Anatomic codes - DICOM master list", **terminology}


def test_segmentation_read_back_by_slicerio_and_pynrrd(tmp_path, labelmap):
    image = make_image(labelmap)
    path = tmp_path / "out.seg.nrrd"
    low = ("Low confidence", (1.0, 1.0, 0.0), low_confidence_mask(labelmap.shape))
    write_segmentation(image, SEG_LABELS, path, [low])
    assert sorted(os.listdir(tmp_path)) == [path.name]

    seg = slicerio.read_segmentation(str(path))
    segments = seg["segments"]
    assert [s["name"] for s in segments] == [label.name for label in SEG_LABELS] + ["Low confidence"]
    assert [s["labelValue"] for s in segments] == [1, 2, 3, 9, 1]
    assert [s["layer"] for s in segments] == [0, 0, 0, 0, 1]
    for segment, label in zip(segments, SEG_LABELS):
        np.testing.assert_allclose(segment["color"], expected_color(label), atol=1e-6)
        assert segment.get("terminology") == expected_terminology(label)
    np.testing.assert_allclose(segments[-1]["color"], [1.0, 1.0, 0.0])
    assert segments[-1]["terminology"]["type"] == ["99MEDSEG", "101", "Low confidence"]
    # Slicer's reference geometry of the labelmap's grid, closed by the "&" Slicer's parser needs
    assert seg["conversionParameters"] == [{"name": "Reference image geometry", "value": reference_geometry(image),
                                            "description": seg["conversionParameters"][0]["description"]}]
    assert nrrd.read_header(str(path))["Segmentation_ConversionParameters"].endswith("&")
    np.testing.assert_allclose(seg["ijkToLPS"], ijk_to_lps(image), atol=1e-12)
    voxels = seg["voxels"]
    assert voxels.shape == (2, 7, 6, 5)  # layers, then I, J, K
    np.testing.assert_array_equal(voxels[0], labelmap.transpose(2, 1, 0))
    np.testing.assert_array_equal(voxels[1], low_confidence_mask(labelmap.shape).transpose(2, 1, 0))

    data, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior"
    assert header["kinds"] == ["list", "domain", "domain", "domain"]
    directions = ROTATION_FLIP * np.array(SPACING)  # columns: axis directions times spacing
    np.testing.assert_allclose(header["space directions"][1:], directions.T, atol=1e-12)
    np.testing.assert_allclose(header["space origin"], ORIGIN, atol=1e-12)
    np.testing.assert_array_equal(data, voxels)
    parotid_tags = header["Segment1_Tags"]
    assert ("TerminologyEntry:Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
            "~SCT^45289007^Parotid gland~SCT^24028007^Right~Anatomic codes - DICOM master list~^^~^^") in parotid_tags


def test_segmentation_round_trip(tmp_path, labelmap):
    image = make_image(labelmap)
    path = tmp_path / "out.seg.nrrd"
    mask = low_confidence_mask(labelmap.shape)
    write_segmentation(image, SEG_LABELS, path, [("Low confidence", (1.0, 1.0, 0.0), array_to_image(mask, image))])
    back, labels = read_segmentation(path)
    assert_same_geometry(image, back, 1e-9)
    assert [(label.value, label.name) for label in labels] == [(1, "Brainstem"), (2, "Right Parotid"), (3, "Liver"),
                                                              (9, "Nothing here"), (10, "Low confidence")]
    for read, written in zip(labels, SEG_LABELS):
        np.testing.assert_allclose(read.color, expected_color(written), atol=1e-6)
        assert read.terminology == expected_terminology(written)
    expected = labelmap.copy()
    expected[mask > 0] = 10  # the later (overlapping) segment wins
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), expected)


def test_segmentation_without_extras_is_3d(tmp_path, labelmap):
    path = tmp_path / "plain.seg.nrrd"
    write_segmentation(make_image(labelmap), SEG_LABELS[:2], path)
    header = nrrd.read_header(str(path))
    assert header["dimension"] == 3 and header["kinds"] == ["domain", "domain", "domain"]
    back, labels = read_segmentation(path)
    assert [label.value for label in labels] == [1, 2]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), np.where(labelmap <= 2, labelmap, 0))


def test_segmentation_with_large_label_values_is_uint16(tmp_path, labelmap):
    labels = labelmap.astype(np.uint16) * 150
    path = tmp_path / "big.seg.nrrd"
    write_segmentation(make_image(labels), [Label(150, "A"), Label(300, "B"), Label(450, "C")], path)
    assert nrrd.read_header(str(path))["type"] == "uint16"
    back, _ = read_segmentation(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)


def test_more_than_255_extra_segments_in_one_layer_widen_it_to_uint16(tmp_path):
    # an extra layer is uint8 (a full-size CT's is 35 MB) until a 256th segment shares it
    labelmap = np.zeros((10, 6, 5), dtype=np.uint8)
    labelmap[0, 0, 0] = 1
    extras = []
    for n in range(260):
        mask = np.zeros(labelmap.shape, dtype=bool)
        mask.flat[n] = True  # disjoint: all in the first extra layer
        extras.append((f"Region {n}", (0.1, 0.2, 0.3), mask))
    path = tmp_path / "many.seg.nrrd"
    write_segmentation(make_image(labelmap), SEG_LABELS[:1], path, extras)
    seg = slicerio.read_segmentation(str(path))
    assert nrrd.read_header(str(path))["type"] == "uint16"
    extra = [s for s in seg["segments"] if s["layer"] == 1]
    assert [s["labelValue"] for s in extra] == list(range(1, 261))
    np.testing.assert_array_equal(seg["voxels"][1].transpose(2, 1, 0).ravel()[:260], np.arange(1, 261))


def test_read_segmentation_of_a_plain_labelmap(tmp_path, labelmap):
    path = tmp_path / "labels.nii.gz"
    write_labelmap(make_image(labelmap), path)
    back, labels = read_segmentation(path)
    assert labels == []
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labelmap)


def test_read_segmentation_of_a_missing_file(tmp_path):
    with pytest.raises(InputError) as error:
        read_segmentation(tmp_path / "missing.seg.nrrd")
    assert_one_line_error(error, tmp_path / "missing.seg.nrrd")


# --- terminology ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["RightParotid", "Right Parotid", "right_parotid", "Parotid_R", "PAROTID RIGHT"])
def test_terminology_matching_ignores_case_spaces_and_underscores(name):
    assert terminology_for(name) == {
        "contextName": "Segmentation category and type - DICOM master list",
        "category": ["SCT", "123037004", "Anatomical Structure"],
        "type": ["SCT", "45289007", "Parotid gland"],
        "typeModifier": ["SCT", "24028007", "Right"],
        "anatomicContextName": "Anatomic codes - DICOM master list",
    }


def test_terminology_codes():
    assert terminology_for("LeftParotid")["typeModifier"] == ["SCT", "7771000", "Left"]
    assert terminology_for("Spinal cord")["type"] == ["SCT", "2748008", "Spinal cord"]
    assert terminology_for("SpinalCord")["contextName"].endswith("3D Slicer General Anatomy list")
    assert terminology_for("Brainstem")["type"] == ["SCT", "119238007", "Brain stem"]  # as in Slicer's DICOM list
    assert terminology_for("LeftGland")["type"][2] == "Salivary gland"
    assert terminology_for("LeftGland")["typeModifier"][2] == "Left"
    assert terminology_for("PTV70")["type"] == ["SCT", "228793007", "PTV"]
    assert terminology_for("PTV")["contextName"] == "Segmentation category and type - SlicerMedSeg"
    assert terminology_for("PTVx") is None
    tumour = terminology_for("Tumour")
    assert tumour["category"] == ["SCT", "49755003", "Morphologically Altered Structure"]
    assert tumour["type"] == ["SCT", "4147007", "Mass"]
    assert "typeModifier" not in terminology_for("Kidney")
    assert terminology_for("Unknown organ") is None
    terminology_for("Liver")["type"][1] = "changed"  # callers get copies
    assert terminology_for("Liver")["type"][1] == "10200004"


def test_default_color():
    assert default_color("Liver", 5) == tuple(round(c / 255, 6) for c in (221, 130, 101))
    assert default_color("Right Kidney", 0) == default_color("Kidney", 0)
    unknown = [default_color("Something", i) for i in range(30)]
    assert all(0.0 <= c <= 1.0 for rgb in unknown for c in rgb)
    assert unknown[0] != unknown[1] and unknown == [default_color("Other", i) for i in range(30)]
