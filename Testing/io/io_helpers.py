"""Shared helpers of the io tests: an oblique, left-handed, anisotropic grid and its checks."""

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

