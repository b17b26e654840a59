"""FocusNet: S-Net, SOL-Net heatmaps, SOS-Nets on zero-padded ROIs, and the fusion."""

import pytest
import torch

from medseg_core.nets import SegOutput, build_network
from medseg_core.nets.focusnet import OUTSIDE_LOGIT
from medseg_core.nets.focusnet_parts import crop_roi, fuse_small_organs, paste_roi, roi_mask, roi_start

TINY = dict(features=[6, 8], aspp_growth=4, sos_features=[4, 6])
SHAPE = (2, 1, 11, 13, 15)  # odd everywhere


def tiny_net(**kw):
    torch.manual_seed(0)
    args = dict(spatial_dims=3, in_channels=1, out_channels=5, small_organs=[1, 3],
                roi_sizes=[[5, 7, 9], [8, 10, 10]], **TINY)
    args.update(kw)
    return build_network("focusnet", **args)


def force_heatmaps(net, value: float):
    """Make the SOL-Net output sigmoid(value) everywhere (bias only)."""
    with torch.no_grad():
        net.sol[-2].weight.zero_()
        net.sol[-2].bias.fill_(value)


def reference_crop(x, start, size):
    """Crop by padding far enough with zeros first (obviously right, slow)."""
    m = max(size)
    padded = torch.nn.functional.pad(x, [m] * 2 * (x.dim() - 2))
    return padded[(slice(None), slice(None)) + tuple(slice(a + m, a + m + s) for a, s in zip(start, size))]


