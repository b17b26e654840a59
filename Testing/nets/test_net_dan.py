"""Difficulty-aware network: segmentation network with deep supervision and confidence network."""

import pytest
import torch
import torch.nn.functional as F

from medseg_core.nets import SegOutput, build_network
from medseg_core.nets.dan import DAN

TINY = dict(out_channels=3, features=(4, 8, 16, 16), confidence_features=(4, 8))


def _ceil(shape, k):
    return tuple(-(-s // 2 ** k) for s in shape)


@pytest.mark.parametrize("nd,shape,features", [(3, (2, 1, 13, 15, 17), (4, 8, 16, 16)),
                                                (2, (2, 2, 37, 45), (4, 8, 16))])
def test_dan_odd_shapes_deep_supervision_and_confidence(nd, shape, features):
    net = build_network("dan", spatial_dims=nd, in_channels=shape[1], **dict(TINY, features=features))
    assert isinstance(net, DAN)
    out = net(torch.randn(*shape))
    assert isinstance(out, SegOutput)
    spatial = shape[2:]
    assert out.logits.shape == (2, 3) + spatial
    assert [d.shape for d in out.deep_supervision] == [(2, 3) + _ceil(spatial, 1), (2, 3) + _ceil(spatial, 2)]
    assert out.confidence.shape == (2, 1) + spatial


def test_confidence_net_takes_one_hot_ground_truth():
    net = build_network("dan", spatial_dims=3, in_channels=1, **TINY)
    x = torch.randn(2, 1, 9, 11, 13)
    labels = torch.randint(0, 3, (2, 9, 11, 13))
    one_hot = F.one_hot(labels, 3).movedim(-1, 1).float()
    conf = net.confidence_net(x, one_hot)
    assert conf.shape == (2, 1, 9, 11, 13)
    torch.testing.assert_close(net.confidence(x, one_hot), conf)


def test_forward_confidence_is_detached_from_the_segmentation():
    net = build_network("dan", spatial_dims=3, in_channels=1, **TINY)
    x = torch.randn(2, 1, 9, 11, 13)
    out = net(x)
    out.confidence.mean().backward()
    assert all(p.grad is None for p in net.seg_net.parameters())
    assert all(p.grad is not None for p in net.confidence_net.parameters())
    # the adversarial term goes through an explicit call with undetached probabilities
    net.zero_grad(set_to_none=True)
    net.confidence(x, torch.softmax(net(x).logits, 1)).mean().backward()
    assert all(p.grad is not None for n, p in net.seg_net.named_parameters() if not n.startswith("ds_heads"))
    assert build_network("dan", spatial_dims=3, confidence_in_forward=False, **TINY)(x).confidence is None


def test_dan_gradients_reach_every_parameter_of_both_networks():
    torch.manual_seed(0)
    net = build_network("dan", spatial_dims=3, in_channels=1, **TINY)
    x = torch.randn(2, 1, 13, 16, 19)
    labels = torch.randint(0, 3, (2, 13, 16, 19))
    out = net(x)
    seg_loss = F.cross_entropy(out.logits, labels) + sum(d.square().mean() for d in out.deep_supervision)
    one_hot = F.one_hot(labels, 3).movedim(-1, 1).float()
    real, fake = net.confidence_net(x, one_hot), out.confidence
    conf_loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                 + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    (seg_loss + conf_loss).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
