"""The routed network: the classes a fine-tune edited from the fine-tuned copy, the rest from the parent."""

import warnings

import pytest
import torch

from medseg_core.nets import build_network
from medseg_core.nets.routed import RoutedNetwork, route

SPEC = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 4, "features": [4, 8, 16],
                                   "deep_supervision": True}}


def _pair(seed=0):
    torch.manual_seed(seed)
    parent = build_network(SPEC["name"], **SPEC["kwargs"]).eval()
    net = RoutedNetwork.around(parent, SPEC, [2]).eval()
    return parent, net


def test_route_by_hand():
    """Two classes besides background, class 2 routed: its probability is the tuned one, and the
    other two share the rest in the parent's proportion."""
    base = torch.log(torch.tensor([0.5, 0.3, 0.2])).view(1, 3, 1)
    tuned = torch.log(torch.tensor([0.2, 0.2, 0.6])).view(1, 3, 1)
    p = torch.softmax(route(base, tuned, [2]), 1).flatten()
    # class 2: 0.6; background and class 1 share 0.4 as 0.5 : 0.3
    torch.testing.assert_close(p, torch.tensor([0.4 * 5 / 8, 0.4 * 3 / 8, 0.6]))


def test_an_untrained_copy_changes_nothing_and_no_route_is_the_parent():
    parent, net = _pair()
    x = torch.randn(2, 1, 16, 16, 12)
    with torch.no_grad():
        want = torch.softmax(parent(x).logits, 1)
        torch.testing.assert_close(torch.softmax(net(x).logits, 1), want, atol=1e-6, rtol=0)
        net.set_routed([])
        assert torch.equal(net(x).logits, parent(x).logits)


def test_routed_classes_come_from_the_copy_and_the_others_keep_the_parents_ratios():
    parent, net = _pair(1)
    with torch.no_grad():
        for p in net.tuned.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        p = torch.softmax(net(x).logits, 1)
        tuned = torch.softmax(net.tuned(x).logits, 1)
        base = torch.softmax(parent(x).logits, 1)
    torch.testing.assert_close(p.sum(1), torch.ones_like(p[:, 0]))
    torch.testing.assert_close(p[:, 2], tuned[:, 2], atol=1e-6, rtol=0)
    assert (p[:, 2] - base[:, 2]).abs().max() > 0.01  # the copy did move
    for a, b in ((0, 1), (1, 3), (0, 3)):
        torch.testing.assert_close(p[:, a] / p[:, b], base[:, a] / base[:, b], rtol=1e-4, atol=0)


def test_builds_from_its_spec_and_state_and_refuses_background():
    parent, net = _pair(2)
    with torch.no_grad():
        next(net.tuned.parameters()).add_(1.0)
    again = build_network(net.spec()["name"], **net.spec()["kwargs"])
    again.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(again.eval()(x).logits, net(x).logits)
    assert net.spec()["kwargs"]["routed"] == [2] and again.encoder_modules()[0] is again.base
    with pytest.raises(ValueError, match="organs"):
        net.set_routed([0, 2])
    with pytest.raises(ValueError, match=r"organs \(1 to 3\)"):  # four classes: 1 to 3
        net.set_routed([4])


def test_route_exports_and_openvino_computes_what_pytorch_does(tmp_path):
    """Log-probabilities as a trained network gives them (logits of a few tens) through ONNX:
    OpenVINO, where installed, must agree with PyTorch (its ReduceLogSumExp did not)."""
    from medseg_core.inference import runtime

    if runtime.openvino_version() is None:
        pytest.skip("OpenVINO is optional (pip install openvino onnx); PyTorch runs without it")
    import numpy as np
    import openvino as ov

    class Route(torch.nn.Module):
        def forward(self, b, t):
            return route(b, t, [1, 3])

    torch.manual_seed(0)
    b, t = torch.randn(1, 6, 8, 8, 8) * 20, torch.randn(1, 6, 8, 8, 8) * 20
    path = tmp_path / "route.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Route(), (b, t), str(path), opset_version=17, dynamo=False)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = torch.from_numpy(np.array(compiled([b.numpy(), t.numpy()])[0]))
    torch.testing.assert_close(got, route(b, t, [1, 3]), atol=1e-4, rtol=0)


def test_a_card_routing_a_class_the_network_lacks_is_one_model_error(tmp_path):
    import copy

    from medseg_core.errors import ModelError
    from medseg_core.models import find_model, load_package, save_package
    from medseg_core.models.card import NetworkSpec

    parent = find_model("phantom-unet")
    net = RoutedNetwork.around(parent.build("cpu"), parent.card.network.to_dict(), [3])
    card = copy.deepcopy(parent.card)
    card.network = NetworkSpec.from_dict(net.spec())
    save_package(card, net.state_dict(), tmp_path / "ok")
    load_package(tmp_path / "ok").build("cpu")  # as saved, it builds
    card.network.kwargs["routed"] = [99]
    save_package(card, net.state_dict(), tmp_path / "bad")
    with pytest.raises(ModelError, match=r"card.json: cannot build network \(routed classes must be organs"):
        load_package(tmp_path / "bad").build("cpu")
