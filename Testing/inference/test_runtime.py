"""What runs the windows: the rules of ``auto``, and OpenVINO against PyTorch where it is installed."""

import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medseg_core.errors import InputError
from medseg_core.inference import runtime
from medseg_core.inference.runtime import OpenVinoWindows, cache_root, choose

def test_auto_takes_openvino_on_any_cpu_for_plain_logits(monkeypatch):
    monkeypatch.delenv("MEDSEG_RUNTIME", raising=False)
    monkeypatch.setattr(runtime, "openvino_version", lambda: "2026.4.1")
    assert choose("auto", "cpu", plain_logits=True) == "openvino"  # with bf16 or without: it is faster on both
    assert choose("auto", "cpu", plain_logits=False) == "torch"  # heads or prompts
    assert choose("auto", "cuda", plain_logits=True) == "torch"
    assert choose("torch", "cpu", plain_logits=True) == "torch"
    monkeypatch.setenv("MEDSEG_RUNTIME", "torch")  # the environment decides for "auto" only
    assert choose("auto", "cpu", plain_logits=True) == "torch"
    assert choose("openvino", "cpu", plain_logits=True) == "openvino"
    with pytest.raises(InputError, match="only for a CPU"):
        choose("openvino", "cuda", plain_logits=True)
    with pytest.raises(InputError, match="unknown runtime"):
        choose("tensorrt", "cpu", plain_logits=True)


def test_without_openvino_auto_is_pytorch_and_asking_for_it_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("MEDSEG_RUNTIME", raising=False)
    monkeypatch.setattr(runtime, "openvino_version", lambda: None)
    assert choose("auto", "cpu", plain_logits=True) == "torch"
    with pytest.raises(InputError, match="OpenVINO is not installed"):
        choose("openvino", "cpu", plain_logits=True)


needs_openvino = pytest.mark.skipif(runtime.openvino_version() is None,
                                    reason="OpenVINO is optional (pip install openvino onnx); PyTorch runs without it")


@needs_openvino
def test_openvino_windows_equal_pytorchs_and_the_export_is_made_once():
    from medseg_core.nets import build_network

    torch.manual_seed(0)
    net = build_network("unet", spatial_dims=3, features=[4, 8, 16], in_channels=1, out_channels=3).eval()
    x = torch.randn(2, 1, 16, 32, 32)
    said = []
    xml = runtime.export(net, (1, 16, 32, 32), "ab" * 32, log=said.append)
    ov = OpenVinoWindows(xml, (1, 16, 32, 32), threads=1, net=net)
    with torch.inference_mode():
        ref = net(x).logits.numpy()
    out = ov(x.numpy())
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.allclose(out, ref, atol=1e-3), float(np.abs(out - ref).max())
    assert ov.fits(x[:1].numpy()) and not ov.fits(np.zeros((1, 1, 16, 32, 48)))
    # in bf16 (where the CPU has none, OpenVINO computes float32): close, not equal
    low = OpenVinoWindows(xml, (1, 16, 32, 32), bf16=True, threads=1)(x.numpy())
    assert np.abs(low - ref).max() < 0.05 * np.abs(ref).max()
    assert len(said) == 1  # exported ...
    assert runtime.export(net, (1, 16, 32, 32), "ab" * 32, log=said.append) == xml
    assert OpenVinoWindows.cached("ab" * 32, (1, 16, 32, 32)) is not None
    assert OpenVinoWindows.cached("cd" * 32, (1, 16, 32, 32)) is None
    assert len(said) == 1  # ... once: the second reads the cache
    with torch.no_grad():  # the network trained in place: the copy no longer stands for it
        next(net.parameters()).add_(0.1)
    assert not ov.fits(x[:1].numpy())
    entries = [p.name for p in cache_root().iterdir()]
    assert len(entries) == 1 and not entries[0].startswith(".tmp-")
    # the cache keeps the most recently used exports only
    for i in range(runtime.KEEP_EXPORTS + 1):
        runtime.export(net, (1, 16, 32, 32), f"{i:02d}" * 32)
    kept = sorted(p.name[:2] for p in cache_root().iterdir())
    assert len(kept) == runtime.KEEP_EXPORTS and "ab" not in kept and "00" not in kept


