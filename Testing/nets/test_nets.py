"""The baseline U-Net and the network registry."""

import pytest
import torch

from medseg_core.nets import SegOutput, available, build_network


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dims,shape", [(3, (2, 1, 19, 26, 33)), (2, (3, 2, 37, 50))])
def test_unet_odd_shapes_and_deep_supervision(dims, shape, residual):
    net = build_network("unet", spatial_dims=dims, in_channels=shape[1], out_channels=4,
                        features=(4, 8, 16, 32), deep_supervision=True, residual=residual)
    out = net(torch.randn(*shape))
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (shape[0], 4) + shape[2:]
    assert len(out.deep_supervision) == 2
    for k, ds in enumerate(out.deep_supervision, start=1):
        assert ds.shape[:2] == (shape[0], 4)
        assert all(abs(d - (s + 2 ** k - 1) // 2 ** k) <= 1 for d, s in zip(ds.shape[2:], shape[2:]))


def test_gradients_reach_every_parameter():
    net = build_network("unet", spatial_dims=3, in_channels=1, out_channels=3, features=(4, 8, 16),
                        deep_supervision=True, norm="instance")
    out = net(torch.randn(2, 1, 16, 20, 12))
    (out.logits.square().mean() + sum(d.mean() for d in out.deep_supervision)).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_anisotropic_strides_keep_the_slice_axis():
    net = build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, features=(4, 8, 16),
                        strides=[(1, 2, 2), 2])
    assert net(torch.randn(1, 1, 5, 16, 16)).logits.shape == (1, 2, 5, 16, 16)


def test_registry_names_and_errors():
    assert "unet" in available()
    with pytest.raises(KeyError, match="unet"):
        build_network("no-such-net")


def test_instance_norm_on_channels_last_input_matches_and_stays_channels_last():
    from medseg_core.nets.factories import norm

    layer = norm(3, "instance", 5)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 2.0, 5))
        layer.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    x = torch.randn(2, 5, 6, 7, 9) * 3 + 1
    plain = layer(x)
    last = layer(x.contiguous(memory_format=torch.channels_last_3d))
    assert torch.equal(plain, torch.nn.functional.instance_norm(x, weight=layer.weight, bias=layer.bias))
    assert last.is_contiguous(memory_format=torch.channels_last_3d) and not last.is_contiguous()
    torch.testing.assert_close(last, plain, rtol=0, atol=1e-5)
    # the statistics are per sample and channel: every channel comes out with mean = bias
    torch.testing.assert_close(last.mean((2, 3, 4)), layer.bias.detach().expand(2, 5), rtol=0, atol=1e-5)


SMALL_3D = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "features": (4, 8, 16),
            "deep_supervision": True}
CHANNELS_LAST_CASES = {"unet": SMALL_3D, "unet-residual": {**SMALL_3D, "residual": True},
                       "lfam_unet": {**SMALL_3D, "offset_groups": 2}}


def test_every_network_that_claims_the_channels_last_layout_is_checked():
    from medseg_core.nets.registry import _REGISTRY

    claims = {n for n, cls in _REGISTRY.items() if getattr(cls, "channels_last_training", False)}
    assert "unet" in claims and claims <= {c.split("-")[0] for c in CHANNELS_LAST_CASES}


@pytest.mark.parametrize("name", sorted(CHANNELS_LAST_CASES))
def test_a_network_that_trains_channels_last_computes_the_same(name):
    """A fine-tune on the CPU runs these networks channels-last (training/loop.py): the loss and
    every gradient agree with the plain layout to float32 rounding."""
    torch.manual_seed(0)
    net = build_network(name.split("-")[0], **CHANNELS_LAST_CASES[name]).train()
    assert net.channels_last_training
    x = torch.randn(2, 1, 12, 16, 20)
    y = torch.randint(0, 3, (2, 12, 16, 20))

    def loss_and_grads(fmt):
        net.zero_grad(set_to_none=True)
        net.to(memory_format=fmt)
        out = net(x.contiguous(memory_format=fmt))
        loss = torch.nn.functional.cross_entropy(out.logits, y) + sum(d.square().mean() for d in out.deep_supervision)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    loss0, g0 = loss_and_grads(torch.contiguous_format)
    loss1, g1 = loss_and_grads(torch.channels_last_3d)
    net.to(memory_format=torch.contiguous_format)
    assert g0.keys() == g1.keys() and len(g0) == len(list(net.parameters()))
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-6)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-3, atol=1e-5, msg=lambda m: f"{name} {n}: {m}")
    assert all(p.is_contiguous() for p in net.parameters())
