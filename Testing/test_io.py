"""Tests of medseg_core.io on small synthetic images (no real data)."""

from __future__ import annotations

import os
from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from medseg_core.errors import InputError
from medseg_core.io import (OutputSet, array_to_image, atomic_output, check_writable_dir, default_color,
                            is_constant, read_image, read_segmentation, terminology_for, write_float_volume,
                            write_image, write_labelmap, write_segmentation)
from medseg_core.io.segmentation import ijk_to_lps, reference_geometry
from medseg_core.labels import Label

SPACING = (0.7, 1.3, 3.0)
ORIGIN = (-12.5, 30.25, 7.0)


def rotation_z(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


ROTATION = rotation_z(30.0)
ROTATION_FLIP = ROTATION @ np.diag([1.0, -1.0, 1.0])  # left-handed: a rotation plus an axis flip


def make_image(array_zyx: np.ndarray, direction: np.ndarray = ROTATION_FLIP) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx, isVector=False)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(direction.ravel().tolist())
    return image


def assert_same_geometry(a: sitk.Image, b: sitk.Image, tol: float) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol)


def assert_one_line_error(error: pytest.ExceptionInfo, path) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(str(path))


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 2000, size=(5, 6, 7)).astype(np.int16)


@pytest.fixture
def labelmap() -> np.ndarray:
    labels = np.zeros((5, 6, 7), dtype=np.uint8)
    labels[1:3, 1:4, 1:5] = 1
    labels[3:5, 2:5, 2:6] = 2
    labels[0, 0, 6] = 3
    return labels


# --- images ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ext, tol", [(".nii.gz", 1e-5), (".nrrd", 1e-9), (".mha", 1e-9)])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_image_round_trip_keeps_geometry(tmp_path, volume, ext, tol, dtype):
    image = make_image(volume.astype(dtype))
    path = tmp_path / f"ct{ext}"
    write_image(image, path)
    back = read_image(path)
    assert_same_geometry(image, back, tol)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), volume.astype(dtype))
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left


@pytest.mark.parametrize("highest, pixel_type", [(200, sitk.sitkUInt8), (300, sitk.sitkUInt16)])
def test_write_labelmap_picks_pixel_type(tmp_path, labelmap, highest, pixel_type):
    labels = labelmap.astype(np.int32)
    labels[0, 0, 0] = highest
    path = tmp_path / "labels.nrrd"
    write_labelmap(make_image(labels), path)
    back = read_image(path)
    assert back.GetPixelID() == pixel_type
    assert_same_geometry(make_image(labels), back, 1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)


def test_write_float_volume_is_float32(tmp_path, volume):
    path = tmp_path / "prob.nii.gz"
    write_float_volume(make_image(volume), path)
    back = read_image(path)
    assert back.GetPixelID() == sitk.sitkFloat32
    assert_same_geometry(make_image(volume), back, 1e-5)


def test_array_to_image_copies_geometry(volume):
    reference = make_image(volume)
    image = array_to_image(volume > 0, reference)
    assert image.GetPixelID() == sitk.sitkUInt8
    assert_same_geometry(reference, image, 0.0)
    with pytest.raises(ValueError):
        array_to_image(np.zeros((7, 6, 5)), reference)


def test_4d_image_with_one_time_point_reads_as_3d(tmp_path, volume):
    path = tmp_path / "one_frame.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(volume[np.newaxis], isVector=False), str(path))
    back = read_image(path)
    assert back.GetDimension() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), volume)


def test_is_constant(volume):
    assert is_constant(make_image(np.full((4, 4, 4), 3.5, dtype=np.float32)))
    assert not is_constant(make_image(volume))


# --- DICOM ----------------------------------------------------------------------------------

def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str) -> None:
    """Writes an int16 volume as one DICOM file per slice (after SimpleITK's DicomSeriesFromArray)."""
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
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        for tag, value in series_tags:
            slice_k.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_k.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
        slice_k.SetMetaData("0020|0013", str(k + 1))
        writer.SetFileName(str(folder / f"{series_uid[-4:]}_{k:03d}.dcm"))
        writer.Execute(slice_k)


