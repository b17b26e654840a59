"""Shared helpers of the io tests: an oblique, left-handed, anisotropic grid, its checks, and two
fixtures (a small CT-like volume and a labelmap on the same (5, 6, 7) grid) that test modules import."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

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
