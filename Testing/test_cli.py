"""The ``medseg`` command line end to end on phantoms, and every bad input it must refuse."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from medseg_core.cli import main
from medseg_core.metrics import dice
from medseg_core.models import bundled_dir


@pytest.fixture
def phantom_file(tmp_path, phantom):
    path = tmp_path / "in" / "case.nii.gz"
    path.parent.mkdir()
    sitk.WriteImage(phantom.image, str(path), True)
    return path


def _outputs(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_segment_end_to_end_as_a_child_process(tmp_path, phantom, phantom_file):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "medseg_core", "segment", str(phantom_file), "--model",
                           "phantom-unet", "--output", str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _outputs(out) == ["case.seg.nrrd", "case_confidence.nii.gz", "case_labels.nii.gz", "case_report.json",
                             "case_rois.json", "case_rois.seg.nrrd"]
    labels = sitk.ReadImage(str(out / "case_labels.nii.gz"))
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):  # the input's grid, exactly
        np.testing.assert_allclose(getattr(labels, get)(), getattr(phantom.image, get)(), atol=1e-5)
    pred, truth = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(phantom.label)
    assert dice(pred == 1, truth == 1) > 0.9 and dice(pred == 2, truth == 2) > 0.8
    seg = slicerio.read_segmentation(str(out / "case.seg.nrrd"))
    assert [s["name"] for s in seg["segments"]] == ["Liver", "SpinalCord", "Tumour", "LeftGland", "RightGland",
                                                    "Low confidence"]
    report = json.loads((out / "case_report.json").read_text())
    assert report["model"] == "phantom-unet" and report["device"] == "cpu"
    assert {"preprocess", "infer", "resample", "write", "total"} <= set(report["seconds"])
    voxel_ml = np.prod(phantom.image.GetSpacing()) / 1000
    assert report["volumes_ml"]["Liver"] == pytest.approx((pred == 1).sum() * voxel_ml, rel=1e-3)


def _write(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def _run(capsys, *args):
    code = main(list(map(str, args)))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("kind", ["missing", "not_an_image", "2d", "4d", "nan", "inf"])
def test_bad_inputs_exit_2_with_one_line_and_no_output(tmp_path, capsys, kind):
    # NIfTI writing turns NaN into 0, so the float cases are written as MetaImage
    path = tmp_path / "bad" / (f"{kind}.mha" if kind in ("nan", "inf") else f"{kind}.nii.gz")
    if kind == "not_an_image":
        path.parent.mkdir()
        path.write_text("hello")
    elif kind == "2d":
        _write(sitk.Image(16, 16, sitk.sitkInt16), path)
    elif kind == "4d":
        _write(sitk.Image([4, 4, 4, 3], sitk.sitkInt16), path)
    elif kind in ("nan", "inf"):
        arr = np.zeros((8, 8, 8), np.float32)
        arr[2, 3, 4] = np.nan if kind == "nan" else np.inf
        _write(sitk.GetImageFromArray(arr), path)
    out = tmp_path / "out"
    code, err = _run(capsys, "segment", path, "--model", "phantom-unet", "--output", out, "--device", "cpu")
    assert code == 2
    assert len(err) == 1 and str(path) in err[0]
    assert _outputs(out) == []


def test_constant_image_warns_and_writes_background(tmp_path, capsys, phantom):
    img = sitk.Image(phantom.image.GetSize(), sitk.sitkInt16) - 1000
    img.CopyInformation(phantom.image)
    path = _write(img, tmp_path / "flat.nii.gz")
    code, err = _run(capsys, "segment", path, "--model", "phantom-unet", "--output", tmp_path / "o", "--device", "cpu")
    assert code == 0 and any("constant" in line for line in err)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o" / "flat_labels.nii.gz"))).max() == 0


def test_unknown_model_exits_3_and_lists_the_known(tmp_path, capsys, phantom_file):
    code, err = _run(capsys, "segment", phantom_file, "--model", "nope", "--output", tmp_path / "o")
    assert code == 3 and "phantom-unet" in err[-1] and "hn-oar-unet" in err[-1]


def test_weights_with_a_wrong_sha256_exit_3(tmp_path, capsys, phantom_file):
    pkg = tmp_path / "broken"
    shutil.copytree(bundled_dir() / "phantom-unet", pkg)
    w = pkg / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 1
    w.write_bytes(bytes(data))
    code, err = _run(capsys, "segment", phantom_file, "--model", pkg, "--output", tmp_path / "o", "--device", "cpu")
    assert code == 3 and "SHA-256" in err[-1] and str(w) in err[-1]
    assert _outputs(tmp_path / "o") == []


def test_existing_output_needs_overwrite(tmp_path, capsys, phantom_file):
    out = tmp_path / "o"
    assert _run(capsys, "segment", phantom_file, "--model", "phantom-unet", "--output", out, "--device", "cpu")[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, err = _run(capsys, "segment", phantom_file, "--model", "phantom-unet", "--output", out, "--device", "cpu")
    assert code == 2 and "--overwrite" in err[-1]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert _run(capsys, "segment", phantom_file, "--model", "phantom-unet", "--output", out, "--device", "cpu",
                "--overwrite")[0] == 0
    assert _outputs(out) == sorted(before)  # replaced, and no temporary files left


def test_unwritable_output_folder_exits_2(tmp_path, capsys, phantom_file):
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "o"
    elif os.path.isdir("/proc/self"):
        target = "/proc/self/medseg-out"  # nobody, root included, can create a folder there
    else:
        pytest.skip("running as root without /proc: no folder is unwritable")
    code, err = _run(capsys, "segment", phantom_file, "--model", "phantom-unet", "--output", target)
    assert code == 2 and "not writable" in err[-1] and str(target) in err[-1]


def test_output_path_that_is_a_file_exits_2(tmp_path, capsys, phantom_file):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _run(capsys, "segment", phantom_file, "--model", "phantom-unet", "--output", blocker / "o")
    assert code == 2 and str(blocker / "o") in err[-1]


def test_models_json_lists_the_bundled_models(capsys):
    assert main(["models", "--json"]) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert {"phantom-unet", "hn-oar-unet"} <= set(models)
    hn = models["hn-oar-unet"]
    assert [lab["name"] for lab in hn["labels"]] == ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid",
                                                      "Esophagus", "Larynx", "Mandible"]
    assert hn["modality"] == "CT" and hn["validation"]["mean_dice"] > 0.5


def test_evaluate_writes_csv_and_json(tmp_path, capsys, phantom, phantom_file):
    out = tmp_path / "pred"
    assert _run(capsys, "segment", phantom_file, "--model", "phantom-unet", "--output", out, "--device", "cpu")[0] == 0
    ref = tmp_path / "ref"
    _write(phantom.label, ref / "case.nii.gz")
    assert main(["evaluate", "--pred", str(out), "--ref", str(ref)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    liver = metrics["summary"]["per_label"]["1"]
    assert liver["dice"] > 0.9 and liver["hd95"] < 10
    assert (out / "metrics.csv").read_text().count("\n") >= 5


def test_demo_runs_and_draws(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "d"), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "Liver" in text and (tmp_path / "d" / "phantom_overlay.png").stat().st_size > 1000
    mean = float(next(line for line in text.splitlines() if line.startswith("mean")).split()[1])
    assert mean > 0.8


def test_segment_under_torchrun_takes_this_ranks_share(tmp_path, capsys, phantom, monkeypatch):
    inputs = [_write(phantom.image, tmp_path / "in" / f"c{i}.nii.gz") for i in range(3)]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _ = _run(capsys, "segment", *inputs, "--model", "phantom-unet", "--output", tmp_path / "o", "--device", "cpu")
    assert code == 0
    assert [n for n in _outputs(tmp_path / "o") if n.endswith("labels.nii.gz")] == ["c1_labels.nii.gz"]


@pytest.mark.parametrize("kind", ["config_not_json", "config_missing", "config_unknown_key", "dataset_json_missing",
                                  "split_not_json", "split_not_a_split"])
def test_bad_training_inputs_exit_2_with_one_line_naming_the_file(tmp_path, capsys, kind):
    from medseg_core.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", 3, shape=(16, 24, 24))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"network": {"name": "unet", "kwargs": {"spatial_dims": 2, "features": [4, 8]}},
                                  "patch_size": [16, 16], "steps": 1}))
    split = data / "splits.json"
    bad = {"config_not_json": config, "config_missing": config, "config_unknown_key": config,
           "dataset_json_missing": data / "dataset.json", "split_not_json": split, "split_not_a_split": split}[kind]
    if kind == "config_missing" or kind == "dataset_json_missing":
        bad.unlink()
    elif kind == "config_unknown_key":
        bad.write_text(json.dumps({"netwrok": {}}))
    elif kind == "split_not_a_split":
        bad.write_text(json.dumps({"training": ["phantom_000"]}))
    else:
        bad.write_text("{not json")
    run = tmp_path / "run"
    code, err = _run(capsys, "train", "--data", data, "--config", config, "--run", run, "--device", "cpu",
                     "--progress", "none")
    assert code == 2
    assert len(err) == 1 and str(bad) in err[0]
    assert not (run / "best").exists() and not (run / "last").exists()


def test_train_time_budget_zero_trains_for_the_steps(tmp_path, capsys):
    from medseg_core.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", 3, shape=(16, 24, 24))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"network": {"name": "unet", "kwargs": {"spatial_dims": 2, "features": [4, 8]}},
                                  "patch_size": [16, 16], "batch_size": 2, "steps": 100, "val_every": 100,
                                  "time_budget_s": 1e-6, "deep_supervision": False}))
    common = ["--data", data, "--config", config, "--device", "cpu", "--progress", "none", "--cache", tmp_path / "c"]
    assert main(list(map(str, ["train", "--run", tmp_path / "r1", "--steps", "4"] + common))) == 0
    assert "after 1 steps" in capsys.readouterr().out  # the config's tiny budget stops after one step
    assert main(list(map(str, ["train", "--run", tmp_path / "r2", "--steps", "4", "--time-budget", "0"] + common))) == 0
    assert "after 4 steps" in capsys.readouterr().out


def test_train_records_its_command_line_in_the_card(tmp_path, capsys, monkeypatch):
    from medseg_core.data.phantom import write_phantom_dataset
    from medseg_core.models import load_package

    data = write_phantom_dataset(tmp_path / "data", 3, shape=(16, 24, 24))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"network": {"name": "unet", "kwargs": {"spatial_dims": 2, "features": [4, 8]}},
                                  "patch_size": [16, 16], "batch_size": 2, "steps": 1, "val_every": 100,
                                  "deep_supervision": False}))
    monkeypatch.setenv("MEDSEG_COMMAND", "not read any more")  # provenance never comes from the environment
    common = ["--data", data, "--config", config, "--device", "cpu", "--progress", "none", "--cache", tmp_path / "c"]
    args = list(map(str, ["train", "--run", tmp_path / "r", "--export", tmp_path / "pkg"] + common))
    assert main(args) == 0
    assert load_package(tmp_path / "pkg").card.training["command"] == " ".join(["medseg"] + args)
    assert main(args[:2] + [str(tmp_path / "r2"), "--export", str(tmp_path / "pkg2")] + args[5:]
                + ["--record-command", "medseg train --config c.json --run RUN"]) == 0
    assert load_package(tmp_path / "pkg2").card.training["command"] == "medseg train --config c.json --run RUN"
    capsys.readouterr()


def test_train_seed_override_reproduces_and_varies(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from medseg_core.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", 3, shape=(16, 24, 24))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"network": {"name": "unet", "kwargs": {"spatial_dims": 2, "features": [4, 8]}},
                                  "patch_size": [16, 16], "batch_size": 2, "steps": 2, "val_every": 100,
                                  "deep_supervision": False, "seed": 0}))
    common = ["--data", data, "--config", config, "--device", "cpu", "--progress", "none", "--cache", tmp_path / "c"]
    weights = {}
    for name, seed in (("a", None), ("b", "0"), ("c", "1")):
        args = ["train", "--run", tmp_path / name, "--export", tmp_path / f"pkg-{name}"] + common
        assert main(list(map(str, args + (["--seed", seed] if seed else [])))) == 0
        weights[name] = load_file(str(tmp_path / f"pkg-{name}" / "weights.safetensors"))
    capsys.readouterr()
    same = [torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"]]
    assert all(same)  # --seed 0 is the config's own seed: the same weights, bit for bit
    assert not all(torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])
