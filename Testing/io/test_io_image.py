"""Images, DICOM series and bad inputs: geometry kept exactly, one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_helpers import write_dicom_series
from io_helpers import ROTATION, assert_one_line_error, assert_same_geometry, make_image
from medseg_core.errors import InputError
from medseg_core.io import array_to_image, is_constant, read_image, write_float_volume, write_image, write_labelmap


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


def test_a_compressed_series_is_not_mistaken_for_a_cut_short_one(tmp_path):
    from medseg_core.data.phantom import make_phantom

    image = sitk.Cast(make_phantom(shape=(8, 128, 128), seed=1).image, sitk.sitkInt16)
    write_dicom_series(image, tmp_path / "series", "1.2.826.0.1.3680043.2.1125.7", compress=True)
    smallest = min(p.stat().st_size for p in (tmp_path / "series").iterdir())
    assert smallest < 128 * 128 * 2  # a slice smaller than its raw pixels: the size check must not apply
    assert read_image(tmp_path / "series").GetSize() == image.GetSize()


def test_the_shared_chest_series_passes_the_door():
    folder = Path(__file__).resolve().parents[3] / "shared" / "data" / "other-ct" / "chest_dicom"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the shared data are optional)")
    assert read_image(folder).GetSize()[:2] == (512, 512)  # JPEG-compressed slices, smaller than raw


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
