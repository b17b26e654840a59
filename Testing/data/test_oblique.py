"""Oblique grids: a model that asks for it (``preprocessing.resample_oblique``) sees an oblique
image on its own axis-aligned frame, after one interpolation, and the result returns onto the
input's grid; axis-aligned images are untouched by the option."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import SimpleITK as sitk

from medseg_core.data.phantom import make_phantom
from medseg_core.data.preprocess import Preprocessor, is_oblique, straighten
from medseg_core.data.preprocess_config import PreprocessConfig


def _rot_z(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


def _rotated(img: sitk.Image, degrees: float, interp=sitk.sitkLinear, fill=-1000.0) -> sitk.Image:
    """``img`` resampled onto a grid of the same spacing rotated about the superior-inferior axis."""
    rot = _rot_z(degrees)
    centre = np.array(img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()]))
    n = np.array(img.GetSize())
    ref = sitk.Image([int(v) for v in n], sitk.sitkUInt8)
    ref.SetSpacing(img.GetSpacing())
    ref.SetDirection(rot.ravel().tolist())
    ref.SetOrigin((centre - rot @ (np.array(img.GetSpacing()) * (n - 1) / 2)).tolist())
    return sitk.Resample(img, ref, sitk.Transform(), interp, fill, img.GetPixelID())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_straighten_gives_an_axis_aligned_grid_covering_the_image():
    ph = make_phantom(shape=(16, 32, 32), seed=1, direction=np.eye(3))
    oblique = _rotated(ph.image, 25.0)
    assert is_oblique(oblique) and not is_oblique(ph.image)
    out = straighten(sitk.Cast(oblique, sitk.sitkFloat32), (2.0, 2.0, 3.0), sitk.sitkLinear)
    assert out.GetDirection() == tuple(np.eye(3).ravel()) and out.GetSpacing() == (2.0, 2.0, 3.0)
    lo = np.array(out.GetOrigin()) - np.array(out.GetSpacing()) / 2
    hi = lo + np.array(out.GetSize()) * np.array(out.GetSpacing())
    for corner in np.array(np.meshgrid(*[(-0.5, s - 0.5) for s in oblique.GetSize()], indexing="ij")).reshape(3, -1).T:
        p = np.array(oblique.TransformContinuousIndexToPhysicalPoint(corner.tolist()))
        assert np.all(p >= lo - 1e-6) and np.all(p <= hi + 1e-6)
    # outside the oblique image the fill is its minimum (air), not 0 HU
    assert float(sitk.GetArrayViewFromImage(out)[0, 0, 0]) == float(sitk.GetArrayViewFromImage(oblique).min())


def test_a_labelmap_survives_straightening_and_the_way_back():
    ph = make_phantom(shape=(24, 40, 40), seed=2, direction=np.eye(3))
    lab = _rotated(ph.label, 20.0, sitk.sitkNearestNeighbor, 0)
    straight = straighten(lab, lab.GetSpacing(), sitk.sitkNearestNeighbor, fill=0.0)
    back = sitk.GetArrayFromImage(sitk.Resample(straight, lab, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    ref = sitk.GetArrayFromImage(lab)
    assert set(np.unique(back)) == set(np.unique(ref))
    for v in (1, 2, 3):
        assert _dice(back == v, ref == v) > 0.93


def test_the_preprocessor_straightens_only_oblique_grids_and_only_when_asked():
    ph = make_phantom(shape=(24, 40, 40), seed=3, direction=np.eye(3))
    cfg = PreprocessConfig(spacing=[2.0, 2.0, 3.0], normalization=[{"scheme": "ct", "clip": [-1000, 1000],
                                                                       "mean": 0.0, "std": 100.0}])
    on = Preprocessor(dataclasses.replace(cfg, resample_oblique=True))
    off = Preprocessor(cfg)
    a, b = on([ph.image]), off([ph.image])  # axis-aligned: the option changes nothing
    assert a.grid == b.grid and np.array_equal(a.image, b.image)
    oblique = _rotated(ph.image, 20.0)
    straight, kept = on([oblique]), off([oblique])
    assert straight.grid.direction == tuple(np.eye(3).ravel()) and straight.grid.spacing == (2.0, 2.0, 3.0)
    assert np.allclose(kept.grid.direction, oblique.GetDirection())
    # the straightened model grid shows the anatomy where the axis-aligned one does (in mm)
    axis_img = b.grid.image(b.image[0])
    inner = straight.grid.image(straight.image[0])
    resampled = sitk.GetArrayFromImage(sitk.Resample(inner, axis_img, sitk.Transform(), sitk.sitkLinear, -10.0))
    body = b.image[0] > -5  # inside the body, away from the fill
    assert np.corrcoef(resampled[body], b.image[0][body])[0, 1] > 0.9


def test_an_oblique_case_comes_back_on_its_own_grid(tmp_path):
    from medseg_core.models import find_model, save_package
    from medseg_core.segment import segment_files

    pkg = find_model("phantom-unet")
    card = copy.deepcopy(pkg.card)
    card.name, card.preprocessing.resample_oblique = "phantom-straight", True
    save_package(card, pkg.load_state_dict(), tmp_path / card.name, half=True)
    ph = make_phantom(seed=5, direction=np.eye(3))
    img, truth = _rotated(ph.image, 20.0), _rotated(ph.label, 20.0, sitk.sitkNearestNeighbor, 0)
    sitk.WriteImage(img, str(tmp_path / "rot.nii.gz"))
    report = segment_files([tmp_path / "rot.nii.gz"], str(tmp_path / card.name), tmp_path / "out", device="cpu")[0]
    out = sitk.ReadImage(report["outputs"]["labels"])
    assert out.GetSize() == img.GetSize()
    assert np.allclose(out.GetOrigin(), img.GetOrigin(), atol=1e-4)
    assert np.allclose(out.GetDirection(), img.GetDirection(), atol=1e-6)
    pred, ref = sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(truth)
    assert np.mean([_dice(pred == v, ref == v) for v in range(1, 6)]) > 0.85
