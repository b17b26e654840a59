"""Fixtures of the slicer-core tier: Slicer's scene and module logics (``slicer_core_app``), an
empty scene per test, and one engine run for every direction, shared by all the tier's files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from scene_helpers import DIRECTIONS, REPO, installed_models, load_volume

from medseg_core.data.phantom import make_phantom


@pytest.fixture(scope="session")
def slicer_app(tmp_path_factory):
    """Slicer's scene and module logics from slicer-core (see ``slicer_core_app``), installed as
    ``slicer.mrmlScene`` and ``slicer.modules``; the module's folder is put on ``sys.path``."""
    pytest.importorskip("slicer", reason="slicer-core is not installed (make test installs it)")
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


@pytest.fixture(scope="session")
def cases(slicer_app, tmp_path_factory):
    """For each direction: the phantom as a user's file, the volume Slicer writes for the child
    (``SceneLoader.writeVolume``), and ``medseg segment``'s outputs for it (one engine run)."""
    from SlicerMedSegLib import Commands, SceneLoader

    tmp = tmp_path_factory.mktemp("scene_cases")
    out = {}
    inputs = []
    for i, (name, direction) in enumerate(DIRECTIONS.items()):
        phantom = make_phantom(seed=7 + i, direction=direction.ravel().tolist())
        source = tmp / f"{name}.nii.gz"
        sitk.WriteImage(phantom.image, str(source), True)
        slicer_app.scene.Clear(0)
        volume = load_volume(source, name)
        written = SceneLoader.writeVolume(volume, tmp / f"{name}.nrrd")
        inputs.append(written)
        out[name] = {"source": source, "phantom": phantom, "written": Path(written)}
    slicer_app.scene.Clear(0)
    env = Commands.child_environment("cpu", base=os.environ)
    env["OMP_NUM_THREADS"] = "2"
    subprocess.run([sys.executable, "-m", "medseg_core", "segment", *inputs, "--model", "phantom-unet",
                    "--output", str(tmp / "out"), "--device", "cpu", "--progress", "none"],
                   check=True, env=env, capture_output=True)
    for name in out:
        stem = tmp / "out" / name
        out[name]["outputs"] = {"segmentation": f"{stem}.seg.nrrd", "labels": f"{stem}_labels.nii.gz",
                                "confidence": f"{stem}_confidence.nii.gz", "rois": f"{stem}_rois.json",
                                "rois_segmentation": f"{stem}_rois.seg.nrrd", "report": f"{stem}_report.json"}
        assert all(os.path.isfile(p) for p in out[name]["outputs"].values())
    return out


@pytest.fixture(scope="session")
def phantom_model(slicer_app):
    return installed_models()["phantom-unet"]


@pytest.fixture
def make_logic(slicer_app):
    """``make_logic()``: a SegmentationLogic running this interpreter's engine; its worker is shut
    down after the test (as the module's cleanup does)."""
    from scene_helpers import REPO
    from SlicerMedSegLib.SegmentationLogic import SegmentationLogic

    made = []

    def make():
        made.append(SegmentationLogic(str(REPO / "SlicerMedSeg"), installLogic=None, python=sys.executable))
        return made[-1]

    yield make
    for logic in made:
        logic.shutdown()
