"""Sliding-window prediction: coverage, blending and padding."""

import math

import numpy as np

from medseg_core.inference.sliding_window import (STEP_SLACK, gaussian_importance, sliding_window_predict, softmax,
                                                  window_starts)


def test_window_starts_cover_the_axis():
    for size, patch in [(10, 4), (64, 64), (97, 32), (5, 8), (65, 64), (161, 64), (300, 64)]:
        starts = window_starts(size, patch, 0.5)
        assert starts[0] == 0
        assert starts[-1] == max(0, size - patch)
        assert all(b - a <= patch for a, b in zip(starts, starts[1:]))
        # evenly spaced, at most the step (half the window) and STEP_SLACK of it apart
        assert all(b - a <= patch // 2 * (1 + STEP_SLACK) + 1 for a, b in zip(starts, starts[1:]))
    assert window_starts(65, 64, 0.5) == [0, 1]  # one voxel over: still two windows
    assert window_starts(161, 64, 0.5) == [0, 32, 65, 97]  # 97 / 3 = 32.3: within the slack
    assert window_starts(163, 64, 0.5) == [0, 25, 50, 74, 99]  # 99 / 3 = 33: a fifth window


def test_softmax_by_hand():
    p = softmax(np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]], dtype=np.float32), axis=1)
    assert np.allclose(p, [[0.25, 0.75], [0.5, 0.5]])  # and no overflow at large logits


def test_softmax_leaves_the_logits_alone_and_computes_half_precision_in_float32():
    logits = np.array([[0.0, 1.0, 2.0], [-3.0, 0.5, 60000.0]], dtype=np.float16)
    kept = logits.copy()
    p = softmax(logits, axis=1)
    assert p.dtype == np.float32 and np.array_equal(logits, kept)
    e = np.exp([0.0, 1.0, 2.0])
    assert np.allclose(p[0], e / e.sum()) and np.allclose(p[1], [0.0, 0.0, 1.0])


def test_pointwise_predictor_is_reproduced_exactly_and_extra_channels_are_blended_raw():
    # A voxel-wise network gives the same probabilities in every window, so blending is exact; an
    # extra channel (a confidence logit) is averaged as it is, without the softmax.
    img = np.random.default_rng(0).normal(size=(2, 23, 30, 17)).astype(np.float32)

    def pointwise(x):
        return np.concatenate([x, -x.sum(1, keepdims=True), 3 * x[:, :1]], axis=1)

    out = sliding_window_predict(img, pointwise, (8, 16, 8), 3, overlap=0.5, batch_size=3, num_extra=1)
    expected = softmax(pointwise(img[None])[:, :3])[0]
    assert out.shape == (4, 23, 30, 17) and out.dtype == np.float32
    assert np.allclose(out[:3], expected, atol=1e-5)
    assert np.allclose(out[3], 3 * img[0], atol=1e-4)


def test_image_smaller_than_the_patch_is_padded_and_cropped_back():
    img = np.random.default_rng(1).normal(size=(1, 5, 6, 7)).astype(np.float32)
    probs = sliding_window_predict(img, lambda x: np.concatenate([x, -x], 1), (8, 8, 8), 2)
    assert probs.shape == (2, 5, 6, 7)
    assert np.allclose(probs.sum(0), 1.0, atol=1e-5)
    assert np.allclose(probs[1], softmax(np.concatenate([img, -img])[None])[0, 1], atol=1e-5)


def test_gaussian_peaks_in_the_centre():
    w = gaussian_importance((9, 9))
    assert w[4, 4] == w.max() == 1.0 and w[0, 0] < 0.01 + 1e-3


