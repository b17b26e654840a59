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
