"""Sliding-window prediction: coverage, blending and padding."""

import math

import torch

from medseg_core.inference.sliding_window import gaussian_importance, sliding_window_predict, window_starts


def test_window_starts_cover_the_axis():
    for size, patch in [(10, 4), (64, 64), (97, 32), (5, 8)]:
        starts = window_starts(size, patch, 0.5)
        assert starts[0] == 0
        assert starts[-1] == max(0, size - patch)
        assert all(b - a <= patch for a, b in zip(starts, starts[1:]))


def test_pointwise_predictor_is_reproduced_exactly():
    # A voxel-wise network gives the same probabilities in every window, so blending is exact.
    torch.manual_seed(0)
    img = torch.randn(2, 23, 30, 17)

    def pointwise(x):
        return torch.cat([x, -x.sum(1, keepdim=True)], dim=1)

    probs = sliding_window_predict(img, pointwise, (8, 16, 8), 3, overlap=0.5, batch_size=3)
    expected = torch.softmax(pointwise(img[None]), 1)[0]
    assert probs.shape == (3, 23, 30, 17)
    assert torch.allclose(probs, expected, atol=1e-5)


def test_image_smaller_than_the_patch_is_padded_and_cropped_back():
    img = torch.randn(1, 5, 6, 7)
    probs = sliding_window_predict(img, lambda x: torch.cat([x, -x], 1), (8, 8, 8), 2)
    assert probs.shape == (2, 5, 6, 7)
    assert torch.allclose(probs.sum(0), torch.ones(5, 6, 7), atol=1e-5)


def test_gaussian_peaks_in_the_centre():
    w = gaussian_importance((9, 9))
    assert w[4, 4] == w.max() == 1.0 and w[0, 0] < 0.01 + 1e-3


def test_with_starts_the_predictor_learns_each_windows_start_in_the_images_voxels():
    """The start lies where the window's first voxel sits in the unpadded image: negative along an
    axis padded to the window (z here: 5 voxels in windows of 8, one voxel of padding before)."""
    shape, patch = (5, 6, 7), (8, 4, 4)
    img = torch.arange(float(math.prod(shape))).reshape(1, *shape)
    seen = []

    def record(batch, starts):
        for window, start in zip(batch, starts):
            seen.append(start)
            src = tuple(slice(max(0, a), min(a + p, n)) for a, p, n in zip(start, patch, shape))
            dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, start))
            assert torch.equal(window[(slice(None),) + dst], img[(slice(None),) + src])
        return torch.cat([batch, -batch], 1)

    sliding_window_predict(img, record, patch, 2, with_starts=True, batch_size=2)
    assert {s[0] for s in seen} == {-1}
    assert sorted({s[1] for s in seen}) == window_starts(6, 4, 0.5)
    assert sorted({s[2] for s in seen}) == window_starts(7, 4, 0.5)
