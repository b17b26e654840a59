"""A network's trunk on OpenVINO, the rest in PyTorch (FocusNet's S-Net and SOL-Net)."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medseg_core.inference import runtime

needs_openvino = pytest.mark.skipif(runtime.openvino_version() is None,
                                    reason="OpenVINO is optional (pip install openvino onnx); PyTorch runs without it")


@needs_openvino
def test_focusnets_trunk_runs_on_openvino_and_the_predictor_gives_pytorchs_result(tmp_path, monkeypatch):
    import copy

    from medseg_core.data.phantom import make_phantom
    from medseg_core.inference.predictor import Predictor
    from medseg_core.models import find_model, load_package, save_package
    from medseg_core.models.card import NetworkSpec
    from medseg_core.nets import build_network

    monkeypatch.setenv("MEDSEG_CPU_BF16", "0")  # float32 both ways, wherever the test runs
    card = copy.deepcopy(find_model("phantom-unet").card)
    card.name, card.training = "tiny-focusnet2d", {}
    card.network = NetworkSpec("focusnet", {"spatial_dims": 2, "in_channels": 1, "out_channels": card.num_classes,
                                            "small_organs": [1, 2], "roi_sizes": [[12, 12], [12, 12]],
                                            "heatmap_threshold": 0.0, "features": [6, 8], "aspp_growth": 4,
                                            "sos_features": [4, 6]})
    card.inference.patch_size = [32, 32]
    torch.manual_seed(0)
    net = build_network("focusnet", **card.network.kwargs).eval()
    save_package(card, net.state_dict(), tmp_path / card.name)
    pkg = load_package(tmp_path / card.name)
    # the trunk's four outputs, one window at a time, equal PyTorch's
    window = (1, 32, 32)
    trunk = runtime.trunk_windows(net, pkg.card, window, bf16=False)
    x = torch.randn(3, *window)
    with torch.inference_mode():
        ref = net.trunk()(x)
    outs = trunk(x.numpy())
    assert len(outs) == 4
    for got, want in zip(outs, ref):
        assert got.shape == tuple(want.shape) and np.allclose(got, want.numpy(), atol=1e-4)
    # the predictor runs the trunk there and the SOS-Nets in PyTorch: PyTorch's result. The ROIs
    # are placed by given points: an untrained SOL-Net's heatmaps are flat, their peaks ties that
    # rounding may break either way
    image = sitk.GetArrayFromImage(make_phantom(seed=3).image).astype(np.float32)[None] / 100.0
    probs = {}
    for rt in ("torch", "openvino"):
        pred = Predictor(pkg, device="cpu", runtime=rt, batch_size=3)
        assert pred.runtime == rt
        probs[rt] = pred.predict_array(image[:, :9, :40, :36], centers={1: (4, 20, 18), 2: (4, 8, 30)})[0]
    assert pred._trunk_windows is not None and pred._openvino is None  # no export of the whole network
    assert np.abs(probs["openvino"] - probs["torch"]).max() < 1e-4
    with torch.no_grad():  # trained in place: PyTorch runs it all from now on
        next(pred.net.parameters()).add_(0.1)
    assert not pred._trunk_windows.fits(np.zeros((1, *window), np.float32))
