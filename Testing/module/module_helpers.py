"""Shared helpers of the module tests: where the module lives, a child environment, a phantom on disk.

Importing this module puts ``SlicerMedSeg/`` on ``sys.path`` so that ``SlicerMedSegLib`` imports as
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

from SlicerMedSegLib import Commands  # noqa: E402

PURE_MODULES = ("Signal", "Parameters", "Geometry", "Models", "Commands", "Protocol", "ProcessRunner", "Requirements",
                "Panel")
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