def test_with_starts_the_predictor_learns_each_windows_start_in_the_images_voxels():
    """The start lies where the window's first voxel sits in the unpadded image: negative along an
    axis padded to the window (z here: 5 voxels in windows of 8, one voxel of padding before)."""
    shape, patch = (5, 6, 7), (8, 4, 4)
    img = np.arange(float(math.prod(shape)), dtype=np.float32).reshape(1, *shape)
    seen = []

    def record(batch, starts):
        for window, start in zip(batch, starts):
            seen.append(start)
            src = tuple(slice(max(0, a), min(a + p, n)) for a, p, n in zip(start, patch, shape))
            dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, start))
            assert np.array_equal(window[(slice(None),) + dst], img[(slice(None),) + src])
        return np.concatenate([batch, -batch], 1)

    sliding_window_predict(img, record, patch, 2, with_starts=True, batch_size=2)
    assert {s[0] for s in seen} == {-1}
    assert sorted({s[1] for s in seen}) == window_starts(6, 4, 0.5)
    assert sorted({s[2] for s in seen}) == window_starts(7, 4, 0.5)


def test_an_axis_a_little_longer_than_the_window_runs_in_one_stretched_window(tmp_path):
    from medseg_core.data.preprocess_config import PreprocessConfig
    from medseg_core.inference.predictor import Predictor
    from medseg_core.inference.sliding_window import STRETCH, stretched_patch
    from medseg_core.labels import Label
    from medseg_core.models import ModelCard, save_package
    from medseg_core.models.card import InferenceSpec, NetworkSpec
    from medseg_core.nets import build_network

    # hand-computed: 133 is 5 over 128 (under 1/8 of it): one window of 144 (9 x 16); 145 is too long
    assert stretched_patch((64, 96, 128), (154, 76, 133)) == (64, 96, 144)
    assert stretched_patch((64, 96, 128), (154, 76, 144)) == (64, 96, 144)
    assert stretched_patch((64, 96, 128), (154, 76, 145)) == (64, 96, 128)
    assert stretched_patch((64, 96, 128), (64, 96, 128)) == (64, 96, 128)  # a volume the window's size
    assert stretched_patch((16, 16, 16), (17, 18, 19), multiple=2) == (18, 18, 16)  # 20 > 16 * (1 + 1/8)
    assert STRETCH == 0.125

    spec = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": [4, 8]}
    card = ModelCard(name="tiny", version="1.0.0", description="test", modality="CT", channels=["CT"],
                     labels=[Label(1, "Liver", (0.8, 0.4, 0.3))], preprocessing=PreprocessConfig(),
                     network=NetworkSpec("unet", spec), inference=InferenceSpec([16, 16, 128]))
    pkg = save_package(card, build_network("unet", **spec).state_dict(), tmp_path / "tiny")
    pred = Predictor(pkg, device="cpu", runtime="torch")
    seen = []
    forward = pred._forward
    pred._forward = lambda batch, centers=None: seen.append(batch.shape) or forward(batch, centers)
    image = np.random.default_rng(0).normal(size=(1, 16, 16, 133)).astype(np.float32)
    probs = pred.predict_array(image)[0]
    assert probs.shape == (2, 16, 16, 133) and np.allclose(probs.sum(0), 1, atol=1e-5)
    # one window, not two of 128 overlapping on 123 voxels; this network down-samples once: 133 -> 134
    assert seen == [(1, 1, 16, 16, 134)]
    seen.clear()
    pred.predict_array(np.zeros((1, 16, 16, 150), np.float32))  # 160 > 144: two of the card's windows
    assert seen == [(2, 1, 16, 16, 128)]
    seen.clear()
    pred.predict_array(np.zeros((1, 16, 16, 133), np.float32), fit=True)  # a refine crop keeps its own plan
    assert all(s[-1] == 128 for s in seen)


def test_the_down_sampling_factor_comes_from_the_card_and_a_routed_card_takes_its_parents():
    from types import SimpleNamespace as N

    from medseg_core.inference.predictor import downsampling

    unet = {"features": [8, 16, 32, 64], "strides": [[1, 2, 2], 2, 2]}
    assert downsampling(N(spatial_dims=3, network=N(kwargs=unet))) == (4, 8, 8)
    routed = {"base": {"name": "unet", "kwargs": unet}, "routed": [1]}
    assert downsampling(N(spatial_dims=3, network=N(kwargs=routed))) == (4, 8, 8)
    assert downsampling(N(spatial_dims=3, network=N(kwargs={"snet_feature_channels": 8}))) is None