def test_dicom_series_round_trip(tmp_path, volume):
    # DICOM slices are stacked along row x column, so a series always reads back right-handed:
    # the round trip is exact for a proper rotation.
    image = make_image(volume, ROTATION)
    write_dicom_series(image, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.7.1001")
    other = make_image(volume[:3], ROTATION)  # a smaller second series in the same folder
    write_dicom_series(other, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.7.2002")
    back = read_image(tmp_path / "dicom")
    assert_same_geometry(image, back, 1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), volume)


def test_folder_without_dicom_is_an_input_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(InputError) as error:
        read_image(tmp_path)
    assert_one_line_error(error, tmp_path)


# --- bad inputs -----------------------------------------------------------------------------

def _bad_inputs(folder: Path) -> dict[str, Path]:
    paths = {}
    paths["missing"] = folder / "missing.nii.gz"
    paths["text"] = folder / "text.nii.gz"
    paths["text"].write_text("this is not an image\n")
    paths["2d"] = folder / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 7), np.int16)), str(paths["2d"]))
    paths["single-slice"] = folder / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 6, 7), np.int16)), str(paths["single-slice"]))
    paths["4d"] = folder / "time.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.float32), isVector=False), str(paths["4d"]))
    paths["vector"] = folder / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True), str(paths["vector"]))
    for name, bad in (("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf)):
        voxels = np.ones((4, 5, 6), np.float32)
        voxels[1, 2, 3] = bad
        paths[name] = folder / f"{name}.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(voxels), str(paths[name]))
    return paths


@pytest.mark.parametrize("kind, words", [
    ("missing", "does not exist"), ("text", "cannot be read"), ("2d", "is 2D"), ("single-slice", "is 2D"),
    ("4d", "is 4D"), ("vector", "components per voxel"), ("nan", "NaN"), ("inf", "infinite"), ("-inf", "infinite"),
])
def test_bad_input_is_a_one_line_input_error(tmp_path, kind, words):
    path = _bad_inputs(tmp_path)[kind]
    with pytest.raises(InputError) as error:
        read_image(path)
    assert_one_line_error(error, path)
    assert words in str(error.value)
    assert error.value.exit_code == 2


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
    write_segmentation(image, SEG_LABELS, path, [("Low confidence", (1.0, 1.0, 0.0), low_confidence_mask(labelmap.shape))])
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


# --- atomic output --------------------------------------------------------------------------

@pytest.mark.parametrize("name, ext", [("seg.seg.nrrd", ".seg.nrrd"), ("ct.nii.gz", ".nii.gz"), ("a.mha", ".mha")])
def test_atomic_output_writes_through_a_hidden_temporary(tmp_path, name, ext):
    final = tmp_path / name
    with atomic_output(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(ext)
        tmp.write_text("done")
    assert final.read_text() == "done"
    assert os.listdir(tmp_path) == [name]


def test_atomic_output_leaves_nothing_when_the_body_raises(tmp_path):
    final = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_output(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("failed")
    assert os.listdir(tmp_path) == []


def test_atomic_output_keeps_the_old_file_when_the_body_raises(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(final) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
    assert final.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_output_set_commits_all(tmp_path):
    with OutputSet() as outputs:
        for name in ("a.nii.gz", "b.seg.nrrd"):
            outputs.stage(tmp_path / name).write_text(name)
        assert not (tmp_path / "a.nii.gz").exists()
    assert sorted(os.listdir(tmp_path)) == ["a.nii.gz", "b.seg.nrrd"]


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_output_set_aborts_cleanly(tmp_path, exception):
    (tmp_path / "a.nii.gz").write_text("old")
    with pytest.raises(exception):
        with OutputSet() as outputs:
            outputs.stage(tmp_path / "a.nii.gz").write_text("new")
            outputs.stage(tmp_path / "b.nii.gz").write_text("new")
            raise exception
    assert os.listdir(tmp_path) == ["a.nii.gz"]
    assert (tmp_path / "a.nii.gz").read_text() == "old"


def test_output_set_refuses_to_commit_an_unwritten_output(tmp_path):
    outputs = OutputSet()
    outputs.stage(tmp_path / "a.txt").write_text("a")
    outputs.stage(tmp_path / "b.txt")
    with pytest.raises(FileNotFoundError):
        outputs.commit()
    assert os.listdir(tmp_path) == []


def test_check_writable_dir(tmp_path):
    created = check_writable_dir(tmp_path / "new" / "nested")
    assert created.is_dir()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(InputError) as error:
        check_writable_dir(blocker / "sub")
    assert str(error.value) == f"{blocker / 'sub'}: output folder is not writable"


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