@pytest.mark.parametrize("size", [(5, 4, 6), (3, 3, 3)])
def test_crop_zero_pads_and_paste_inverts_at_the_borders(size):
    x = torch.randn(2, 3, 7, 8, 9)
    last = [n - 1 for n in x.shape[2:]]
    starts = [roi_start([0, 0, 0], size), roi_start(last, size)]
    crop = crop_roi(x, starts, size)
    assert crop.shape == (2, 3) + size
    for b in range(2):
        assert torch.equal(crop[b:b + 1], reference_crop(x[b:b + 1], starts[b], size))
    # the centre voxel stays at index size // 2 of the crop (no clamping)
    assert torch.equal(crop[0, :, size[0] // 2, size[1] // 2, size[2] // 2], x[0, :, 0, 0, 0])
    assert torch.equal(crop[1, :, size[0] // 2, size[1] // 2, size[2] // 2], x[1, :, -1, -1, -1])
    back = paste_roi(crop, starts, x.shape[2:])
    mask = roi_mask(starts, size, x.shape[2:])
    assert mask[0, 0, 0, 0, 0] and mask[1, 0, -1, -1, -1] and not mask[0, 0, -1, -1, -1]
    assert torch.equal(back, torch.where(mask, x, torch.zeros(())))
    assert torch.equal(paste_roi(crop, starts, x.shape[2:], fill=-7.0)[~mask.expand_as(x)],
                       torch.full((int((~mask).sum()) * 3,), -7.0))


def test_roi_entirely_outside_reads_zeros_and_pastes_nothing():
    x = torch.randn(1, 2, 6, 6, 6)
    crop = crop_roi(x, [[10, 0, 0]], (2, 2, 2))
    assert crop.shape == (1, 2, 2, 2, 2) and not crop.any()
    assert not paste_roi(torch.ones(1, 2, 2, 2, 2), [[10, 0, 0]], (6, 6, 6)).any()


def test_crop_and_paste_carry_gradients():
    x = torch.randn(1, 1, 6, 7, 8, requires_grad=True)
    starts = [[-2, 3, 5]]
    paste_roi(crop_roi(x, starts, (5, 5, 5)), starts, x.shape[2:]).sum().backward()
    assert torch.equal(x.grad, roi_mask(starts, (5, 5, 5), x.shape[2:]).float())


def test_odd_shapes_batch_two_and_registry():
    net = tiny_net()
    out = net(torch.randn(*SHAPE))
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, 5) + SHAPE[2:]
    assert out.extras["snet_logits"].shape == (2, 5) + SHAPE[2:]
    assert out.heatmaps.shape == (2, 2) + SHAPE[2:]
    assert ((out.heatmaps > 0) & (out.heatmaps < 1)).all()
    assert [s.shape for s in out.extras["sos_logits"]] == [(2, 1, 5, 7, 9), (2, 1, 8, 10, 10)]
    assert out.extras["sos_pasted"].shape == (2, 2) + SHAPE[2:]
    assert len(out.rois) == 2 and [r["organ"] for r in out.rois[0]] == [1, 3]
    assert all(r["active"] for item in out.rois for r in item)  # training mode: always fused


def test_batch_items_get_their_own_rois_and_fusion_is_local():
    net = tiny_net()
    force_heatmaps(net, 20.0)  # every peak ~1 > 0.6: active at inference
    net.eval()
    x = torch.randn(*SHAPE)
    centers = torch.tensor([[[0, 0, 0], [10, 12, 14]], [[5, 6, 7], [3, 4, 5]]])
    seen = []
    hook = net.sos[0].register_forward_hook(lambda m, args, res: seen.append(args[0]))
    with torch.no_grad():
        out = net(x, centers=centers)
    hook.remove()
    for b in range(2):
        for j, size in enumerate(net.roi_sizes):
            roi = out.rois[b][j]
            assert roi["center"] == centers[b, j].tolist() and roi["active"]
            assert roi["start"] == [c - s // 2 for c, s in zip(centers[b, j].tolist(), size)]
    # the image channel of SOS-Net 0's input is each item's own zero-padded crop
    f0 = TINY["features"][0]
    starts = [out.rois[b][0]["start"] for b in range(2)]
    assert torch.equal(seen[0][:, 2 * f0:2 * f0 + 1], crop_roi(x, starts, net.roi_sizes[0]))
    # outside the ROIs the logits are the S-Net logits; inside, the organ wins iff SOS logit > 0
    snet, fused, masks = out.extras["snet_logits"], out.logits, out.extras["roi_masks"]
    outside = ~masks.any(1, keepdim=True).expand_as(fused)
    assert torch.equal(fused[outside], snet[outside])
    for j, organ in enumerate(net.small_organs):
        expect = roi_mask([out.rois[b][j]["start"] for b in range(2)], net.roi_sizes[j], SHAPE[2:])
        assert torch.equal(masks[:, j:j + 1], expect)
        inside, others = masks[:, j], masks[:, 1 - j]
        only = inside & ~others
        wins = fused.argmax(1) == organ
        assert torch.equal(wins[only], (out.extras["sos_pasted"][:, j] > 0)[only])
    assert not torch.equal(masks[0], masks[1])


def test_heatmap_below_threshold_leaves_snet_logits_unless_a_centre_is_given():
    net = tiny_net()
    force_heatmaps(net, -20.0)
    net.eval()
    x = torch.randn(*SHAPE)
    with torch.no_grad():
        out = net(x)
    assert not any(r["active"] for item in out.rois for r in item)
    assert torch.equal(out.logits, out.extras["snet_logits"])
    assert not out.extras["roi_masks"].any()
    # a given centre is an organ found (a user's refine point): its SOS-Net is fused there, even
    # though the heatmap says nothing is there; the organ without a centre stays off
    centres = torch.tensor([[[5, 6, 7], [-1, -1, -1]]] * 2)
    with torch.no_grad():
        out = net(x, centers=centres)
    assert [[r["active"] for r in item] for item in out.rois] == [[True, False]] * 2
    assert out.rois[0][0]["center"] == [5, 6, 7]
    inside = out.extras["roi_masks"][:, 0]
    assert inside.any() and not out.extras["roi_masks"][:, 1].any()
    assert torch.equal(out.logits[:, :, ~inside[0]][0], out.extras["snet_logits"][:, :, ~inside[0]][0])
    assert not torch.equal(out.logits, out.extras["snet_logits"])
    # the same heatmap in training mode is fused regardless of its peak
    net.train()
    out = net(torch.randn(*SHAPE), centers=torch.full((2, 2, 3), 5))
    assert all(r["active"] for item in out.rois for r in item)


def test_the_trunk_then_from_trunk_is_forward_and_an_organ_not_found_runs_no_sos_net():
    net = tiny_net()
    force_heatmaps(net, -20.0)  # no heatmap passes: only a given centre makes an organ active
    net.eval()
    x = torch.randn(*SHAPE)
    centers = torch.tensor([[[5, 6, 7], [-1, -1, -1]], [[-1, -1, -1], [-1, -1, -1]]])  # organ 0 in item 0 only
    seen = []
    hooks = [sos.register_forward_hook(lambda m, args, res, j=j: seen.append((j, args[0].shape[0])))
             for j, sos in enumerate(net.sos)]
    with torch.no_grad():
        out = net(x, centers=centers)
        parts = net.trunk()(x)
        again = net.from_trunk(x, parts, centers=centers)
    for h in hooks:
        h.remove()
    assert [tuple(p.shape[:2]) for p in parts] == [(2, 5), (2, 6), (2, 6), (2, 2)]
    assert torch.equal(again.logits, out.logits)
    assert seen == [(0, 1), (0, 1)]  # once per call, the one item where organ 0 is active; organ 1 never
    sos0, sos1 = out.extras["sos_logits"]
    assert (sos0[1] == OUTSIDE_LOGIT).all() and (sos1 == OUTSIDE_LOGIT).all()
    # skipping changes nothing that counts: the logits are those of every SOS-Net run on every item
    snet_logits, feat, first, heatmaps = parts
    full = []
    for j, size in enumerate(net.roi_sizes):
        starts = [r[j]["start"] for r in out.rois]
        crop = torch.cat([crop_roi(feat, starts, size), crop_roi(first, starts, size), crop_roi(x, starts, size),
                          crop_roi(heatmaps[:, j:j + 1], starts, size)], dim=1)
        with torch.no_grad():
            logit = net.sos[j](crop)
        full.append(paste_roi(logit, starts, SHAPE[2:], fill=OUTSIDE_LOGIT))
        if j == 0:
            assert torch.allclose(sos0[0], logit[0], atol=1e-6)
    expect = fuse_small_organs(snet_logits, torch.cat(full, 1), out.extras["roi_masks"], net.small_organs)
    assert torch.allclose(out.logits, expect, atol=1e-6)
    assert tiny_net(small_organs=[], roi_sizes=[]).trunk() is None


def test_each_small_organ_may_have_its_own_heatmap_threshold():
    net = tiny_net(heatmap_threshold=[0.4, 0.6])
    force_heatmaps(net, 0.0)  # every heatmap reads 0.5: above the first organ's threshold, below the second's
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(*SHAPE))
    assert [[r["active"] for r in item] for item in out.rois] == [[True, False]] * 2
    assert net.output_heads().threshold == (0.4, 0.6)
    from medseg_core.inference.heads import Heads

    heads = Heads.of(net)
    assert [heads.threshold_of(k) for k in range(2)] == [0.4, 0.6]
    assert Heads.of(tiny_net()).threshold_of(1) == 0.6  # one for all
    with pytest.raises(ValueError, match="one per small organ"):
        tiny_net(heatmap_threshold=[0.4, 0.5, 0.6])


def test_negative_centre_falls_back_to_heatmap_argmax():
    net = tiny_net()
    out = net(torch.randn(*SHAPE), centers=torch.tensor([[[-1, -1, -1], [4, 5, 6]]] * 2))
    peak = torch.stack(torch.unravel_index(out.heatmaps[0, 0].argmax(), SHAPE[2:])).tolist()
    assert out.rois[0][0]["center"] == peak and out.rois[0][1]["center"] == [4, 5, 6]


def test_teacher_forced_gradients_reach_snet_sol_and_sos():
    net = tiny_net()
    centers = torch.tensor([[[0, 3, 14], [5, 6, 7]], [[10, 12, 0], [2, 11, 4]]])
    out = net(torch.randn(*SHAPE), centers=centers)
    out.logits.square().mean().backward()  # the fused logits alone
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    for params in (net.snet_parameters(), net.sol_parameters(), net.sos_parameters()):
        assert sum(p.grad.abs().sum() for p in params) > 0
    n_params = sum(1 for _ in net.parameters())
    assert n_params == sum(1 for part in (net.snet_parameters(), net.sol_parameters(), net.sos_parameters())
                           for _ in part)


def test_detached_sos_inputs_stop_gradients_into_sol():
    net = tiny_net(detach_sos_inputs=True)
    out = net(torch.randn(*SHAPE), centers=torch.full((2, 2, 3), 5))
    out.logits.mean().backward()
    assert all(p.grad is None for p in net.sol_parameters())
    assert all(p.grad is not None for p in net.sos_parameters())


def test_fusion_rule_by_hand():
    snet = torch.tensor([[0.0, 5.0, 1.0]]).view(1, 3, 1, 1, 1).repeat(1, 1, 1, 1, 4)  # S-Net says class 1
    sos = torch.tensor([[-1.0, 2.0, 0.5, 3.0], [-1.0, -1.0, 1.0, 1.0]]).view(1, 2, 1, 1, 4)
    active = torch.tensor([[True, True, True, False], [True, True, True, True]]).view(1, 2, 1, 1, 4)
    fused = fuse_small_organs(snet, sos, active, [1, 2])
    # voxel 0: both say no -> background (best non-small class); 1: organ 1; 2: both yes, larger wins;
    # voxel 3: organ 1 inactive keeps its S-Net logit 5, organ 2 gets 1 + max(0, 5) = 6 and wins
    assert fused.argmax(1).flatten().tolist() == [0, 1, 2, 2]
    assert torch.equal(fuse_small_organs(snet, sos, torch.zeros_like(active), [1, 2]), snet)


def test_stages_freeze_and_skip_parts():
    net = tiny_net()
    x = torch.randn(*SHAPE)
    net.set_stage(1)
    out = net(x)
    assert out.heatmaps is None and torch.equal(out.logits, out.extras["snet_logits"])
    assert all(p.requires_grad for p in net.snet_parameters())
    assert not any(p.requires_grad for p in net.sos_parameters())
    net.set_stage(2)
    out = net(x)
    assert out.heatmaps is not None and out.rois is None
    assert not any(p.requires_grad for p in net.snet_parameters())
    net.set_stage(3)
    net.train()
    assert not net.snet.training and not net.sol.training and net.sos.training
    assert net(x).rois is not None
    net.set_stage(None)
    assert net.snet.training and all(p.requires_grad for p in net.parameters())


def test_2d_and_snet_only():
    net = build_network("focusnet", spatial_dims=2, in_channels=2, out_channels=3, small_organs=[2],
                        roi_sizes=[[9, 8]], **TINY)
    out = net(torch.randn(2, 2, 21, 17), centers=torch.tensor([[[0, 16]], [[20, 0]]]))
    assert out.logits.shape == (2, 3, 21, 17) and out.extras["sos_logits"][0].shape == (2, 1, 9, 8)
    net = build_network("focusnet", out_channels=3, downsamplings=2, features=[4, 6, 8], aspp_growth=4)
    out = net(torch.randn(2, 1, 9, 11, 13))
    assert out.logits.shape == (2, 3, 9, 11, 13) and out.heatmaps is None


def test_arguments_are_checked_and_defaults_are_moderate():
    with pytest.raises(ValueError):
        build_network("focusnet", out_channels=4, small_organs=[0, 1])
    with pytest.raises(ValueError):
        build_network("focusnet", out_channels=4, small_organs=[1, 2], roi_sizes=[[8, 8, 8]])
    net = build_network("focusnet", out_channels=10, small_organs=[1, 3, 4, 5, 6, 7])
    assert sum(p.numel() for p in net.parameters()) < 5_000_000
