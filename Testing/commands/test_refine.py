"""``medseg refine`` on a phantom: a point brings an erased organ back, only inside its region and
without touching other labels; a negative point removes a component; a box re-segments inside;
bad prompts are one-line errors; the worker answers the same request."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from medseg_core import cli
from medseg_core.data.phantom import make_phantom
from medseg_core.segment import segment_files

MODEL = "phantom-unet"
LEFT_GLAND, TUMOUR = 4, 3


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refine")
    ph = make_phantom(seed=11)
    image = tmp / "ph.nii.gz"
    sitk.WriteImage(ph.image, str(image))
    report = segment_files([image], MODEL, tmp / "seg", device="cpu", confidence=False)[0]
    labels = sitk.ReadImage(report["outputs"]["labels"])
    arr = sitk.GetArrayFromImage(labels)
    erased = arr.copy()
    erased[erased == LEFT_GLAND] = 0
    edited = sitk.GetImageFromArray(erased)
    edited.CopyInformation(labels)
    sitk.WriteImage(edited, str(tmp / "erased.nii.gz"))
    centre = np.argwhere(arr == LEFT_GLAND).mean(0)[::-1]  # (i, j, k)
    point = labels.TransformContinuousIndexToPhysicalPoint(centre.tolist())
    return {"tmp": tmp, "image": image, "labels": arr, "erased": tmp / "erased.nii.gz", "point": point, "ref": labels}


def _refine(case, out, *prompts, code=0, capsys=None):
    args = ["refine", str(case["image"]), "--model", MODEL, "--labels", str(case["erased"]), "--output", str(out),
            "--device", "cpu", "--progress", "none"]
    for p in prompts:
        args += ["--prompt", p]
    assert cli.main(args) == code
    return out


def _fmt(xyz) -> str:
    return ",".join(f"{v:.3f}" for v in xyz)


def test_a_point_brings_an_erased_organ_back_and_changes_nothing_else(case, tmp_path):
    out = _refine(case, tmp_path / "o", f"LeftGland:point:{_fmt(case['point'])}")
    new = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ph_labels.nii.gz")))
    old = case["labels"]
    back = new == LEFT_GLAND
    assert 2 * (back & (old == LEFT_GLAND)).sum() / (back.sum() + (old == LEFT_GLAND).sum()) > 0.9
    erased = sitk.GetArrayFromImage(sitk.ReadImage(str(case["erased"])))
    changed = new != erased
    assert set(np.unique(new[changed])) | set(np.unique(erased[changed])) <= {0, LEFT_GLAND}  # only this label
    record = json.loads((out / "ph_refine.json").read_text())
    (i0, j0, k0, i1, j1, k1), = [c["box_index"] for c in record["changes"]]
    inside = np.zeros_like(changed)
    inside[k0:k1, j0:j1, i0:i1] = True
    assert not (changed & ~inside).any()  # nothing outside the reported region
    assert record["changes"][0]["voxels_added"] == int(changed.sum())
    assert {"read", "infer", "edit", "write", "total"} <= set(record["seconds"])
    assert (out / "ph.seg.nrrd").is_file()


def test_a_negative_point_removes_the_component_under_it(case, tmp_path):
    centre = np.argwhere(case["labels"] == TUMOUR).mean(0)[::-1]
    point = case["ref"].TransformContinuousIndexToPhysicalPoint(centre.tolist())
    out = _refine(case, tmp_path / "o", f"Tumour:negative:{_fmt(point)}")
    new = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ph_labels.nii.gz")))
    assert (case["labels"] == TUMOUR).any() and not (new == TUMOUR).any()
    assert np.array_equal(new[case["labels"] != TUMOUR], sitk.GetArrayFromImage(
        sitk.ReadImage(str(case["erased"])))[case["labels"] != TUMOUR])


def test_a_box_resegments_the_organ_inside_it(case, tmp_path):
    p = np.asarray(case["point"])
    box = list(p - 25.0) + list(p + 25.0)
    out = _refine(case, tmp_path / "o", f"LeftGland:box:{_fmt(box)}")
    new = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ph_labels.nii.gz")))
    assert (new == LEFT_GLAND).sum() > 0.8 * (case["labels"] == LEFT_GLAND).sum()


@pytest.mark.parametrize("prompt, message", [
    ("LeftGland:point:9999,0,0", "lies outside the image"),
    ("Nothing:point:0,0,0", "not a label of phantom-unet"),
    ("LeftGland:box:10,10,10,0,20,20", "inside out"),
    ("LeftGland:point:1,2", "a point takes 3 numbers"),
    ("LeftGland:circle:1,2,3", "the kind must be one of point, box, negative"),
    ("LeftGland", "expected LABEL:point:x,y,z"),
])
def test_bad_prompts_are_one_line_errors_and_write_nothing(case, tmp_path, capsys, prompt, message):
    _refine(case, tmp_path / "o", prompt, code=2)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_the_worker_answers_a_refine_request(case, tmp_path):
    from medseg_core.worker import Worker

    out = io.StringIO()
    worker = Worker(stdout=out)
    req = {"id": "r1", "command": "refine", "args": {
        "input": str(case["image"]), "model": MODEL, "labels": str(case["erased"]), "output": str(tmp_path / "w"),
        "device": "cpu", "prompts": [{"label": "LeftGland", "point": list(case["point"])}]}}
    worker.handle(json.dumps(req))
    worker.handle(json.dumps({**req, "id": "r2", "args": {**req["args"], "overwrite": True}}))  # warm: model kept
    worker.handle(json.dumps({**req, "id": "r3", "args": {**req["args"], "prompts": [{"label": "X", "box": [1]}]}}))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    ends = {e["id"]: e for e in events if e.get("event") in ("result", "error")}
    assert ends["r1"]["event"] == ends["r2"]["event"] == "result" and ends["r3"]["event"] == "error"
    assert (tmp_path / "w" / "ph_labels.nii.gz").is_file()
    assert len(worker.predictors) == 1
    assert len(worker.images) == 1  # the case was read once for both refines
    first = next(iter(worker.images.values()))
    assert worker.read_images(str(case["image"]), 1) is first
    os.utime(case["image"], ns=(1, 1))  # the file changed: read again
    assert worker.read_images(str(case["image"]), 1) is not first and len(worker.images) == 2


def test_a_point_on_a_long_organ_grows_its_region_to_take_it_whole(case, tmp_path):
    from medseg_core.inference.refine import POINT_HALF_MM

    cord = 2
    arr = case["labels"]
    erased = arr.copy()
    erased[erased == cord] = 0
    img = sitk.GetImageFromArray(erased)
    img.CopyInformation(case["ref"])
    current = tmp_path / "no_cord.nii.gz"
    sitk.WriteImage(img, str(current))
    centre = np.argwhere(arr == cord).mean(0)[::-1]
    point = case["ref"].TransformContinuousIndexToPhysicalPoint(centre.tolist())
    args = ["refine", str(case["image"]), "--model", MODEL, "--labels", str(current), "--output", str(tmp_path / "o"),
            "--device", "cpu", "--progress", "none", "--prompt", f"SpinalCord:point:{_fmt(point)}"]
    assert cli.main(args) == 0
    record = json.loads((tmp_path / "o" / "ph_refine.json").read_text())
    z0, z1 = record["changes"][0]["box_mm"][2], record["changes"][0]["box_mm"][5]
    extent = (arr == cord).any(axis=(1, 2)).sum() * case["ref"].GetSpacing()[2]
    assert extent > 2 * POINT_HALF_MM and z1 - z0 > 2 * POINT_HALF_MM  # longer than the first region, and taken
    new = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o" / "ph_labels.nii.gz")))
    assert 2 * ((new == cord) & (arr == cord)).sum() / ((new == cord).sum() + (arr == cord).sum()) > 0.9


def test_the_labels_may_be_a_runs_seg_nrrd_whose_low_confidence_layer_is_left_out(case, tmp_path):
    """A run's ``.seg.nrrd`` holds a "Low confidence" layer over the organs: read by segment name,
    it neither paints over an organ nor counts as one (before: it became label 6 where it lay)."""
    report = segment_files([case["image"]], MODEL, tmp_path / "seg", device="cpu", confidence_threshold=0.99)[0]
    run = sitk.GetArrayFromImage(sitk.ReadImage(report["outputs"]["labels"]))
    centre = np.argwhere(run == TUMOUR).mean(0)[::-1]
    point = case["ref"].TransformContinuousIndexToPhysicalPoint(centre.tolist())
    args = ["refine", str(case["image"]), "--model", MODEL, "--labels", report["outputs"]["segmentation"],
            "--output", str(tmp_path / "o"), "--device", "cpu", "--progress", "none",
            "--prompt", f"Tumour:negative:{_fmt(point)}"]
    assert cli.main(args) == 0
    new = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o" / "ph_labels.nii.gz")))
    assert not (new == TUMOUR).any()
    np.testing.assert_array_equal(new[run != TUMOUR], run[run != TUMOUR])  # every other organ as the run drew it


def test_a_focusnet_point_centres_that_organs_sos_net_on_the_point(case, tmp_path):
    """Untrained weights (the result means nothing): the path is checked. The SOL-Net's heatmaps
    never pass the threshold, so without the point no SOS-Net would run; with it, the prompted
    organ's SOS-Net runs centred on the point's voxel in every window holding it, the other's not."""
    import copy

    import torch

    from medseg_core.models import find_model, save_package
    from medseg_core.models.card import NetworkSpec
    from medseg_core.nets import build_network
    from medseg_core.nets.focusnet import FocusNet

    card = copy.deepcopy(find_model(MODEL).card)
    card.name, card.training = "tiny-focusnet", {}
    card.network = NetworkSpec("focusnet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 6,
                                            "small_organs": [LEFT_GLAND, 5], "roi_sizes": [[8, 12, 12], [8, 12, 12]],
                                            "heatmap_threshold": 2.0, "features": [6, 8], "aspp_growth": 4,
                                            "sos_features": [4, 6]})
    torch.manual_seed(0)
    save_package(card, build_network("focusnet", **card.network.kwargs).state_dict(), tmp_path / card.name)
    calls = []
    original = FocusNet.forward

    def spy(self, x, centers=None):
        out = original(self, x, centers=centers)
        calls.append((centers, out.rois))
        return out

    FocusNet.forward = spy
    try:
        args = ["refine", str(case["image"]), "--model", str(tmp_path / card.name), "--labels", str(case["erased"]),
                "--output", str(tmp_path / "o"), "--device", "cpu", "--progress", "none",
                "--prompt", f"LeftGland:point:{_fmt(case['point'])}"]
        assert cli.main(args) == 0
    finally:
        FocusNet.forward = original
    assert calls and all(c is not None for c, _ in calls)
    given = [(c[b, 0].tolist(), rois[b]) for c, rois in calls for b in range(c.shape[0]) if (c[b, 0] >= 0).all()]
    assert given, "no window held the point"
    for centre, rois in given:
        assert rois[0]["active"] and rois[0]["center"] == centre  # LeftGland's SOS-Net, on the point
        assert not rois[1]["active"]  # the other small organ: its heatmap says nothing is there
    assert all((c[:, 1] == -1).all() for c, _ in calls)