@needs_openvino
def test_a_stretched_window_is_compiled_on_first_use_and_equals_pytorch():
    from medseg_core.nets import build_network

    torch.manual_seed(0)
    net = build_network("unet", spatial_dims=3, features=[4, 8, 16], in_channels=1, out_channels=3).eval()
    ov = OpenVinoWindows(runtime.export(net, (1, 16, 32, 32), "9a" * 32), (1, 16, 32, 32), threads=1, net=net)
    x = torch.randn(1, 1, 16, 32, 36)  # x stretched by 1/8: within STRETCH
    assert ov.fits(x.numpy()) and not ov.fits(np.zeros((1, 1, 16, 32, 37))) and not ov.fits(np.zeros((1, 1, 8, 32, 32)))
    with torch.inference_mode():
        ref = net(x).logits.numpy()
    out = ov(x.numpy())
    assert out.shape == ref.shape and np.allclose(out, ref, atol=1e-3), float(np.abs(out - ref).max())
    assert ov.windows == [(1, 16, 32, 36)]  # only what ran is compiled, once
    ov(x.numpy())
    assert ov.windows == [(1, 16, 32, 36)]
    ov(np.zeros((1, 1, 16, 36, 32), np.float32))  # another stretched window replaces the last one
    assert ov.windows == [(1, 16, 36, 32)]
    ov(np.zeros((1, 1, 16, 32, 32), np.float32))  # the card's window is kept beside the last stretched one
    ov(x.numpy())
    assert ov.windows == [(1, 16, 32, 32), (1, 16, 32, 36)]
    # 18 is not a multiple of the network's down-sampling (4): the export cannot take it, PyTorch runs it
    assert not ov.fits(np.zeros((1, 1, 18, 32, 32))) and (1, 18, 32, 32) in ov._refused


@needs_openvino
def test_segment_with_openvino_writes_what_pytorch_writes(tmp_path):
    from medseg_core.data.phantom import make_phantom
    from medseg_core.segment import segment_files

    ph = make_phantom(seed=5)
    path = tmp_path / "ph.nii.gz"
    sitk.WriteImage(ph.image, str(path))
    out = {}
    for rt in ("torch", "openvino"):
        rep = segment_files([path], "phantom-unet", tmp_path / rt, device="cpu", runtime=rt, confidence=False)[0]
        assert rep["runtime"] == rt
        out[rt] = sitk.GetArrayFromImage(sitk.ReadImage(rep["outputs"]["labels"]))
    assert out["torch"].any()
    assert np.mean(out["torch"] == out["openvino"]) > 0.9999


@needs_openvino
def test_finetune_measures_its_new_weights_not_an_export_of_the_parents(tmp_path, monkeypatch):
    # finetune trains the predictor's network in place: an OpenVINO copy made from the parent's
    # weights before training would score the parent again after it
    from medseg_core.data.phantom import make_phantom
    from medseg_core.training.finetune import finetune

    monkeypatch.delenv("MEDSEG_RUNTIME", raising=False)  # "auto": OpenVINO where it would help
    from medseg_core.inference import predictor

    # what auto picks on a CPU without bf16, wherever the test runs; an explicit "torch" is kept
    monkeypatch.setattr(predictor, "choose", lambda rt, *a, **k: "torch" if rt == "torch" else "openvino")
    ph = make_phantom(seed=3)
    sitk.WriteImage(ph.image, str(tmp_path / "i.nii.gz"))
    lab = sitk.GetArrayFromImage(ph.label)
    lab[lab == 3] = 1  # the tumour painted over as liver: a large correction
    edited = sitk.GetImageFromArray(lab)
    edited.CopyInformation(ph.label)
    sitk.WriteImage(edited, str(tmp_path / "l.nii.gz"))
    sharing = []  # (the new model's predictor, the parent's, whether they shared)
    share = predictor.Predictor.share_windows
    monkeypatch.setattr(predictor.Predictor, "share_windows",
                        lambda self, parent: sharing.append((self, parent, share(self, parent))) or sharing[-1][2])
    res = finetune("phantom-unet", [(tmp_path / "i.nii.gz", tmp_path / "l.nii.gz")], steps=4, lr=5e-3, device="cpu")
    assert res.dice_after != res.dice_before
    # the new model's parent half is the parent's OpenVINO windows, and took every window from the
    # parent's pass; the Dice after is what the stored package gives when both halves run
    [(child, parent, shared)] = sharing
    assert shared and child._openvino.base is parent._openvino
    assert child._openvino.base.reused > 0 and child._openvino.base.reused == len(parent._openvino.memo)
    from medseg_core.models import load_package
    from medseg_core.training import finetune as ft
    from medseg_core.training.finetune_card import summarise

    child = predictor.Predictor(load_package(res.package_dir), device="cpu")
    assert child._net is None and child.runtime == "openvino"  # both halves' exports filed for it: no PyTorch
    cases = ft._prepare(child, [(tmp_path / "i.nii.gz", tmp_path / "l.nii.gz")], lambda *a, **k: None)
    assert summarise(ft._evaluate(child, cases, lambda *a, **k: None)[0], child.card.label_names())[0] == res.dice_after
    # the new package (a routed network: the parent and the fine-tuned copy) exports and runs on
    # OpenVINO as it runs on PyTorch (in float32 there too, on a CPU with bf16 as well)
    from medseg_core.segment import segment_files

    monkeypatch.setenv("MEDSEG_CPU_BF16", "0")

    out = {}
    for rt in ("torch", "openvino"):
        rep = segment_files([tmp_path / "i.nii.gz"], str(res.package_dir), tmp_path / rt, device="cpu", runtime=rt,
                            confidence=False)[0]
        assert rep["runtime"] == rt
        out[rt] = sitk.GetArrayFromImage(sitk.ReadImage(rep["outputs"]["labels"]))
    assert np.mean(out["torch"] == out["openvino"]) > 0.9999


