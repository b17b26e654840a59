"""The per-organ component rule of the card (``inference.largest_component``): applied after the
network in every segment run, and written into a package by ``tools/choose_postprocessing.py``
without touching its weights."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg_core.inference.postprocess import (CONFIDENCE_STEPS, keep_largest_components, postprocess,
                                                quantise_confidence)
from medseg_core.models import bundled_dir, find_model
from medseg_core.models.package import sha256_file

REPO = Path(__file__).resolve().parents[2]


def _two_livers():
    """A labelmap with two liver pieces (27 and 8 voxels), a gland of two pieces, oblique geometry."""
    a = np.zeros((10, 12, 14), np.uint8)
    a[1:4, 1:4, 1:4] = 1
    a[6:8, 8:10, 10:12] = 1
    a[1:3, 8:10, 1:3] = 4
    a[7, 1, 12] = 4
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((0.8, 1.1, 2.5))
    img.SetOrigin((-3.0, 7.0, 11.0))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return a, img


def test_only_the_named_organs_lose_their_smaller_components_and_geometry_stays():
    a, img = _two_livers()
    out = keep_largest_components(img, [1])
    b = sitk.GetArrayFromImage(out)
    assert (b == 1).sum() == 27 and not b[6:8, 8:10, 10:12].any()  # the 8-voxel liver piece went
    assert (b == 4).sum() == (a == 4).sum()  # the gland was not named: both pieces stay
    assert out.GetSpacing() == img.GetSpacing() and out.GetOrigin() == img.GetOrigin()
    assert out.GetDirection() == img.GetDirection()
    assert keep_largest_components(img, []) is img


def test_postprocess_applies_the_cards_rule_before_anything_is_measured():
    _, img = _two_livers()
    card = copy.deepcopy(find_model("phantom-unet").card)
    assert card.inference.largest_component == []
    plain = postprocess(img, None, None, card, 0.5)
    card.inference.largest_component = [1, 4]
    ruled = postprocess(img, None, None, card, 0.5)
    assert (sitk.GetArrayFromImage(plain.labels) == 1).sum() == 35
    assert (sitk.GetArrayFromImage(ruled.labels) == 1).sum() == 27
    assert (sitk.GetArrayFromImage(ruled.labels) == 4).sum() == 8
    assert ruled.summary["volumes_ml"]["Liver"] < plain.summary["volumes_ml"]["Liver"]


def test_the_tool_writes_the_rule_and_copies_the_weights_byte_for_byte(tmp_path):
    spec = importlib.util.spec_from_file_location("choose", REPO / "tools" / "choose_postprocessing.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    source = bundled_dir() / "phantom-unet"
    tool.write_with_rule(source, [1, 3], tmp_path / "ruled")
    pkg = find_model(str(tmp_path / "ruled"))
    assert pkg.card.inference.largest_component == [1, 3]
    assert sha256_file(tmp_path / "ruled" / "weights.safetensors") == sha256_file(source / "weights.safetensors")
    pkg.build()  # the card's SHA-256 still verifies
    tool.write_with_rule(tmp_path / "ruled", [], tmp_path / "plain")
    assert find_model(str(tmp_path / "plain")).card.to_dict() == find_model(str(source)).card.to_dict()


def test_the_confidence_is_quantised_in_place_and_the_mask_sees_the_written_map():
    rng = np.random.default_rng(3)
    conf = rng.random((6, 7, 8), dtype=np.float32)
    before = conf.copy()
    same = quantise_confidence(conf)
    assert same is conf  # in place: no second full-size array
    steps = conf * CONFIDENCE_STEPS
    np.testing.assert_array_equal(steps, np.round(steps))
    assert np.abs(conf - before).max() <= 0.5 / CONFIDENCE_STEPS + 1e-7
    # through postprocess: a value just under the threshold that rounds up to it is not low
    card = find_model("phantom-unet").card
    labels = np.ones((4, 4, 4), np.uint8)
    img = sitk.GetImageFromArray(labels)
    c = np.full((4, 4, 4), 0.9, np.float32)
    c[0, 0, 0] = 0.5 - 0.2 / CONFIDENCE_STEPS  # rounds to 0.5: not under 0.5
    c[1, 1, 1] = 0.5 - 0.8 / CONFIDENCE_STEPS  # rounds to 0.5 - 1/STEPS: under
    case = postprocess(img, c, None, card, 0.5)
    low = case.extra_segments[0][2]
    assert case.confidence is c and not low[0, 0, 0] and low[1, 1, 1] and low.sum() == 1
