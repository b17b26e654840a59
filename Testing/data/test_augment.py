"""The batch augmentation: the affine is exact where it can be checked by hand, the blur keeps
what it must, and the defaults change nothing an existing recipe relied on."""

import math

import torch

from medseg_core.data.augment import Augmenter, affine_theta, gaussian_blur


def _apply(theta, x, mode="bilinear"):
    grid = torch.nn.functional.affine_grid(theta[None].to(x), [1, 1] + list(x.shape[2:]), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def test_identity_affine_changes_nothing():
    x = torch.randn(1, 1, 5, 6, 7)
    theta = affine_theta([5, 6, 7], [2.5, 1.0, 1.0], torch.eye(3, dtype=torch.float64), [0, 0, 0], [True] * 3)
    assert torch.allclose(_apply(theta, x), x, atol=1e-5)


def test_whole_voxel_shift_moves_the_image_by_one_voxel():
    x = torch.randn(1, 1, 4, 6, 8)
    theta = affine_theta([4, 6, 8], [3.0, 1.0, 1.0], torch.eye(3, dtype=torch.float64), [0, 0, 1.0], [True] * 3)
    out = _apply(theta, x)  # output voxel i samples input voxel i + 1 along x
    assert torch.allclose(out[..., :-1], x[..., 1:], atol=1e-5)


def test_quarter_turn_in_millimetres_on_anisotropic_voxels():
    # 9 voxels of 1 mm along y, 3 of 3 mm along x: the same 9 mm both ways, so a quarter turn in
    # millimetres maps voxel centres onto voxel centres, where a turn in voxel units would not
    y = torch.zeros(1, 1, 1, 9, 3)
    y[0, 0, 0, 1, 1] = 1.0  # 3 mm before the centre along y, on the centre along x
    a = math.pi / 2
    rot = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]],
                       dtype=torch.float64)
    theta = affine_theta([1, 9, 3], [1.0, 1.0, 3.0], rot, [0, 0, 0], [False, True, True])
    out = _apply(theta, y, mode="nearest")
    # output position p samples the input at rot @ p, (py, px) -> (-px, py): the input voxel at
    # (y -3 mm, x 0), 3 mm wide along x, appears at (y 0, x +3 mm), 3 mm wide along y: y indices
    # 3 to 5 and x index 2
    assert out.sum() == 3 and torch.all(out[0, 0, 0, 3:6, 2] == 1)


def test_affine_keeps_labels_integer_and_a_slice_axis_of_one_alone():
    aug = Augmenter(affine_p=1.0, rotate_deg=30.0, zoom=(0.8, 1.2), noise_p=0.0, scale=0.0, shift=0.0, seed=3)
    x = torch.randn(2, 1, 1, 16, 16)
    y = torch.randint(0, 4, (2, 1, 16, 16))
    xa, ya = aug(x, y)
    assert xa.shape == x.shape and ya.shape == y.shape and ya.dtype == torch.long
    assert set(ya.unique().tolist()) <= {0, 1, 2, 3}
    assert not torch.equal(xa, x)


def test_affine_moves_image_and_labels_together():
    aug = Augmenter(affine_p=1.0, rotate_deg=20.0, noise_p=0.0, scale=0.0, shift=0.0, seed=1)
    y = torch.zeros(1, 12, 24, 24, dtype=torch.long)
    y[:, 3:9, 6:18, 8:14] = 1
    x = y[:, None].float() * 10.0
    xa, ya = aug(x, y)
    inside = xa[0, 0][ya[0] == 1]
    outside = xa[0, 0][ya[0] == 0]
    assert inside.mean() > 8.0 and outside.mean() < 1.0


def test_blur_keeps_a_constant_and_the_mean_and_smooths():
    c = torch.full((1, 2, 6, 7, 8), 3.0)
    assert torch.allclose(gaussian_blur(c, 1.0), c, atol=1e-5)
    x = torch.randn(1, 1, 1, 32, 32)
    b = gaussian_blur(x, 1.0)
    assert b.shape == x.shape
    assert abs(float(b.mean() - x.mean())) < 0.05
    assert float(b.std()) < 0.6 * float(x.std())
    assert torch.equal(gaussian_blur(x, 1.0)[:, :, 0], gaussian_blur(x[:, :, 0], 1.0))  # the slice axis is left


def test_defaults_draw_the_same_random_numbers_as_before():
    # off by default: a config without the new options augments exactly as it did
    x, y = torch.randn(2, 1, 4, 8, 8), torch.randint(0, 3, (2, 4, 8, 8))
    a = Augmenter([2], [[1, 2]], seed=5)(x, y)
    b = Augmenter([2], [[1, 2]], blur_p=0.0, affine_p=0.0, seed=5)(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
