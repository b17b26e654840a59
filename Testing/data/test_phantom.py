"""Tests of the synthetic phantom generator medseg_core.data.phantom."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medseg_core.data.phantom import PHANTOM_LABELS, default_direction, make_phantom, write_phantom_dataset


def _arrays(ph):
    return sitk.GetArrayFromImage(ph.image), sitk.GetArrayFromImage(ph.label)


def _centroid_mm(label_image, value):
    idx = np.argwhere(sitk.GetArrayFromImage(label_image) == value).mean(0)[::-1]  # x, y, z index
    return np.array(label_image.TransformContinuousIndexToPhysicalPoint(idx.tolist()))


def _dilate(mask, steps=1):
    for _ in range(steps):
        out = mask.copy()
        for axis in range(3):
            out |= np.roll(mask, 1, axis) | np.roll(mask, -1, axis)
        mask = out
    return mask


def test_geometry_and_types():
    ph = make_phantom()
    for im in (ph.image, ph.label):
        assert im.GetSize() == (64, 64, 48)
        assert im.GetSpacing() == (1.5, 1.5, 3.0)
        assert im.GetOrigin() == (-40.0, 30.0, 12.5)
        assert np.allclose(im.GetDirection(), default_direction())
    d = np.array(ph.image.GetDirection()).reshape(3, 3)
    assert not np.allclose(d, np.eye(3)) and np.allclose(d @ d.T, np.eye(3))
    assert ph.image.GetPixelID() == sitk.sitkInt16 and ph.label.GetPixelID() == sitk.sitkUInt8
    assert [(lab.value, lab.name) for lab in ph.labels] == [
        (1, "Liver"), (2, "SpinalCord"), (3, "Tumour"), (4, "LeftGland"), (5, "RightGland")]
    assert len({lab.color for lab in ph.labels}) == 5


def test_custom_geometry():
    ph = make_phantom(shape=(20, 30, 40), spacing=(1.0, 2.0, 4.0), direction=np.eye(3), origin=(0, 0, 0))
    assert ph.label.GetSize() == (40, 30, 20) and ph.label.GetSpacing() == (1.0, 2.0, 4.0)
    assert ph.label.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert set(np.unique(_arrays(ph)[1])) == {0, 1, 2, 3, 4, 5}


@pytest.mark.parametrize("seed", range(6))
def test_anatomy(seed):
    ph = make_phantom(seed=seed)
    image, label = _arrays(ph)
    counts = np.bincount(label.ravel(), minlength=6)
    assert set(np.unique(label)) == {0, 1, 2, 3, 4, 5}
    assert counts[1] > 0.05 * np.count_nonzero(image > -500)  # liver: a good share of the body
    assert 20 <= counts[4] <= 250 and 20 <= counts[5] <= 250  # small glands
    assert counts[2] > counts[4] and counts[3] > counts[4]
    tumour = label == 3
    assert np.all(np.isin(label[_dilate(tumour)], (1, 3)))  # surrounded by liver
    assert image[0, 0, 0] < -900 and image[label == 0].min() < -900  # air outside
    liver_hu, tumour_hu = np.median(image[label == 1]), np.median(image[tumour])
    assert 45 < liver_hu < 75 and 8 < liver_hu - tumour_hu < 35  # blur and noise blunt the contrast
    assert 55 < np.median(image[label == 4]) < 110 and 55 < np.median(image[label == 5]) < 110


@pytest.mark.parametrize("direction", [None, np.eye(3)])
def test_left_right_and_posterior_follow_the_direction(direction):
    ph = make_phantom(direction=direction)
    left, right = _centroid_mm(ph.label, 4), _centroid_mm(ph.label, 5)
    liver, cord = _centroid_mm(ph.label, 1), _centroid_mm(ph.label, 2)
    assert left[0] > right[0]  # LPS: +x is the patient's left
    assert liver[0] < cord[0]  # liver on the right
    assert cord[1] > liver[1]  # LPS: +y is posterior


def test_seeds():
    a, b = make_phantom(seed=0), make_phantom(seed=1)
    assert not np.array_equal(_arrays(a)[1], _arrays(b)[1])
    assert not np.array_equal(_arrays(a)[0], _arrays(b)[0])
    again = make_phantom(seed=0)
    assert np.array_equal(_arrays(a)[0], _arrays(again)[0]) and np.array_equal(_arrays(a)[1], _arrays(again)[1])


def test_no_noise_no_blur_is_piecewise_constant():
    image, label = _arrays(make_phantom(noise_sd=0, blur_sigma_mm=0))
    assert len(np.unique(image[label == 1])) == 1 and len(np.unique(image[label == 3])) == 1


@pytest.mark.parametrize("seed", range(4))
def test_label_noise_changes_only_the_tumour_boundary(seed):
    clean, noisy = make_phantom(seed=seed), make_phantom(seed=seed, label_noise=0.8)
    image_c, label_c = _arrays(clean)
    image_n, label_n = _arrays(noisy)
    assert np.array_equal(image_c, image_n)
    changed = label_c != label_n
    assert changed.any()
    assert set(np.unique(label_c[changed])) <= {1, 3} and set(np.unique(label_n[changed])) <= {1, 3}
    tumour = label_c == 3
    boundary = _dilate(tumour) & ~tumour | tumour & ~_dilate(~tumour)
    assert np.all(_dilate(boundary, 2)[changed])  # within 2 voxels of the tumour contour
    assert np.all(np.isin(label_n[_dilate(label_n == 3)], (1, 3)))  # still inside the liver
    assert (label_n == 3).any()


def test_label_noise_range():
    with pytest.raises(ValueError):
        make_phantom(label_noise=1.5)


@pytest.mark.parametrize("seed", range(3))
def test_gland_scale_shrinks_only_the_glands(seed):
    image_a, label_a = _arrays(make_phantom(seed=seed, shape=(48, 96, 96), noise_sd=0))
    image_b, label_b = _arrays(make_phantom(seed=seed, shape=(48, 96, 96), noise_sd=0, gland_scale=0.6))
    for value in (4, 5):
        ratio = np.count_nonzero(label_b == value) / np.count_nonzero(label_a == value)
        assert 0.6 ** 3 * 0.7 < ratio < 0.6 ** 3 * 1.3  # volume scales with the cube of the radius
        assert np.all((label_a == value)[label_b == value])  # the small gland lies inside the large one
    glands = _dilate((label_a == 4) | (label_a == 5), 3)  # the blur reaches a few voxels further
    assert np.array_equal(label_a[~glands], label_b[~glands]) and np.allclose(image_a[~glands], image_b[~glands], atol=2)
    with pytest.raises(ValueError):
        make_phantom(gland_scale=0)


def test_write_dataset(tmp_path):
    folder = write_phantom_dataset(tmp_path / "Dataset001_Phantom", 5, seed=3, shape=(24, 32, 32))
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"} and ds["numTraining"] == 5 and ds["file_ending"] == ".nii.gz"
    assert ds["labels"] == {"background": 0, **{lab.name: lab.value for lab in PHANTOM_LABELS}}
    splits = json.loads((folder / "splits.json").read_text())
    assert len(splits["train"]) == 4 and len(splits["validation"]) == 1
    assert sorted(splits["train"] + splits["validation"]) == [f"phantom_{i:03d}" for i in range(5)]
    for i in range(5):
        image = sitk.ReadImage(str(folder / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz"))
        label = sitk.ReadImage(str(folder / "labelsTr" / f"phantom_{i:03d}.nii.gz"))
        assert image.GetSize() == label.GetSize() == (32, 32, 24)
        assert label.GetPixelID() == sitk.sitkUInt8 and image.GetPixelID() == sitk.sitkInt16
        for im in (image, label):
            assert np.allclose(im.GetDirection(), default_direction(), atol=1e-4)
            assert np.allclose(im.GetOrigin(), (-40.0, 30.0, 12.5), atol=1e-4)
            assert np.allclose(im.GetSpacing(), (1.5, 1.5, 3.0), atol=1e-4)
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "phantom_000.nii.gz")))
    second = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "phantom_001.nii.gz")))
    assert not np.array_equal(first, second)
