"""Shared helpers of the module tests: where the module lives, a child environment, a phantom on disk.

``segmented`` is the fixture of one real segmentation through the module's ProcessRunner, which
test modules import. Importing this module puts ``SlicerMedSeg/`` on ``sys.path`` so that ``SlicerMedSegLib`` imports as
Slicer imports it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "SlicerMedSeg"
LIB = MODULE_DIR / "SlicerMedSegLib"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

import pytest  # noqa: E402

from SlicerMedSegLib import Commands  # noqa: E402
from SlicerMedSegLib.Parameters import SegmentationParameters  # noqa: E402
from SlicerMedSegLib.ProcessRunner import ProcessRunner  # noqa: E402

PURE_MODULES = ("Signal", "Parameters", "Geometry", "Models", "Commands", "Protocol", "ProcessRunner", "WorkerClient",
                "Requirements", "Panel")
PHANTOM_LABELS = ["Liver", "SpinalCord", "Tumour", "LeftGland", "RightGland"]
POSIX = os.name == "posix"


def child_env(home) -> dict:
    env = Commands.child_environment("cpu", base=os.environ)
    env["MEDSEG_HOME"] = str(home)
    env["OMP_NUM_THREADS"] = "2"
    return env


def write_phantom(path: Path, **kwargs):
    from medseg_core.data.phantom import make_phantom

    phantom = make_phantom(**kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(phantom.image, str(path), True)
    return phantom


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """``medseg segment`` run by the ProcessRunner as the Slicer module runs it: the input written as
    NRRD (what SceneLoader.writeVolume writes), device CPU, confidence and regions on."""
    tmp = tmp_path_factory.mktemp("segment")
    phantom = write_phantom(tmp / "input.nrrd", seed=7)
    params = SegmentationParameters(model="phantom-unet", device="cpu", confidence=True)
    cmd = Commands.segment_command(params, "input.nrrd", "output", python=sys.executable)
    events = []
    runner = ProcessRunner(cmd, env=child_env(tmp / "home"), cwd=str(tmp))
    runner.eventReceived.connect(events.append)
    finished = []
    runner.finished.connect(finished.append)
    result = runner.start().wait(timeout=120)
    return {"tmp": tmp, "phantom": phantom, "events": events, "result": result, "finished": finished}
