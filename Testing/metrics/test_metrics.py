"""Tests of medseg_core.metrics: hand-made cases, empty-mask conventions, brute force and MONAI."""

import doctest
import importlib.util
import math

import numpy as np
import pytest

from medseg_core import metrics
from medseg_core.metrics import (assd, compute_case_metrics, dice, hausdorff_distance, hd95, jaccard, precision,
                                 recall, surface_distances, volume_difference, volume_ml)
from medseg_core.metrics import overlap


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def _blob(rng, shape=(24, 28, 26), n=3):
    """A random union of ellipsoids."""
    z, y, x = np.indices(shape)
    m = np.zeros(shape, bool)
    for _ in range(n):
        c = rng.uniform(6, np.array(shape) - 6)
        r = rng.uniform(2.5, 6, size=3)
        m |= ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 < 1
    return m


def _surface_bruteforce(mask):
    padded = np.pad(mask, 1)
    interior = padded.copy()
    for axis in range(mask.ndim):
        interior &= np.roll(padded, 1, axis) & np.roll(padded, -1, axis)
    return np.argwhere((padded & ~interior)[tuple(slice(1, -1) for _ in range(mask.ndim))])


def test_doctests():
    assert doctest.testmod(overlap).failed == 0


def test_identical_masks():
    m = _box((10, 12, 14), (2, 3, 4), (7, 9, 10))
    assert dice(m, m) == 1.0 and jaccard(m, m) == 1.0 and precision(m, m) == 1.0 and recall(m, m) == 1.0
    assert volume_difference(m, m) == 0.0
    assert hd95(m, m, (3.0, 1.0, 0.5)) == 0.0 and assd(m, m, (3.0, 1.0, 0.5)) == 0.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_shifted_cubes_anisotropic(axis):
    spacing = (3.0, 1.5, 0.7)
    k = 3
    lo, hi = [4, 4, 4], [9, 9, 9]
    ref = _box((20, 20, 20), lo, hi)
    lo[axis] += k
    hi[axis] += k
    pred = _box((20, 20, 20), lo, hi)
    assert hausdorff_distance(pred, ref, spacing) == pytest.approx(k * spacing[axis])
    assert hd95(pred, ref, spacing) == pytest.approx(k * spacing[axis])


def test_two_squares_k_apart_2d_like():
    # Two 4x4 squares on one slice, k = 5 voxels apart along x (spacing 0.8 mm).
    ref = _box((1, 12, 20), (0, 4, 2), (1, 8, 6))
    pred = _box((1, 12, 20), (0, 4, 7), (1, 8, 11))
    assert hausdorff_distance(pred, ref, (2.5, 1.2, 0.8)) == pytest.approx(5 * 0.8)
    assert dice(pred, ref) == 0.0
    # True 2-D arrays too.
    assert hausdorff_distance(pred[0], ref[0], (1.2, 0.8)) == pytest.approx(5 * 0.8)


def test_offset_boxes_known_values():
    # 4x4x4 boxes offset by 1 along x: overlap 4*4*3 = 48, each 64 voxels.
    ref = _box((8, 8, 9), (2, 2, 2), (6, 6, 6))
    pred = _box((8, 8, 9), (2, 2, 3), (6, 6, 7))
    assert dice(pred, ref) == pytest.approx(2 * 48 / 128)
    assert jaccard(pred, ref) == pytest.approx(48 / 80)
    assert precision(pred, ref) == pytest.approx(48 / 64)
    assert recall(pred, ref) == pytest.approx(48 / 64)
    pred_big = _box((8, 8, 9), (2, 2, 2), (6, 6, 7))  # 80 voxels
    assert volume_difference(pred_big, ref) == pytest.approx(16 / 64)
    assert volume_ml(ref, (2.0, 1.0, 0.5)) == pytest.approx(64 * 1.0 / 1000)


def test_empty_conventions():
    empty = np.zeros((6, 6, 6), bool)
    m = _box((6, 6, 6), (1, 1, 1), (4, 4, 4))
    for f in (dice, jaccard, precision, recall, volume_difference):
        assert math.isnan(f(empty, empty)) and math.isnan(f(m, empty))
    assert dice(empty, m) == 0.0 and precision(empty, m) == 0.0 and recall(empty, m) == 0.0
    assert volume_difference(empty, m) == -1.0
    for f in (hd95, assd, hausdorff_distance):
        assert math.isnan(f(empty, empty)), f
        assert math.isnan(f(m, empty)), f
        assert f(empty, m) == math.inf, f


