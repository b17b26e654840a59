"""L-SNet and its reusable parts: RoI recalibration, pasting, gradient scaling, keypoints."""

import pytest
import torch

from medseg_core.nets import SegOutput, build_network
from medseg_core.nets.grad_scale import GradScale, grad_scale
from medseg_core.nets.lsnet import OUTSIDE_LOGIT, connected_components, extract_keypoints
from medseg_core.nets.roi_align import expand_boxes, roi_crop, roi_paste

TINY = dict(in_channels=1, out_channels=3, lnet_features=(4, 8), snet_features=(4, 8),
            snet_feature_channels=2)


def _net(nd, **kw):
    args = dict(TINY, roi_size=9 if nd == 3 else (11, 13))
    args.update(kw)
    return build_network("lsnet", spatial_dims=nd, **args)


# ------------------------------------------------------------------ recalibration


@pytest.mark.parametrize("shape,box", [((2, 3, 21, 23), (3, 5, 10, 17)),
                                       ((2, 2, 13, 17, 19), (2, 3, 4, 9, 11, 16))])
def test_on_grid_crop_equals_slicing_and_paste_restores_it(shape, box):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    nd = len(shape) - 2
    b = torch.tensor([box], dtype=torch.float32)
    sl = tuple(slice(box[i], box[nd + i]) for i in range(nd))
    size = tuple(box[nd + i] - box[i] for i in range(nd))
    crop = roi_crop(x, b, torch.tensor([1]), size)
    assert crop.shape == (1, shape[1]) + size
    torch.testing.assert_close(crop[0], x[1][(slice(None),) + sl], atol=1e-5, rtol=0)
    # low-precision inputs are sampled on a float32 grid (a bfloat16 grid would be off by ~a voxel)
    crop16 = roi_crop(x.to(torch.bfloat16), b, torch.tensor([1]), size)
    assert crop16.dtype == torch.bfloat16
    torch.testing.assert_close(crop16[0], x[1][(slice(None),) + sl].to(torch.bfloat16))

    pasted = roi_paste(crop, b, shape[2:])[0]
    inside = torch.zeros(shape[2:], dtype=torch.bool)
    inside[sl] = True
    torch.testing.assert_close(pasted[:, inside], x[1][:, inside], atol=1e-5, rtol=0)
    assert torch.all(pasted[:, ~inside] == 0)  # exactly zero


def test_off_grid_paste_is_zero_outside_and_margin_expands_each_side():
    crop = torch.randn(1, 2, 7, 9)
    b = torch.tensor([[2.3, 4.6, 11.2, 15.9]])
    pasted = roi_paste(crop, b, (16, 20))[0]
    centres_y = torch.arange(16) + 0.5
    centres_x = torch.arange(20) + 0.5
    inside = ((centres_y >= 2.3) & (centres_y <= 11.2))[:, None] & ((centres_x >= 4.6) & (centres_x <= 15.9))
    assert torch.all(pasted[:, ~inside] == 0) and torch.all(pasted[:, inside] != 0)
    grown = expand_boxes(torch.tensor([[10.0, 20.0, 20.0, 30.0]]), 0.2)
    torch.testing.assert_close(grown, torch.tensor([[8.0, 18.0, 22.0, 32.0]]))


# ------------------------------------------------------------------ gradient scaling


def test_grad_scale_is_exact_both_ways():
    x = torch.randn(4, 5, 6, dtype=torch.float32, requires_grad=True)
    y = GradScale(0.1)(x)
    assert torch.equal(y, x)  # bit for bit
    upstream = torch.randn_like(x)
    (g,) = torch.autograd.grad(y, x, upstream)
    assert torch.equal(g, upstream * 0.1)
    (g,) = torch.autograd.grad(grad_scale(x, -2.5), x, upstream)
    assert torch.equal(g, upstream * -2.5)


# ------------------------------------------------------------------ keypoints


def _blobs(shape, centres, sigma=1.5):
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    hm = torch.zeros(shape)
    for c in centres:
        d2 = sum((g - ci) ** 2 for g, ci in zip(grids, c))
        hm = torch.maximum(hm, torch.exp(-d2 / (2 * sigma ** 2)))
    return hm


@pytest.mark.parametrize("method", ["components", "maxpool"])
@pytest.mark.parametrize("shape,centres", [((20, 24), [(4, 5), (14, 18)]),
                                           ((12, 14, 16), [(3, 3, 4), (8, 10, 11)])])
def test_keypoints_find_two_blob_centres(method, shape, centres):
    hm = torch.zeros(2, 2, *shape)
    hm[0, 1] = torch.maximum(  # two blobs in channel 1 of item 0, peaks 0.9 and 0.7
        _blobs(shape, centres[:1]) * 0.9, _blobs(shape, centres[1:]) * 0.7)
    kps = extract_keypoints(hm, threshold=0.3, max_per_item=5, method=method)
    assert [tuple(p) for p in kps[0]["positions"].tolist()] == [tuple(c) for c in centres]
    torch.testing.assert_close(kps[0]["scores"], torch.tensor([0.9, 0.7]))
    assert kps[0]["channels"].tolist() == [1, 1]
    assert len(kps[1]["positions"]) == 0
    assert len(extract_keypoints(hm, 0.3, max_per_item=1, method=method)[0]["positions"]) == 1


