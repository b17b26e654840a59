"""The module tests' shared fixture: one real segmentation through the module's ProcessRunner."""

from __future__ import annotations

import sys

import pytest

from module_helpers import child_env, write_phantom  # first: it puts SlicerMedSeg/ on sys.path
from SlicerMedSegLib import Commands
from SlicerMedSegLib.Parameters import SegmentationParameters
from SlicerMedSegLib.ProcessRunner import ProcessRunner


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
