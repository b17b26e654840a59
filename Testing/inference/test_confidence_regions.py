"""Confidence maps, small-organ regions, the --roi box, the JSON progress protocol and SIGTERM."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from medseg_core.cli import main
from medseg_core.inference.confidence import entropy_confidence, low_confidence_mask
from medseg_core.inference.regions import index_box_to_physical, physical_box_to_index
from medseg_core.segment import segment_files


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    from medseg_core.data.phantom import make_phantom

    ph = make_phantom(seed=21)
    root = tmp_path_factory.mktemp("seg")
    path = root / "ph.nii.gz"
    sitk.WriteImage(ph.image, str(path))
    report = segment_files([path], "phantom-unet", root / "out", device="cpu")[0]
    return ph, report


def test_confidence_is_in_range_and_on_the_input_grid(segmented):
    ph, report = segmented
    conf = sitk.ReadImage(report["outputs"]["confidence"])
    assert conf.GetPixelID() == sitk.sitkFloat32
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(conf, get)(), getattr(ph.image, get)(), atol=1e-5)
    arr = sitk.GetArrayFromImage(conf)
    assert arr.min() >= 0.0 and arr.max() <= 1.0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(report["outputs"]["labels"]))
    truth = sitk.GetArrayFromImage(ph.label)
    wrong = labels != truth
    assert arr[wrong].mean() < arr[~wrong].mean()  # errors sit where the model is less sure
    assert set(report["mean_confidence"]) == {"Liver", "SpinalCord", "Tumour", "LeftGland", "RightGland"}


def test_entropy_confidence_known_values():
    probs = np.array([[1.0, 0.5, 1 / 3, 0.9], [0.0, 0.5, 1 / 3, 0.1], [0.0, 0.0, 1 / 3, 0.0]])
    h09 = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    np.testing.assert_allclose(entropy_confidence(probs), [1.0, 0.0, 0.0, 1 - h09 / np.log(2)], atol=1e-6)
    np.testing.assert_allclose(entropy_confidence(probs, "classes"),
                               [1.0, 1 - np.log(2) / np.log(3), 0.0, 1 - h09 / np.log(3)], atol=1e-6)


def test_low_confidence_only_near_the_foreground():
    conf = np.zeros((9, 9, 9), np.float32)
    labels = np.zeros((9, 9, 9), np.uint8)
    labels[4, 4, 4] = 1
    low = low_confidence_mask(conf, labels, 0.5, spacing_zyx=(1.0, 1.0, 1.0), margin_mm=2.0)
    assert low[4, 4, 4] and low[4, 4, 6] and not low[0, 0, 0]


def test_regions_contain_their_organ(segmented):
    ph, report = segmented
    rois = json.loads(open(report["outputs"]["rois"]).read())
    assert rois["small_organs"] == ["LeftGland", "RightGland"]
    truth = sitk.GetArrayFromImage(ph.label)
    found = {r["label"] for r in rois["regions"]}
    assert found == {"LeftGland", "RightGland"}
    for r in rois["regions"]:
        i0, j0, k0, i1, j1, k1 = r["box_index"]
        organ = truth == r["value"]
        inside = organ[k0:k1, j0:j1, i0:i1].sum()
        assert inside >= 0.9 * organ.sum()
        assert 0 < r["score"] <= 1
        c = np.array(r["center_mm"])  # the centre lies inside the physical box
        b = np.array(r["box_mm"])
        assert np.all(c >= b[:3] - 1e-6) and np.all(c <= b[3:] + 1e-6)


def test_box_conversions_round_trip(phantom):
    lo, hi = [3, 5, 2], [10, 20, 9]
    box_mm = index_box_to_physical(phantom.image, lo, hi)
    lo2, hi2 = physical_box_to_index(phantom.image, box_mm)
    assert all(a <= b for a, b in zip(lo2, lo)) and all(a >= b for a, b in zip(hi2, hi))  # covers it


def test_roi_box_leaves_the_outside_empty(tmp_path, phantom):
    path = tmp_path / "ph.nii.gz"
    sitk.WriteImage(phantom.image, str(path))
    lo, hi = [20, 10, 5], [44, 40, 30]
    box_mm = index_box_to_physical(phantom.image, lo, hi)
    report = segment_files([path], "phantom-unet", tmp_path / "o", device="cpu", roi_mm=box_mm)[0]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(report["outputs"]["labels"]))
    ilo, ihi = physical_box_to_index(phantom.image, box_mm)
    inside = np.zeros(labels.shape, bool)
    inside[ilo[2]:ihi[2], ilo[1]:ihi[1], ilo[0]:ihi[0]] = True
    assert labels[~inside].max() == 0
    assert labels[inside].max() > 0
    conf = sitk.GetArrayFromImage(sitk.ReadImage(report["outputs"]["confidence"]))
    assert np.all(conf[~inside] == 1.0)


def test_bad_roi_is_a_usage_error(tmp_path, phantom, capsys):
    path = tmp_path / "ph.nii.gz"
    sitk.WriteImage(phantom.image, str(path))
    assert main(["segment", str(path), "--model", "phantom-unet", "--output", str(tmp_path / "o"),
                 "--roi", "1,2,3"]) == 2
    assert "--roi" in capsys.readouterr().err


def test_json_progress_lines_parse_and_end_with_a_result(tmp_path, phantom):
    path = tmp_path / "ph.nii.gz"
    sitk.WriteImage(phantom.image, str(path))
    proc = subprocess.run([sys.executable, "-m", "medseg_core", "segment", str(path), "--model", "phantom-unet",
                           "--output", str(tmp_path / "o"), "--device", "cpu", "--progress", "json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["event"] == "result"
    assert events[-1]["outputs"][0]["labels"].endswith("ph_labels.nii.gz")
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert stages.index("preprocess") < stages.index("infer") < stages.index("write")
    assert all(0.0 <= e["fraction"] <= 1.0 for e in events if e["event"] == "progress")


def test_json_progress_ends_with_an_error_on_bad_input(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medseg_core", "segment", str(tmp_path / "missing.nii.gz"),
                           "--model", "phantom-unet", "--output", str(tmp_path / "o"), "--progress", "json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    last = json.loads(proc.stdout.splitlines()[-1])
    assert last["event"] == "error" and last["code"] == 2 and "missing.nii.gz" in last["message"]


def test_sigterm_ends_within_two_seconds_with_no_partial_output(tmp_path):
    from medseg_core.data.phantom import make_phantom

    inputs = []
    for i in range(6):
        ph = make_phantom(shape=(64, 112, 112), seed=i)
        inputs.append(tmp_path / f"c{i}.nii.gz")
        sitk.WriteImage(ph.image, str(inputs[-1]))
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "medseg_core", "segment", *map(str, inputs), "--model",
                             "phantom-unet", "--output", str(out), "--device", "cpu", "--progress", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until the network is running
        if json.loads(line).get("stage") == "infer":
            break
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=10)
    elapsed = time.monotonic() - t0
    assert code == 130
    assert elapsed < 2.0, elapsed
    names = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not [n for n in names if n.startswith(".")]  # no temporary files
    stems = {n.split("_")[0].split(".")[0] for n in names}
    for stem in stems:  # a case is either complete or absent
        assert f"{stem}_report.json" in names and f"{stem}_labels.nii.gz" in names


@pytest.mark.parametrize("net,kwargs,source", [
    ("focusnet", {"small_organs": [4, 5], "roi_sizes": [[8, 12, 12], [8, 12, 12]], "heatmap_threshold": 0.0,
                  "features": [6, 8], "aspp_growth": 4, "sos_features": [4, 6]}, "heatmap"),
    ("lsnet", {"score_threshold": 0.0, "lnet_features": [4, 8], "snet_features": [4, 8], "roi_size": 16}, "boxes"),
])
def test_regions_come_from_the_networks_own_heads(tmp_path, phantom, net, kwargs, source):
    # Untrained weights: the regions mean nothing, but their path from heads to boxes is exercised.
    import copy

    import torch

    from medseg_core.models import find_model, save_package
    from medseg_core.models.card import NetworkSpec
    from medseg_core.nets import build_network

    parent = find_model("phantom-unet").card
    card = copy.deepcopy(parent)
    card.name = f"tiny-{net}"
    card.network = NetworkSpec(net, {"spatial_dims": 3, "in_channels": 1, "out_channels": 6, **kwargs})
    card.training = {}
    torch.manual_seed(0)
    model = build_network(net, **card.network.kwargs)
    save_package(card, model.state_dict(), tmp_path / card.name)
    path = tmp_path / "ph.nii.gz"
    sitk.WriteImage(phantom.image, str(path))
    report = segment_files([path], str(tmp_path / card.name), tmp_path / "o", device="cpu")[0]
    regions = json.loads(open(report["outputs"]["rois"]).read())["regions"]
    assert regions and {r["source"] for r in regions} == {source}
    assert {r["label"] for r in regions} <= {"LeftGland", "RightGland"}
    size = phantom.image.GetSize()
    for r in regions:
        i0, j0, k0, i1, j1, k1 = r["box_index"]
        assert 0 <= i0 <= i1 <= size[0] and 0 <= j0 <= j1 <= size[1] and 0 <= k0 <= k1 <= size[2]
        b = np.array(r["box_mm"])
        assert np.all(b[:3] <= b[3:])


def test_lsnet_segments_the_user_box_with_its_snet(tmp_path, phantom):
    import copy

    import torch

    from medseg_core.models import find_model, save_package
    from medseg_core.models.card import NetworkSpec
    from medseg_core.nets import build_network

    card = copy.deepcopy(find_model("phantom-unet").card)
    card.name, card.training = "tiny-lsnet", {}
    card.network = NetworkSpec("lsnet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 6,
                                         "lnet_features": [4, 8], "snet_features": [4, 8], "roi_size": 16})
    torch.manual_seed(0)
    save_package(card, build_network("lsnet", **card.network.kwargs).state_dict(), tmp_path / card.name)
    path = tmp_path / "ph.nii.gz"
    sitk.WriteImage(phantom.image, str(path))
    box_mm = index_box_to_physical(phantom.image, [20, 10, 5], [44, 40, 30])
    calls = []
    from medseg_core.nets.lsnet import LSNet

    original = LSNet.forward

    def spy(self, x, boxes=None, box_classes=None):
        calls.append(boxes)
        return original(self, x, boxes=boxes, box_classes=box_classes)

    LSNet.forward = spy
    try:
        report = segment_files([path], str(tmp_path / card.name), tmp_path / "o", device="cpu", roi_mm=box_mm)[0]
    finally:
        LSNet.forward = original
    assert len(calls) == 1 and calls[0] is not None and calls[0].shape == (1, 1, 6)  # one pass, the user box
    labels = sitk.GetArrayFromImage(sitk.ReadImage(report["outputs"]["labels"]))
    ilo, ihi = physical_box_to_index(phantom.image, box_mm)
    inside = np.zeros(labels.shape, bool)
    inside[ilo[2]:ihi[2], ilo[1]:ihi[1], ilo[0]:ihi[0]] = True
    assert labels[~inside].max() == 0


def test_2d_network_regions_span_the_slices_where_they_show():
    # A 2D L-SNet or FocusNet predicts slice by slice: its boxes have no slice axis, so the
    # region spans the run of slices around the peak where the heatmap passes the threshold.
    import SimpleITK as sitk

    from medseg_core.data.preprocess import Grid
    from medseg_core.inference.heads import Heads
    from medseg_core.inference.regions import network_regions

    ref = sitk.Image([20, 20, 10], sitk.sitkUInt8)  # (x, y, z); identity geometry, 1 mm
    grid = Grid(ref.GetOrigin(), ref.GetSpacing(), ref.GetDirection(), ref.GetSize())
    heat = np.zeros((1, 10, 20, 20), np.float32)
    heat[0, 3:6, 9:12, 9:12] = 0.7
    heat[0, 4, 10, 10] = 0.9  # the peak, at (z, y, x) = (4, 10, 10)
    distances = np.zeros((4, 10, 20, 20), np.float32)
    distances[:] = np.array([2, 3, 2, 3], np.float32)[:, None, None, None]  # (y0, x0, y1, x1) edges
    lsnet = Heads(heatmaps=1, distances=4, heatmap_classes=[1], threshold=0.5)
    (r,) = network_regions(heat, distances, lsnet, grid, ref, {1: "Gland"})
    assert r["source"] == "boxes" and r["center_index"] == [10, 10, 4]
    assert r["box_index"] == [7, 8, 3, 13, 12, 6]  # x 10-3..10+3, y 10-2..10+2, z: slices 3-5
    focus = Heads(heatmaps=1, heatmap_classes=[1], threshold=0.5, roi_sizes=[[4, 6]])
    (r,) = network_regions(heat, None, focus, grid, ref, {1: "Gland"})
    assert r["source"] == "heatmap" and r["box_index"] == [7, 8, 3, 13, 12, 6]


def test_lsnet_segments_a_box_smaller_than_its_window(tmp_path, phantom):
    """A user box of a few voxels: the crop is padded to the trained window, so the L-Net's deepest
    level keeps some extent (instance norm once refused a 1 x 1 map), and the result stays in the box."""
    import copy

    import torch

    from medseg_core.models import find_model, save_package
    from medseg_core.models.card import NetworkSpec
    from medseg_core.nets import build_network

    card = copy.deepcopy(find_model("phantom-unet").card)
    card.name, card.training = "tiny-lsnet", {}
    card.network = NetworkSpec("lsnet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 6,
                                         "lnet_features": [4, 8, 16, 32], "snet_features": [4, 8], "roi_size": 16})
    torch.manual_seed(0)
    save_package(card, build_network("lsnet", **card.network.kwargs).state_dict(), tmp_path / card.name)
    path = tmp_path / "ph.nii.gz"
    sitk.WriteImage(phantom.image, str(path))
    box_mm = index_box_to_physical(phantom.image, [30, 30, 20], [34, 34, 23])
    report = segment_files([path], str(tmp_path / card.name), tmp_path / "o", device="cpu", roi_mm=box_mm)[0]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(report["outputs"]["labels"]))
    ilo, ihi = physical_box_to_index(phantom.image, box_mm)
    inside = np.zeros(labels.shape, bool)
    inside[ilo[2]:ihi[2], ilo[1]:ihi[1], ilo[0]:ihi[0]] = True
    assert not labels[~inside].any()