def test_connected_components_labels_plateaus_once():
    m = torch.zeros(1, 9, 9, dtype=torch.bool)
    m[0, 1:4, 1:4] = True
    m[0, 5:8, 2:8] = True
    m[0, 4, 8] = True  # diagonal to (5, 7): joins the second blob (8-connectivity)
    lab = connected_components(m)
    assert len(torch.unique(lab[m])) == 2 and torch.all(lab[~m] == 0)
    hm = torch.zeros(1, 1, 9, 9)
    hm[0, 0, 2:5, 2:5] = 0.8  # a flat plateau: one keypoint, not nine
    assert len(extract_keypoints(hm, 0.5, 10, "components")[0]["positions"]) == 1


# ------------------------------------------------------------------ network


@pytest.mark.parametrize("nd,shape", [(3, (2, 1, 19, 23, 27)), (2, (2, 1, 37, 45))])
def test_lsnet_shapes_teacher_forced_and_inference(nd, shape):
    torch.manual_seed(0)
    net = _net(nd)
    x = torch.randn(*shape)
    spatial = shape[2:]
    q = tuple((s + 3) // 4 for s in spatial)
    if nd == 3:
        boxes = torch.tensor([[[2.0, 3, 4, 9, 11, 20], [0, 0, 0, 0, 0, 0]],
                              [[5.0, 5, 5, 15, 17, 19], [1, 2, 3, 6, 8, 9]]])
    else:
        boxes = torch.tensor([[[2.0, 3, 20, 30], [0, 0, 0, 0]], [[5.0, 5, 15, 17], [20, 30, 35, 44]]])
    out = net(x, boxes=boxes, box_classes=torch.tensor([[1, 0], [2, 1]]))
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, 3) + spatial
    assert out.heatmaps.shape == (2, 2) + q and out.boxes.shape == (2, 2 * nd) + q
    assert out.boxes.min() > 0 and 0 <= out.heatmaps.min() and out.heatmaps.max() <= 1
    roi = (9,) * 3 if nd == 3 else (11, 13)
    assert out.extras["roi_logits"].shape == (3, 3) + roi  # the all-zero row is padding
    assert out.extras["roi_batch_index"].tolist() == [0, 1, 1]
    assert [len(r) for r in out.rois] == [1, 2] and out.rois[1][0]["class"] == 2
    assert out.rois[0][0]["box"] == boxes[0, 0].tolist()
    # outside every (margin-expanded) region the background wins with the fixed logits
    far = out.logits[0][(slice(None),) + tuple([-1] * nd)]
    assert far.tolist() == [0.0] + [-OUTSIDE_LOGIT] * 2

    net.eval()
    with torch.no_grad():
        net.heatmap_head[-1].bias.fill_(5.0)  # every voxel above threshold: one region per class
        out = net(x)
    assert out.logits.shape == (2, 3) + spatial
    assert [len(r) for r in out.rois] == [2, 2]
    assert sorted(r["class"] for r in out.rois[0]) == [1, 2]
    for r in out.rois[0]:
        assert all(0 <= v <= s for v, s in zip(r["box"], spatial + spatial))


def test_lsnet_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = _net(3)
    x = torch.randn(2, 1, 20, 24, 28)
    boxes = torch.tensor([[[2.0, 3, 4, 12, 15, 20]], [[5.0, 5, 5, 15, 17, 19]]])
    out = net(x, boxes=boxes)
    loss = (out.logits.square().mean() + out.heatmaps.mean() + out.boxes.mean()
            + out.extras["roi_logits"].square().mean())
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_lsnet_snet_gradient_into_lnet_is_decayed():
    """With predicted boxes, the S-Net loss reaches the distance head only through the boxes,
    multiplied by grad_decay: the gradients at decay 0.1 are 0.1 times those at decay 1."""
    grads = {}
    for decay in (1.0, 0.1):
        torch.manual_seed(0)
        net = _net(2, grad_decay=decay)
        with torch.no_grad():
            net.heatmap_head[-1].bias.fill_(5.0)
        x = torch.randn(2, 1, 32, 36, generator=torch.Generator().manual_seed(1))
        out = net(x)
        assert len(out.extras["roi_logits"]) == 4
        out.extras["roi_logits"].square().mean().backward()
        grads[decay] = torch.cat([p.grad.flatten() for p in net.distance_head.parameters()])
        assert grads[decay].abs().max() > 0
    torch.testing.assert_close(grads[0.1], 0.1 * grads[1.0], rtol=1e-4, atol=1e-9)
