"""One ``medseg segment --dicom seg,rtstruct`` run per patient position, shared by the DICOM SEG, RT
Structure Set and DICOM correction tests: ``written`` runs a test on both positions, ``written_hfs``
on the head-first one (refusals and command lines, whose geometry the round trips already cover)."""

from __future__ import annotations

import pytest

from dicom_outputs import FEET_FIRST, HEAD_FIRST, dicom_series

_RUNS: dict = {}


def _run(position: str, tmp_path_factory):
    if position not in _RUNS:
        pytest.importorskip("highdicom", reason="highdicom is optional (pip install -e .[dicom]); without it "
                                                "medseg writes no DICOM SEG")
        from medseg_core.segment import segment_files

        tmp = tmp_path_factory.mktemp(f"dicom_out_{position}")
        folder = dicom_series(tmp, HEAD_FIRST if position == "HFS" else FEET_FIRST, position)
        report = segment_files([folder], "phantom-unet", tmp / "out", device="cpu", dicom=["seg", "rtstruct"],
                               runtime="torch")[0]
        _RUNS[position] = (folder, tmp / "out", report)
    return _RUNS[position]


@pytest.fixture(scope="session", params=["HFS", "FFS"], ids=["head-first", "feet-first"])
def written(request, tmp_path_factory):
    """``(series folder, output folder, report)`` of the phantom model on a synthetic series."""
    return _run(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def written_hfs(tmp_path_factory):
    """``written`` for the head-first series only."""
    return _run("HFS", tmp_path_factory)
