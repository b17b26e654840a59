"""Tests of medseg_core.evaluate on small synthetic labelmaps written to tmp_path."""

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from medseg_core.errors import InputError
from medseg_core.evaluate import evaluate_folders
from medseg_core.metrics import METRIC_NAMES

SPACING = (0.8, 0.8, 2.5)  # x, y, z


def _write(path, array, spacing=SPACING, origin=(1.0, 2.0, 3.0), direction=None):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def _ref_and_pred(shift=1):
    """Label 1: 4x4x4 box, prediction shifted along x by `shift`; label 2 exact."""
    ref = np.zeros((8, 10, 12), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    ref[1:3, 7:9, 8:11] = 2
    pred = np.zeros_like(ref)
    pred[2:6, 2:6, 2 + shift:6 + shift] = 1
    pred[1:3, 7:9, 8:11] = 2
    return ref, pred


@pytest.fixture
def folders(tmp_path):
    ref, pred = _ref_and_pred()
    _write(tmp_path / "ref" / "caseA.nii.gz", ref)
    _write(tmp_path / "pred" / "caseA_labels.nii.gz", pred)  # the `segment` naming
    ref_b = ref.copy()
    ref_b[ref_b == 2] = 0  # label 2 absent from case B's reference
    _write(tmp_path / "ref" / "caseB.nrrd", ref_b)
    _write(tmp_path / "pred" / "caseB.nii.gz", ref_b)
    return tmp_path / "pred", tmp_path / "ref"


def test_evaluate_values_and_outputs(folders, tmp_path):
    pred_dir, ref_dir = folders
    out_csv, out_json = tmp_path / "out" / "metrics.csv", tmp_path / "out" / "metrics.json"
    result = evaluate_folders(pred_dir, ref_dir, out_csv=out_csv, out_json=out_json)

    assert [c["case"] for c in result["cases"]] == ["caseA", "caseB"]
    assert result["labels"] == {1: "label_1", 2: "label_2"}
    a = result["cases"][0]["metrics"]
    assert a[1]["dice"] == pytest.approx(0.75)  # 48 of 64 voxels overlap
    assert a[1]["hd95"] == pytest.approx(0.8)  # one voxel along x
    assert a[2]["dice"] == 1.0 and a[2]["hd95"] == 0.0
    b = result["cases"][1]["metrics"]
    assert b[1]["dice"] == 1.0 and math.isnan(b[2]["dice"])

    per_label = result["summary"]["per_label"]
    assert per_label[1]["n"] == 2 and per_label[1]["dice"] == pytest.approx((0.75 + 1.0) / 2)
    assert per_label[2]["n"] == 1 and per_label[2]["dice"] == 1.0  # the NaN of case B is ignored
    assert result["summary"]["mean"]["dice"] == pytest.approx((0.875 + 1.0) / 2)

    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 4 and set(METRIC_NAMES) <= set(rows[0])
    assert rows[0]["case"] == "caseA" and float(rows[0]["dice"]) == pytest.approx(0.75)
    assert rows[3]["dice"] == "nan"
    data = json.loads(out_json.read_text())
    assert data["cases"][1]["metrics"]["2"]["dice"] is None
    assert data["summary"]["per_label"]["1"]["dice"] == pytest.approx(0.875)
    assert not [p for p in out_csv.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_dataset_json_names(folders):
    pred_dir, ref_dir = folders
    (ref_dir / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "Brainstem": 1, "Chiasm": 2}}))
    result = evaluate_folders(pred_dir, ref_dir)
    assert result["labels"] == {1: "Brainstem", 2: "Chiasm"}
    assert result["summary"]["per_label"][1]["name"] == "Brainstem"


def test_dataset_json_in_parent(tmp_path):
    ref, pred = _ref_and_pred()
    _write(tmp_path / "ds" / "labelsTr" / "c1.nii.gz", ref)
    _write(tmp_path / "pred" / "c1.nii.gz", pred)
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "Liver": 1}}))
    result = evaluate_folders(tmp_path / "pred", tmp_path / "ds" / "labelsTr")
    assert result["labels"] == {1: "Liver"}
    assert set(result["cases"][0]["metrics"]) == {1}


def test_explicit_labels_win(folders):
    pred_dir, ref_dir = folders
    (ref_dir / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "Brainstem": 1}}))
    result = evaluate_folders(pred_dir, ref_dir, labels={2: "Gland"})
    assert result["labels"] == {2: "Gland"}


def test_missed_label_is_inf(tmp_path):
    ref, pred = _ref_and_pred()
    pred[pred == 2] = 0
    _write(tmp_path / "ref" / "c.mha", ref)
    _write(tmp_path / "pred" / "c.mha", pred)
    out_json = tmp_path / "m.json"
    result = evaluate_folders(tmp_path / "pred", tmp_path / "ref", out_json=out_json)
    assert result["summary"]["per_label"][2]["n_missed"] == 1
    assert result["summary"]["per_label"][2]["hd95"] == math.inf
    assert json.loads(out_json.read_text())["summary"]["per_label"]["2"]["hd95"] == "inf"


@pytest.mark.parametrize("change", ["spacing", "origin", "direction", "size"])
def test_geometry_mismatch(tmp_path, change):
    ref, pred = _ref_and_pred()
    _write(tmp_path / "ref" / "c.nii.gz", ref)
    kwargs = {"spacing": dict(spacing=(0.8, 0.8, 3.0)), "origin": dict(origin=(1.0, 2.0, 3.1)),
              "direction": dict(direction=(0, 1, 0, 1, 0, 0, 0, 0, 1)), "size": {}}[change]
    _write(tmp_path / "pred" / "c_labels.nii.gz", pred[:, :, :-1] if change == "size" else pred, **kwargs)
    with pytest.raises(InputError, match=rf"c_labels\.nii\.gz.*{change}") as info:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert info.value.exit_code == 2


def test_small_geometry_difference_is_tolerated(tmp_path):
    ref, pred = _ref_and_pred()
    _write(tmp_path / "ref" / "c.nii.gz", ref)
    _write(tmp_path / "pred" / "c.nii.gz", pred, origin=(1.0, 2.0, 3.00005))
    assert evaluate_folders(tmp_path / "pred", tmp_path / "ref")["cases"][0]["case"] == "c"


def test_missing_prediction_listed(folders):
    pred_dir, ref_dir = folders
    (pred_dir / "caseB.nii.gz").unlink()
    _write(ref_dir / "caseC.nii.gz", np.zeros((8, 10, 12)))
    with pytest.raises(InputError, match="caseB.nrrd, caseC.nii.gz"):
        evaluate_folders(pred_dir, ref_dir)


def test_no_pairs_and_bad_folders(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no reference"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    with pytest.raises(InputError, match="not found"):
        evaluate_folders(tmp_path / "nope", tmp_path / "ref")


def test_ambiguous_prediction(folders):
    pred_dir, ref_dir = folders
    ref, pred = _ref_and_pred()
    _write(pred_dir / "caseA.nii.gz", pred)  # next to caseA_labels.nii.gz
    with pytest.raises(InputError, match="several predictions"):
        evaluate_folders(pred_dir, ref_dir)


def test_unreadable_file(folders):
    pred_dir, ref_dir = folders
    (pred_dir / "caseB.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match="caseB.nii.gz"):
        evaluate_folders(pred_dir, ref_dir)