def test_mask_touching_the_border():
    ref = _box((5, 5, 5), (0, 0, 0), (5, 5, 5))  # the whole array: every border voxel is surface
    pred = _box((5, 5, 5), (0, 0, 0), (5, 5, 4))
    assert hausdorff_distance(pred, ref, (1.0, 1.0, 2.0)) == pytest.approx(2.0)


def test_against_bruteforce_random_blobs():
    rng = np.random.default_rng(3)
    spacing = np.array([2.5, 0.9, 1.3])
    for _ in range(3):
        pred, ref = _blob(rng), _blob(rng)
        sp, sr = _surface_bruteforce(pred) * spacing, _surface_bruteforce(ref) * spacing
        d = np.sqrt(((sp[:, None, :] - sr[None, :, :]) ** 2).sum(-1))
        d_pr, d_rp = d.min(1), d.min(0)
        got_pr, got_rp = surface_distances(pred, ref, tuple(spacing))
        np.testing.assert_allclose(np.sort(got_pr), np.sort(d_pr), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.sort(got_rp), np.sort(d_rp), rtol=1e-5, atol=1e-5)
        expected = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
        assert hd95(pred, ref, tuple(spacing)) == pytest.approx(expected, rel=1e-5)
        assert assd(pred, ref, tuple(spacing)) == pytest.approx(np.r_[d_pr, d_rp].mean(), rel=1e-5)


def test_crop_does_not_change_result():
    rng = np.random.default_rng(0)
    pred, ref = _blob(rng), _blob(rng)
    big_p, big_r = np.zeros((60, 70, 80), bool), np.zeros((60, 70, 80), bool)
    big_p[30:54, 20:48, 40:66], big_r[30:54, 20:48, 40:66] = pred, ref
    assert hd95(big_p, big_r, (2.0, 1.0, 1.0)) == pytest.approx(hd95(pred, ref, (2.0, 1.0, 1.0)))


needs_monai = pytest.mark.skipif(importlib.util.find_spec("monai") is None, reason="monai is not installed")


@needs_monai
def test_dice_agrees_with_monai():
    import torch
    from monai.metrics import compute_dice

    rng = np.random.default_rng(5)
    for _ in range(3):
        pred, ref = _blob(rng), _blob(rng)
        m_dice = compute_dice(torch.from_numpy(pred[None, None].astype(np.float32)),
                              torch.from_numpy(ref[None, None].astype(np.float32)), include_background=True)
        assert dice(pred, ref) == pytest.approx(float(m_dice), rel=1e-5)


@needs_monai
def test_distances_agree_with_monai():
    if importlib.util.find_spec("scipy") is None:
        pytest.skip("MONAI's Hausdorff/surface distances need scipy (binary_erosion), which is not installed; "
                    "test_against_bruteforce_random_blobs checks the same definition")
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(7)
    spacing = (2.0, 0.8, 1.1)
    for _ in range(3):
        pred, ref = _blob(rng), _blob(rng)
        p = torch.from_numpy(pred[None, None].astype(np.float32))
        r = torch.from_numpy(ref[None, None].astype(np.float32))
        m_hd = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=list(spacing))
        m_assd = compute_average_surface_distance(p, r, include_background=True, symmetric=True,
                                                  spacing=list(spacing))
        assert hd95(pred, ref, spacing) == pytest.approx(float(m_hd), rel=1e-4)
        assert assd(pred, ref, spacing) == pytest.approx(float(m_assd), rel=1e-4)


def test_compute_case_metrics():
    ref = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 2:6] = 1
    pred[2:6, 2:6, 3:7] = 1
    ref[7:9, 7:9, 7:9] = 2  # missed in the prediction
    pred[0:1, 0:2, 8:10] = 3  # absent from the reference
    out = compute_case_metrics(pred, ref, (2.0, 1.0, 1.0), [1, 2, 3])
    assert set(out) == {1, 2, 3}
    assert set(out[1]) == set(metrics.METRIC_NAMES)
    assert out[1]["dice"] == pytest.approx(0.75)
    assert out[1]["hd95"] == pytest.approx(1.0)
    assert out[1]["volume_ref_ml"] == pytest.approx(64 * 2.0 / 1000)
    assert out[2]["dice"] == 0.0 and out[2]["hd95"] == math.inf
    assert math.isnan(out[3]["dice"]) and math.isnan(out[3]["hd95"]) and out[3]["volume_pred_ml"] > 0
