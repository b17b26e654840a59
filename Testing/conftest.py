"""Shared fixtures: small synthetic volumes only (real data lives in ../shared and is optional)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def isolated_model_home(tmp_path_factory, monkeypatch):
    """Each test sees an empty user model folder, never the developer's ~/.medseg."""
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path_factory.mktemp("medseg_home")))


@pytest.fixture
def phantom():
    from medseg_core.data.phantom import make_phantom

    return make_phantom(seed=7)


@pytest.fixture(scope="session")
def slicer_app(tmp_path_factory):
    """Slicer's scene and module logics from slicer-core (see ``slicer_core_app``), installed as
    ``slicer.mrmlScene`` and ``slicer.modules``; the module's folder is put on ``sys.path``."""
    pytest.importorskip("slicer", reason="slicer-core is not installed (make test installs it)")
    import sys

    from slicer_core_app import SlicerCoreApp

    module_dir = str(REPO / "SlicerMedSeg")
    if module_dir not in sys.path:
        sys.path.insert(0, module_dir)
    return SlicerCoreApp(str(tmp_path_factory.mktemp("slicer_temp"))).install()


@pytest.fixture
def mrml(slicer_app):
    """An empty scene (with the slice views) before and after the test."""
    slicer_app.scene.Clear(0)
    yield slicer_app
    slicer_app.scene.Clear(0)
