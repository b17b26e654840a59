"""Shared fixtures: small synthetic volumes only (real data lives in ../shared and is optional)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# The folders' shared helpers, and the fixtures they define, for every test (one conftest only:
# conftest files in sub-folders without packages clash by name when pytest is given several)
sys.path[:0] = [str(Path(__file__).parent / "io"), str(Path(__file__).parent / "module")]
pytest_plugins = ["io_helpers", "module_helpers"]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# The networks run in PyTorch throughout the suite, subprocesses included: where OpenVINO is
# installed, "auto" would export every test's network into that test's empty model home, and
# the tests compare against PyTorch. Testing/inference/test_runtime.py asks for OpenVINO itself.
os.environ.setdefault("MEDSEG_RUNTIME", "torch")


@pytest.fixture(autouse=True)
def isolated_model_home(tmp_path_factory, monkeypatch):
    """Each test sees an empty user model folder, never the developer's ~/.medseg."""
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path_factory.mktemp("medseg_home")))


@pytest.fixture
def phantom():
    from medseg_core.data.phantom import make_phantom

    return make_phantom(seed=7)
