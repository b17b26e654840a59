"""Fixtures of the io tests: a small CT-like volume and a labelmap on the same (5, 6, 7) grid."""

from __future__ import annotations

import numpy as np
import pytest


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
