"""``medseg train`` checks every case of a dataset before it starts: a label off its image's grid,
a label value dataset.json does not name, an empty or missing label, a damaged label file, and a
split that lists an absent case are each one line naming the case, exit 2, nothing trained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medseg_core import cli
from medseg_core.data.phantom import write_phantom_dataset


def _damage(data, kind: str):
    """Breaks case phantom_002 (or the split) of a phantom dataset; returns what the error must name."""
    label = data / "labelsTr" / "phantom_002.nii.gz"
    img = sitk.ReadImage(str(label))
    if kind == "label_off_grid":
        img.SetOrigin([o + 5.0 for o in img.GetOrigin()])
    elif kind == "label_other_size":
        img = img[:, :, 1:]
    elif kind == "unknown_value":
        arr = sitk.GetArrayFromImage(img)
        arr[0, 0, 0] = 9
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        img = out
    elif kind == "empty_label":
        img = img * 0
    elif kind == "missing_label":
        label.unlink()
        return "phantom_002"
    elif kind == "label_cut_short":
        data_bytes = label.read_bytes()
        label.write_bytes(data_bytes[: len(data_bytes) - 20])
        return "phantom_002"
    elif kind == "split_lists_absent_case":
        (data / "splits.json").write_text(json.dumps({"train": ["phantom_000", "phantom_009"],
                                                      "validation": ["phantom_001"]}))
        return "phantom_009"
    sitk.WriteImage(img, str(label), True)
    return "phantom_002"


@pytest.mark.parametrize("kind", ["label_off_grid", "label_other_size", "unknown_value", "empty_label",
                                  "missing_label", "label_cut_short", "split_lists_absent_case"])
def test_a_bad_case_stops_training_before_it_starts(tmp_path, capsys, kind):
    data = write_phantom_dataset(tmp_path / "data", 4, shape=(16, 24, 24))
    (data / "splits.json").write_text(json.dumps({"train": ["phantom_000", "phantom_002", "phantom_003"],
                                                  "validation": ["phantom_001"]}))
    named = _damage(data, kind)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"network": {"name": "unet", "kwargs": {"spatial_dims": 2, "features": [4, 8]}},
                                  "patch_size": [16, 16], "steps": 1}))
    run = tmp_path / "run"
    code = cli.main(["train", "--data", str(data), "--config", str(config), "--run", str(run), "--device", "cpu",
                     "--progress", "none"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and named in err[0], err
    assert not (run / "best").exists() and not (run / "last").exists()
    cached = list((run / "cache").glob("*.npz")) if (run / "cache").exists() else []
    assert not cached  # checked before the first case was cached


def test_a_sound_dataset_passes_the_checks(tmp_path):
    from medseg_core.data.dataset import RawDataset

    data = write_phantom_dataset(tmp_path / "data", 2, shape=(16, 24, 24))
    ds = RawDataset.open(data)
    ds.check_cases(ds.cases)  # raises nothing
    assert np.all([ds.label_path(c).is_file() for c in ds.cases])