def test_the_cli_and_the_engine_know_the_same_runtimes():
    from medseg_core.commands import checks

    assert checks.RUNTIMES == runtime.RUNTIMES


@needs_openvino
def test_once_exported_a_cpu_run_never_imports_pytorch_and_still_checks_the_weights(tmp_path):
    """The second run reads the export from the cache: the same labels, and no ``import torch``
    (1.2 s of a 3 s case); the weights' SHA-256 is still checked before anything runs."""
    import shutil
    import subprocess
    import sys

    from medseg_core.data.phantom import make_phantom
    from medseg_core.errors import ModelError
    from medseg_core.models import find_model
    from medseg_core.segment import segment_files

    ph = make_phantom(seed=6)
    path = tmp_path / "ph.nii.gz"
    sitk.WriteImage(ph.image, str(path))
    first = segment_files([path], "phantom-unet", tmp_path / "a", device="cpu", runtime="openvino")[0]
    script = ("import sys, json; from medseg_core.segment import segment_files; "
              f"r = segment_files([{str(path)!r}], 'phantom-unet', {str(tmp_path / 'b')!r}, device='auto'); "
              "print(json.dumps([r[0]['runtime'], 'torch' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "MEDSEG_RUNTIME"})  # auto
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == '["openvino", false]'
    labels = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / d / "ph_labels.nii.gz"))) for d in "ab"]
    assert first["runtime"] == "openvino" and labels[0].any() and np.array_equal(labels[0], labels[1])
    # a package whose weights were replaced is refused though its export is in the cache
    pkg = tmp_path / "pkg"
    shutil.copytree(find_model("phantom-unet").path, pkg)
    with open(pkg / "weights.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    with pytest.raises(ModelError, match="SHA-256"):
        segment_files([path], str(pkg), tmp_path / "c", device="cpu")


def test_routing_in_numpy_is_the_networks_own():
    from medseg_core.nets.routed import route

    torch.manual_seed(0)
    base, tuned = torch.randn(2, 6, 5, 4, 3) * 20, torch.randn(2, 6, 5, 4, 3) * 20  # a trained network's range
    tuned[0, 1, 2, 2, 1] += 300  # the copy leaves the other classes less than e^-200 here
    for routed in ([1, 3], [5], []):
        got = runtime.route_log_probs(base.numpy().copy(), tuned.numpy().copy(), routed)
        np.testing.assert_allclose(got, route(base, tuned, routed).numpy(), atol=1e-4, rtol=0)
        assert np.isfinite(got).all()


class _CountingRequest:
    """An OpenVINO infer request that counts the windows it runs."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def infer(self, *args, **kwargs):
        self.calls += 1
        return self.inner.infer(*args, **kwargs)

    def get_output_tensor(self, i):
        return self.inner.get_output_tensor(i)


@needs_openvino
def test_a_routed_network_runs_as_its_two_halves_and_a_window_met_again_is_not_run_again(monkeypatch):
    from types import SimpleNamespace

    from medseg_core.nets import build_network
    from medseg_core.nets.routed import RoutedNetwork

    torch.manual_seed(1)
    spec = {"name": "unet", "kwargs": {"spatial_dims": 3, "features": [4, 8, 16], "in_channels": 1, "out_channels": 4}}
    net = RoutedNetwork.around(build_network(spec["name"], **spec["kwargs"]), spec, [2]).eval()
    with torch.no_grad():
        for p in net.tuned.parameters():
            p.add_(0.2 * torch.randn_like(p))
    card = SimpleNamespace(weights=SimpleNamespace(sha256="ef" * 32),
                           network=SimpleNamespace(name="routed", kwargs={"routed": [2]}))
    window = (1, 16, 32, 32)
    assert runtime.cached_windows(card, window, bf16=False) is None
    windows = runtime.windows_for(net, card, window, bf16=False)
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.inference_mode():
        ref = net(x).logits.numpy()
    assert np.abs(windows(x.numpy()) - ref).max() < 1e-3
    assert runtime.cached_windows(card, window, bf16=False) is not None  # both halves are in the cache
    key = (window, False)  # the logits' graph of the card's window
    base, tuned = _CountingRequest(windows.base._requests[key]), _CountingRequest(windows.tuned._requests[key])
    windows.base._requests[key], windows.tuned._requests[key] = base, tuned
    windows.memo = {}
    first = windows(x.numpy())
    again = windows(x.numpy())  # the parent half's windows come from the memo, the copy's run again
    assert (base.calls, tuned.calls, windows.base.reused) == (2, 4, 2)
    np.testing.assert_array_equal(first, again)
    assert np.abs(again - ref).max() < 1e-3
    windows(x.numpy() + 1.0)  # other windows: run
    assert base.calls == 4
    monkeypatch.setattr(runtime, "MEMO_BYTES", first[0].nbytes)  # room for one window's output
    windows.memo = {}
    windows(x.numpy())
    assert len(windows.memo) == 1


@needs_openvino
def test_weighted_windows_blend_as_the_logits_do_and_release_keeps_the_results():
    from medseg_core.inference.sliding_window import sliding_window_predict
    from medseg_core.nets import build_network

    torch.manual_seed(0)
    net = build_network("unet", spatial_dims=3, features=[4, 8, 16], in_channels=1, out_channels=3).eval()
    ov = OpenVinoWindows(runtime.export(net, (1, 16, 32, 32), "7c" * 32), (1, 16, 32, 32), threads=1, net=net)
    image = np.random.default_rng(1).normal(size=(1, 24, 40, 36)).astype(np.float32)  # x stretched to 36
    patch = (16, 32, 36)
    ref = sliding_window_predict(image, ov, patch, 3, batch_size=2)
    out = sliding_window_predict(image, ov, patch, 3, batch_size=2, weighted=ov.weighted)
    assert out.shape == ref.shape == (3, 24, 40, 36)
    np.testing.assert_allclose(out, ref, atol=1e-5)  # OpenVINO's softmax and product against numpy's
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
    assert (1, 16, 32, 36) in ov.windows
    ov.release()  # the buffers are freed; the next window allocates them again
    np.testing.assert_allclose(sliding_window_predict(image, ov, patch, 3, weighted=ov.weighted), out, atol=1e-6)
    with pytest.raises(ValueError, match="class probabilities only"):
        sliding_window_predict(image, ov, patch, 2, num_extra=1, weighted=ov.weighted)


@needs_openvino
def test_the_predictor_blends_openvinos_weighted_windows_in_float32_as_pytorchs_logits(monkeypatch):
    from medseg_core.data.phantom import make_phantom
    from medseg_core.inference.predictor import Predictor
    from medseg_core.models import find_model

    monkeypatch.setenv("MEDSEG_CPU_BF16", "0")  # the float32 path, where OpenVINO blends its windows itself
    image = make_phantom(seed=5).image
    runs = {rt: Predictor(find_model("phantom-unet"), device="cpu", runtime=rt) for rt in ("torch", "openvino")}
    assert runs["openvino"]._weighted(tuple(runs["openvino"].card.patch_size)) is not None
    assert runs["torch"]._weighted(tuple(runs["torch"].card.patch_size)) is None
    probs = {rt: pred.predict([image], confidence=False).probabilities for rt, pred in runs.items()}
    assert np.abs(probs["openvino"] - probs["torch"]).max() < 1e-3


@needs_openvino
def test_a_predictor_started_from_the_export_builds_pytorch_for_a_fitted_window(monkeypatch):
    from medseg_core.data.phantom import make_phantom
    from medseg_core.inference import predictor
    from medseg_core.inference.predictor import Predictor
    from medseg_core.models import find_model

    monkeypatch.setattr(predictor, "FIT_MARGIN", 0)  # the crop's window (16, 32, 32): smaller than the card's

    image = make_phantom(seed=5).image
    Predictor(find_model("phantom-unet"), device="cpu", runtime="openvino").predict([image], confidence=False)
    pred = Predictor(find_model("phantom-unet"), device="cpu", runtime="openvino")
    assert pred._net is None  # from the cache's export, no network built
    crop = sitk.RegionOfInterest(image, [20, 20, 12], [10, 10, 4])
    out = pred.predict([crop], confidence=False, fit=True)  # a window smaller than the card's: PyTorch runs it
    assert pred._net is not None and out.probabilities.shape[1:] == out.grid.size[::-1]
