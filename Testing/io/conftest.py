"""One ``medseg segment --dicom seg,rtstruct`` run per patient position, shared by the DICOM SEG and
RT Structure Set tests."""

from __future__ import annotations

import pytest

from dicom_outputs import FEET_FIRST, HEAD_FIRST, dicom_series


@pytest.fixture(scope="session", params=[(HEAD_FIRST, "HFS"), (FEET_FIRST, "FFS")], ids=["head-first", "feet-first"])
def written(request, tmp_path_factory):
    """``(series folder, output folder, report)`` of the phantom model on a synthetic series."""
    pytest.importorskip("highdicom", reason="highdicom is optional (pip install -e .[dicom]); without it medseg "
                                            "writes no DICOM SEG")
    from medseg_core.segment import segment_files

    tmp = tmp_path_factory.mktemp("dicom_out")
    folder = dicom_series(tmp, *request.param)
    report = segment_files([folder], "phantom-unet", tmp / "out", device="cpu", dicom=["seg", "rtstruct"],
                           runtime="torch")[0]
    return folder, tmp / "out", report
