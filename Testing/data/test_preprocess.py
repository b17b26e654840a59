"""Preprocessing and the way back keep the input's geometry exactly."""

import numpy as np
import SimpleITK as sitk

from medseg_core.data.preprocess import PreprocessConfig, Preprocessor, probabilities_to_labels, to_input_grid
from medseg_core.metrics import dice


def _one_hot(label: np.ndarray, n: int) -> np.ndarray:
    return np.stack([(label == c).astype(np.float32) for c in range(n)])


def _same_geometry(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-12)


def test_reorient_and_crop_round_trip_is_exact(phantom):
    # Same spacing: only a permutation/flip and a crop, so the labels come back voxel for voxel.
    assert np.linalg.det(np.reshape(phantom.image.GetDirection(), (3, 3))) < 0  # non-identity, with a flip
    prep = Preprocessor(PreprocessConfig(spacing=None, crop_to_body=True, modality="CT",
                                         normalization=[{"scheme": "ct", "clip": [-1000, 1000], "mean": 0, "std": 500}]))
    pre = prep([phantom.image], phantom.label)
    assert pre.image.shape[1:] == pre.label.shape
    assert np.prod(pre.label.shape) < np.prod(sitk.GetArrayViewFromImage(phantom.label).shape)  # cropped
    d = np.reshape(pre.grid.direction, (3, 3))  # reoriented to the closest LPS axes (10 degree tilt stays)
    assert np.all(np.diag(d) > 0.98) and np.linalg.det(d) > 0
    back = probabilities_to_labels(_one_hot(pre.label, 6), pre.grid, phantom.image)
    np.testing.assert_array_equal(back, sitk.GetArrayFromImage(phantom.label))


def test_resampled_round_trip_keeps_geometry_and_shape(phantom):
    # Anisotropic input (1.5, 1.5, 3.0) to isotropic 2 mm and back.
    prep = Preprocessor(PreprocessConfig(spacing=[2.0, 2.0, 2.0], modality="CT",
                                         normalization=[{"scheme": "zscore"}]))
    pre = prep([phantom.image], phantom.label)
    np.testing.assert_allclose(pre.grid.spacing, (2.0, 2.0, 2.0))
    back = probabilities_to_labels(_one_hot(pre.label, 6), pre.grid, phantom.image)
    truth = sitk.GetArrayFromImage(phantom.label)
    assert back.shape == truth.shape
    assert dice(back == 1, truth == 1) > 0.95  # the large organ survives two resamplings
    m = to_input_grid(np.ones(pre.label.shape, np.float32), pre.grid, phantom.image)
    assert m.min() == 0.0 and m.max() == 1.0 and (m == 1.0).mean() > 0.3  # ones inside, default outside
    out = sitk.GetImageFromArray(m)
    out.CopyInformation(phantom.image)
    _same_geometry(out, phantom.image)


def test_normalisation_is_recorded_and_repeated(phantom):
    cfg = PreprocessConfig(normalization=[{"scheme": "ct", "clip": [-100, 200], "mean": 50.0, "std": 10.0}])
    restored = PreprocessConfig.from_dict(cfg.to_dict())
    a = Preprocessor(cfg)([phantom.image]).image
    b = Preprocessor(restored)([phantom.image]).image
    np.testing.assert_array_equal(a, b)
    assert a.min() >= (-100 - 50) / 10 - 1e-6 and a.max() <= (200 - 50) / 10 + 1e-6


def test_resampling_only_the_covered_region_equals_resampling_everything(phantom):
    prep = Preprocessor(PreprocessConfig(spacing=[2.0, 2.5, 2.0], modality="CT", normalization=[{"scheme": "zscore"}]))
    pre = prep([phantom.image], phantom.label)
    rng = np.random.default_rng(0)
    probs = rng.random((3,) + pre.label.shape).astype(np.float32)
    probs /= probs.sum(0)
    fast = probabilities_to_labels(probs, pre.grid, phantom.image)
    full = []
    for c in range(3):  # the plain way: every class over the whole input grid
        img = sitk.Resample(pre.grid.image(probs[c]), phantom.image, sitk.Transform(), sitk.sitkLinear,
                            1.0 if c == 0 else 0.0, sitk.sitkFloat32)
        full.append(sitk.GetArrayFromImage(img))
    np.testing.assert_array_equal(fast, np.argmax(np.stack(full), axis=0))


def test_restricting_to_the_foreground_box_is_exact(phantom):
    # Background wins everywhere except in a small blob; the fast path resamples only around it
    # and must still give the argmax of resampling every class over the whole input grid.
    prep = Preprocessor(PreprocessConfig(spacing=[2.0, 2.5, 2.0], modality="CT", normalization=[{"scheme": "zscore"}]))
    pre = prep([phantom.image], phantom.label)
    rng = np.random.default_rng(1)
    probs = rng.random((3,) + pre.label.shape).astype(np.float32) * 0.3
    probs[0] += 0.6
    z, y, x = (s // 2 for s in pre.label.shape)
    probs[1, z - 3:z + 3, y - 4:y + 2, x - 2:x + 5] += 1.0
    probs[2, z:z + 3, y - 3:y, x:x + 4] += 2.0
    probs /= probs.sum(0)
    fast = probabilities_to_labels(probs, pre.grid, phantom.image)
    full = [sitk.GetArrayFromImage(sitk.Resample(pre.grid.image(probs[c]), phantom.image, sitk.Transform(),
                                                 sitk.sitkLinear, 1.0 if c == 0 else 0.0, sitk.sitkFloat32))
            for c in range(3)]
    expected = np.argmax(np.stack(full), axis=0)
    assert (expected == 1).sum() > 50 and (expected == 2).sum() > 10
    np.testing.assert_array_equal(fast, expected)
    all_background = np.zeros_like(probs)
    all_background[0] = 1.0
    assert not probabilities_to_labels(all_background, pre.grid, phantom.image).any()


def test_each_class_resampled_only_in_its_own_box_is_exact(phantom):
    # Four classes in blobs apart, one of them (3) ahead of the background only where class 1 is
    # ahead of it too, two (1, 2) overlapping at a corner: each class is resampled only around
    # where it beats the background, and the labels equal the plain argmax of every class over
    # the whole input grid, on the phantom's tilted, flipped, anisotropic grid.
    prep = Preprocessor(PreprocessConfig(spacing=[2.0, 2.5, 3.0], modality="CT", normalization=[{"scheme": "zscore"}]))
    pre = prep([phantom.image], phantom.label)
    rng = np.random.default_rng(2)
    probs = rng.random((5,) + pre.label.shape).astype(np.float32) * 0.2
    probs[0] += 0.7
    z, y, x = (s // 2 for s in pre.label.shape)
    probs[1, z - 4:z + 2, y - 4:y + 2, x - 3:x + 3] += 1.5
    probs[2, z:z + 4, y:y + 3, x:x + 5] += 1.4
    probs[3, z - 3:z, y - 3:y, x - 2:x + 1] += 1.0
    probs[4, 1:4, 1:4, 1:5] += 2.0
    probs /= probs.sum(0)
    fast = probabilities_to_labels(probs, pre.grid, phantom.image)
    full = [sitk.GetArrayFromImage(sitk.Resample(pre.grid.image(probs[c]), phantom.image, sitk.Transform(),
                                                 sitk.sitkLinear, 1.0 if c == 0 else 0.0, sitk.sitkFloat32))
            for c in range(5)]
    expected = np.argmax(np.stack(full), axis=0)
    assert all((expected == c).sum() > 5 for c in (1, 2, 4)) and not (expected == 3).any()
    np.testing.assert_array_equal(fast, expected)
