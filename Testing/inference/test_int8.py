"""A package's int8 OpenVINO network (``card.inference.int8``): recorded, checked, and run exactly
where the CPU computes in float32. The "int8" network here is the float export under the int8
names (NNCF is needed only to make a real one): what is tested is the mechanism, not the numbers
(benchmarks/int8.py measures those)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medseg_core.errors import ModelError
from medseg_core.inference import runtime
from medseg_core.models import find_model
from medseg_core.models.card import InferenceSpec
from medseg_core.models.package import load_package, sha256_file

needs_openvino = pytest.mark.skipif(runtime.openvino_version() is None,
                                    reason="OpenVINO is optional (pip install openvino onnx); PyTorch runs without it")


def test_the_cards_int8_record_round_trips_and_a_bad_one_is_refused():
    files = {"openvino_int8.xml": "a" * 64, "openvino_int8.bin": "b" * 64}
    spec = InferenceSpec.from_dict({"patch_size": [8, 8, 8], "int8": {"files": files, "calibration": "x"}})
    assert InferenceSpec.from_dict(spec.to_dict()) == spec and spec.int8["files"] == files
    assert "int8" not in InferenceSpec.from_dict({"patch_size": [8, 8, 8]}).to_dict()  # older cards keep their form
    for bad in ({"files": {"net.xml": "a" * 64}}, {"files": {"a.xml": "a" * 64, "a.bin": "short"}}, {"files": []}):
        with pytest.raises(ValueError, match="int8.files"):
            InferenceSpec.from_dict({"patch_size": [8, 8, 8], "int8": bad})


@pytest.fixture
def int8_package(tmp_path):
    """phantom-unet with its float export filed as its int8 network."""
    pkg = find_model("phantom-unet")
    folder = tmp_path / "phantom-int8"
    shutil.copytree(pkg.path, folder)
    window = (len(pkg.card.channels), *pkg.card.patch_size)
    xml = runtime.export(pkg.build("cpu").eval(), window, pkg.card.weights.sha256)
    shutil.copyfile(xml, folder / "openvino_int8.xml")
    shutil.copyfile(xml.with_suffix(".bin"), folder / "openvino_int8.bin")
    card = json.loads((folder / "card.json").read_text())
    names = ("openvino_int8.xml", "openvino_int8.bin")
    card["inference"]["int8"] = {"files": {n: sha256_file(folder / n) for n in names}}
    (folder / "card.json").write_text(json.dumps(card))
    return load_package(folder)


@needs_openvino
def test_a_changed_or_missing_int8_file_is_one_clear_error(int8_package):
    assert int8_package.int8_xml() == int8_package.path / "openvino_int8.xml"
    (int8_package.path / "openvino_int8.bin").write_bytes(b"not the network")
    with pytest.raises(ModelError, match="openvino_int8.bin: SHA-256 does not match"):
        int8_package.int8_xml()
    (int8_package.path / "openvino_int8.bin").unlink()
    with pytest.raises(ModelError, match="openvino_int8.bin: the card's int8 network file is missing"):
        int8_package.int8_xml()


@needs_openvino
def test_the_int8_network_runs_on_the_float32_path_only(int8_package, monkeypatch):
    from medseg_core.data.phantom import make_phantom
    from medseg_core.inference.predictor import Predictor

    monkeypatch.setenv("MEDSEG_CPU_BF16", "0")
    image = make_phantom(seed=5).image
    pred = Predictor(int8_package, device="cpu", runtime="openvino")
    assert pred._openvino.int8 and pred._net is None  # no PyTorch needed for it either
    pred.remember_windows({})  # never shared with another network: nothing is kept
    assert pred._openvino.memo is None
    got = pred.predict([image], confidence=False).probabilities
    monkeypatch.setenv("MEDSEG_INT8", "0")  # off: the float export of the weights
    plain = Predictor(int8_package, device="cpu", runtime="openvino")
    assert not plain._openvino.int8
    np.testing.assert_allclose(plain.predict([image], confidence=False).probabilities, got, atol=1e-5)
    monkeypatch.delenv("MEDSEG_INT8")
    assert not Predictor(int8_package, device="cpu", runtime="openvino", int8=False)._openvino.int8  # a fine-tune's
    window = (1, *int8_package.card.patch_size)
    assert runtime.int8_windows(int8_package, window, bf16=True) is None  # native bf16: its own path
    assert runtime.int8_windows(find_model("phantom-unet"), window, bf16=False) is None  # none recorded
    # trained in place (a fine-tune), the network leaves the int8 copy for PyTorch
    torch_pred = Predictor(int8_package, device="cpu", runtime="openvino")
    net = torch_pred.net
    windows = torch_pred._openvino
    assert windows.takes(window)
    with __import__("torch").no_grad():
        next(net.parameters()).add_(1.0)
    assert not windows.takes(window)


@needs_openvino
def test_a_correction_of_segments_int8_result_changes_only_the_organs_redrawn(tmp_path, monkeypatch):
    """On the float32 path ``medseg segment`` runs the int8 network; a fine-tune must see that result,
    or the organs the user accepted differ from its own pass and count as edited."""
    import SimpleITK as sitk
    import torch

    from medseg_core.data.phantom import make_phantom
    from medseg_core.inference.predictor import Predictor
    from medseg_core.training.finetune import finetune

    monkeypatch.setenv("MEDSEG_CPU_BF16", "0")
    monkeypatch.setenv("MEDSEG_RUNTIME", "auto")  # as a user runs it: OpenVINO, with the int8 network
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "home"))
    pkg = find_model("phantom-unet")
    folder = tmp_path / "phantom-int8-other"
    shutil.copytree(pkg.path, folder)
    net = pkg.build("cpu").eval()
    with torch.no_grad():  # an "int8" network that draws the boundaries a little differently, as a real one does
        net.head.bias.add_(torch.linspace(-3.0, 3.0, net.head.bias.numel()))
    window = (len(pkg.card.channels), *pkg.card.patch_size)
    xml = runtime.export(net, window, "e8" * 32)
    for suffix in (".xml", ".bin"):
        shutil.copyfile(xml.with_suffix(suffix), folder / f"openvino_int8{suffix}")
    card = json.loads((folder / "card.json").read_text())
    names = ("openvino_int8.xml", "openvino_int8.bin")
    card["inference"]["int8"] = {"files": {n: sha256_file(folder / n) for n in names}}
    (folder / "card.json").write_text(json.dumps(card))
    image = make_phantom(seed=7).image
    shown = Predictor(load_package(folder), device="cpu").predict([image], confidence=False).labels
    float32 = Predictor(load_package(folder), device="cpu", int8=False).predict([image], confidence=False).labels
    drawn = sitk.GetArrayFromImage(shown)
    assert (drawn != sitk.GetArrayFromImage(float32)).sum() > 20  # the two networks differ, as int8 and float32 do
    z = np.nonzero(drawn == 3)[0]
    drawn[: int(np.median(z))][drawn[: int(np.median(z))] == 3] = 1  # the user: the tumour's top half is liver
    correction = sitk.GetImageFromArray(drawn)
    correction.CopyInformation(shown)
    sitk.WriteImage(image, str(tmp_path / "ph.nii.gz"))
    sitk.WriteImage(correction, str(tmp_path / "ph_fixed.nii.gz"))
    res = finetune(str(folder), [(tmp_path / "ph.nii.gz", tmp_path / "ph_fixed.nii.gz")], steps=1, name="ph-ft",
                   device="cpu")
    edited = sorted(n for n, row in res.per_label.items() if row["edited"])
    assert edited == ["Liver", "Tumour"]


def test_a_fine_tuned_card_does_not_inherit_its_parents_int8_network():
    from medseg_core.training.finetune_card import new_card

    pkg = find_model("hn-oar-unet")
    assert pkg.card.inference.int8  # the bundled default has one
    label = pkg.card.labels[1].name
    card = new_card(pkg, "hn-oar-unet-ft", "20261203-1200", {"cases": [{"labels_trained": [label]}], "steps": 12})
    assert card.inference.int8 == {} and "int8" not in card.to_dict()["inference"]
