"""The papers' training procedures: FocusNet's stages, L-SNet's alternation, DAN's adversarial
confidence learning -- what each step updates, the targets they build, and end-to-end runs."""

import functools
import json
import math

import pytest
import torch

from medseg_core.nets import build_network
from medseg_core.training.recipes import build_recipe
from medseg_core.training.recipes.focusnet import centre_heatmaps, organ_centres
from medseg_core.training.recipes.lsnet import class_boxes


def _make_opt(params):
    return torch.optim.AdamW(params, lr=1e-2)


def _snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(module, before):
    return any(not torch.equal(p.detach(), b) for p, b in zip(module.parameters(), before))


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


def _batch(n_cls=4, size=48, seed=0):
    """Two 2D images with a square per class at known places, and their labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(2, size, size, dtype=torch.long)
    y[:, 4:20, 4:30] = 1
    y[:, 30:36, 30:36] = 2
    y[0, 24:28, 8:12] = 3
    x = (y.float() * 0.7 + 0.2 * torch.randn(2, size, size, generator=g))[:, None]
    return x, y, torch.ones(2, n_cls, dtype=torch.bool)


def test_organ_centres_and_heatmaps_by_hand():
    y = torch.zeros(2, 10, 12, dtype=torch.long)
    y[0, 2:5, 3:6] = 3  # centre (3, 4)
    y[1, 6:8, 0:4] = 3  # centre (6.5, 1.5) -> rounds to (6, 2) (half to even)
    c = organ_centres(y, [3, 4])
    assert c[0, 0].tolist() == [3, 4] and c[1, 0].tolist() == [6, 2]
    assert c[:, 1].tolist() == [[-1, -1], [-1, -1]]  # organ 4 absent
    h = centre_heatmaps(c, (10, 12), sigma=1.0)
    assert h[0, 0, 3, 4] == 1.0 and h[0, 0].argmax() == 3 * 12 + 4
    assert math.isclose(float(h[0, 0, 3, 5]), math.exp(-0.5), rel_tol=1e-6)
    assert not h[:, 1].any()
    jittered = organ_centres(y, [3], jitter=2, generator=torch.Generator().manual_seed(0))
    assert (jittered[0, 0] - c[0, 0]).abs().max() <= 2


def test_focusnet_stages_update_only_their_part():
    net = build_network("focusnet", spatial_dims=2, in_channels=1, out_channels=4, small_organs=[2, 3],
                        roi_sizes=[[16, 16], [16, 16]], features=[8, 16], aspp_growth=8, sos_features=[8, 8])
    recipe = build_recipe("focusnet", stage_fractions=[0.25, 0.25, 0.25, 0.25], center_jitter=0)
    recipe.attach(net, _make_opt)
    opt = _make_opt(recipe.parameters(net))
    x, y, ann = _batch()
    parts = {"snet": net.snet, "sol": net.sol, "sos": net.sos}
    expected = {1: {"snet"}, 2: {"sol"}, 3: {"sos"}, 4: {"snet", "sol", "sos"}}
    for stage, fraction in zip((1, 2, 3, 4), (0.1, 0.3, 0.6, 0.9)):
        recipe.before_step(stage, fraction)
        assert recipe.stage == stage and net.stage == stage
        before = {k: _snapshot(m) for k, m in parts.items()}
        loss = recipe.train_step(net, x, y, ann, opt, _no_autocast)
        assert torch.isfinite(loss)
        changed = {k for k, m in parts.items() if _changed(m, before[k])}
        assert changed == expected[stage], (stage, changed)
    assert recipe.state()["stage_started"] == {1: 1, 2: 2, 3: 3, 4: 4}


def test_focusnet_sol_stage_learns_the_centres():
    torch.manual_seed(0)
    net = build_network("focusnet", spatial_dims=2, in_channels=1, out_channels=4, small_organs=[2, 3],
                        roi_sizes=[[16, 16], [16, 16]], features=[8, 16], aspp_growth=8, sos_features=[8, 8])
    recipe = build_recipe("focusnet", stage_fractions=[0, 1, 0, 0], heatmap_sigma=3.0)
    recipe.attach(net, _make_opt)
    opt = _make_opt(recipe.parameters(net))
    x, y, ann = _batch()
    recipe.before_step(0, 0.0)
    assert recipe.stage == 2
    losses = [float(recipe.train_step(net, x, y, ann, opt, _no_autocast)) for _ in range(150)]
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    net.eval()
    with torch.no_grad():
        heat = net(x).heatmaps
    peak = divmod(int(heat[0, 0].argmax()), 48)  # organ 2's square is centred at (32.5, 32.5)
    assert abs(peak[0] - 32.5) <= 4 and abs(peak[1] - 32.5) <= 4, peak


def test_class_boxes_by_hand():
    y = torch.zeros(1, 8, 9, dtype=torch.long)
    y[0, 1:4, 2:7] = 1
    y[0, 6, 0] = 2
    boxes, present = class_boxes(y, 4)
    assert boxes[0, 0].tolist() == [1, 2, 4, 7] and boxes[0, 1].tolist() == [6, 0, 7, 1]
    assert present.tolist() == [[True, True, False]]


def _lsnet():
    torch.manual_seed(0)
    return build_network("lsnet", spatial_dims=2, in_channels=1, out_channels=4, lnet_features=[8, 16],
                         snet_features=[8, 16], roi_size=24, snet_feature_channels=4)


def test_lsnet_step_updates_lnet_then_the_whole_network():
    from medseg_core.training.recipes.lsnet import lnet_parameters

    net = _lsnet()
    recipe = build_recipe("lsnet")
    recipe.attach(net, _make_opt)
    opt = _make_opt(recipe.parameters(net))
    x, y, ann = _batch()
    before_s, before_l = _snapshot(net.snet), [p.detach().clone() for p in lnet_parameters(net)]
    recipe.train_step(net, x, y, ann, opt, _no_autocast)
    assert _changed(net.snet, before_s)
    assert any(not torch.equal(p.detach(), b) for p, b in zip(lnet_parameters(net), before_l))
    state = recipe.state()
    assert state["regions"] == 2 and math.isfinite(state["s_loss"])  # one region per item
    # a batch with nothing labelled and no keypoint: only the L-Net update happens
    net2 = _lsnet()
    net2.score_threshold = 1.1  # no keypoint can pass
    recipe2 = build_recipe("lsnet")
    recipe2.attach(net2, _make_opt)
    before_s = _snapshot(net2.snet)
    recipe2.train_step(net2, x, torch.zeros_like(y), ann, _make_opt(net2.parameters()), _no_autocast)
    assert not _changed(net2.snet, before_s) and recipe2.state()["regions"] == 0


def test_lsnet_localisation_loss_falls():
    net = _lsnet()
    recipe = build_recipe("lsnet")
    recipe.attach(net, _make_opt)
    opt = _make_opt(recipe.parameters(net))
    x, y, ann = _batch()
    first = None
    for _ in range(40):
        recipe.train_step(net, x, y, ann, opt, _no_autocast)
        first = first or recipe.state()["l_loss"]
    assert recipe.state()["l_loss"] < 0.5 * first


def test_dan_step_alternates_and_the_confidence_network_learns():
    torch.manual_seed(0)
    net = build_network("dan", spatial_dims=2, in_channels=1, out_channels=4, features=[8, 16, 16, 16],
                        confidence_features=[4, 8, 8, 8])
    recipe = build_recipe("dan")
    recipe.attach(net, _make_opt)
    params = list(recipe.parameters(net))
    assert {id(p) for p in params} == {id(p) for p in net.seg_net.parameters()}  # the main optimiser
    opt = _make_opt(params)
    x, y, ann = _batch()
    before_seg, before_conf = _snapshot(net.seg_net), _snapshot(net.confidence_net)
    recipe.train_step(net, x, y, ann, opt, _no_autocast)
    assert _changed(net.seg_net, before_seg) and _changed(net.confidence_net, before_conf)
    first = recipe.state()["confidence_loss"]
    assert abs(first - 2 * math.log(2)) < 0.3  # it starts near chance
    for _ in range(30):
        recipe.train_step(net, x, y, ann, opt, _no_autocast)
    assert recipe.state()["confidence_loss"] < first  # tells truth from prediction better
    assert 0.0 < recipe.state()["adversarial"] < 0.005 * 10


def test_dan_adversarial_gradient_reaches_only_the_segmentation_network():
    torch.manual_seed(0)
    net = build_network("dan", spatial_dims=2, in_channels=1, out_channels=4, features=[8, 16, 16, 16],
                        confidence_features=[4, 8, 8, 8])
    recipe = build_recipe("dan", adversarial_weight=1.0, fce_weight=0.0)
    recipe.attach(net, _make_opt)
    x, y, ann = _batch()
    # only the segmentation optimiser steps in update 2: the confidence network must not move there
    conf_opt_step = recipe.conf_opt.step
    calls = []
    recipe.conf_opt.step = lambda *a, **k: calls.append(_snapshot(net.confidence_net)) or conf_opt_step(*a, **k)
    opt = _make_opt(recipe.parameters(net))
    recipe.train_step(net, x, y, ann, opt, _no_autocast)
    after_conf_update = _snapshot(net.confidence_net)
    assert len(calls) == 1
    assert not _changed(net.confidence_net, after_conf_update)  # unchanged by the segmentation update


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory):
    from medseg_core.data.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("ds") / "Phantom", 4, seed=3, shape=(24, 40, 40))


@pytest.mark.parametrize("recipe,network", [
    ("focusnet", {"name": "focusnet", "kwargs": {"spatial_dims": 2, "small_organs": [4, 5],
                                                 "roi_sizes": [[16, 16], [16, 16]], "features": [8, 16],
                                                 "aspp_growth": 8, "sos_features": [8, 8]}}),
    ("lsnet", {"name": "lsnet", "kwargs": {"spatial_dims": 2, "lnet_features": [8, 16], "snet_features": [8, 16],
                                           "roi_size": 24, "snet_feature_channels": 4}}),
    ("dan", {"name": "dan", "kwargs": {"spatial_dims": 2, "features": [8, 16, 16, 16],
                                       "confidence_features": [4, 8, 8, 8]}}),
])
def test_recipes_train_resume_and_segment_end_to_end(phantom_dataset, tmp_path, recipe, network):
    from medseg_core.models import find_model
    from medseg_core.segment import segment_files
    from medseg_core.training.config import TrainConfig
    from medseg_core.training.trainer import train

    cfg = dict(name=f"tiny-{recipe}", network=network, patch_size=[40, 40], batch_size=2, steps=8, lr=3e-3,
               warmup_steps=2, val_every=4, val_cases=1, seed=0, half_weights=False, recipe=recipe,
               small_organs=["LeftGland", "RightGland"])
    run = tmp_path / "run"
    train(TrainConfig(**cfg), run, data_dir=phantom_dataset, device="cpu", progress="none", log=lambda *a: None)
    res = train(TrainConfig(**{**cfg, "steps": 12}), run, data_dir=phantom_dataset, output=tmp_path / "pkg",
                device="cpu", progress="none", resume=True, log=lambda *a: None)
    history = json.loads((run / "history.json").read_text())
    assert [h["step"] for h in history] == [4, 8, 12] and res.steps == 12
    if recipe == "focusnet":
        # first run of 8 steps: stage 1 for steps 0-3 (fraction < 0.4), 2 at 4, 3 at 5-6, 4 at 7;
        # resumed to 12 steps, the stage follows the new fraction: 3 at steps 8-9, 4 from 10
        assert [h["stage"] for h in history] == [1, 4, 4]
        assert history[-1]["stage_started"] == {"3": 8, "4": 10}
    else:
        assert history[-1].keys() & {"s_loss", "confidence_loss"}
    pkg = find_model(str(tmp_path / "pkg"))
    img = sorted((phantom_dataset / "imagesTr").glob("*.nii.gz"))[0]
    out = segment_files([img], str(tmp_path / "pkg"), tmp_path / "seg", device="cpu", predictor=None)
    assert out[0]["model"] == pkg.card.name and (tmp_path / "seg").is_dir()


def test_finetune_distils_only_where_the_parent_agrees_with_the_target():
    """The distillation term counts the voxels whose parent top class is the target's, and never
    padding (an all-zero soft target); checked against the KL computed on that mask by hand."""
    from types import SimpleNamespace

    from medseg_core.losses import masked_kl_divergence

    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2, 2)
    target = torch.tensor([[[[0, 1], [2, 1]], [[0, 0], [2, 2]]]])
    teacher = torch.softmax(3 * torch.randn(1, 3, 2, 2, 2), 1)
    teacher[..., 1, 1, 1] = 0.0  # padding
    teacher[0, :, 0, 0, 0] = torch.tensor([0.2, 0.7, 0.1])  # disagrees with target 0
    teacher[0, :, 0, 0, 1] = torch.tensor([0.1, 0.6, 0.3])  # agrees with target 1
    annotated = torch.ones(1, 3, dtype=torch.bool)
    out = SimpleNamespace(logits=logits, deep_supervision=[])
    plain = build_recipe("finetune", distill=0.0)
    recipe = build_recipe("finetune", distill=2.0)
    recipe.soft_targets = teacher
    expected = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    for idx in [(0, z, y, x) for z in range(2) for y in range(2) for x in range(2)]:
        expected[idx] = teacher[idx[0], :, idx[1], idx[2], idx[3]].sum() > 0.5 and \
            int(teacher[idx[0], :, idx[1], idx[2], idx[3]].argmax()) == int(target[idx])
    assert not expected[0, 0, 0, 0] and expected[0, 0, 0, 1] and not expected[0, 1, 1, 1]
    extra = recipe.loss(out, target, annotated) - plain.loss(out, target, annotated)
    torch.testing.assert_close(extra, 2.0 * masked_kl_divergence(logits, teacher, expected))


def _patch_teacher_case():
    """A fresh copy of :func:`_trained_patch_teacher_case` (trained once)."""
    import copy

    return copy.deepcopy(_trained_patch_teacher_case())


@functools.lru_cache(maxsize=1)
def _trained_patch_teacher_case(seed=0):
    """A small network trained to draw three classes by intensity, an image, and a whole-volume
    'parent pass' that disagrees with what the network draws on the patch: a slab it calls
    background called class 1 (as a window and a patch may disagree), and a block the user
    edited to class 2."""
    torch.manual_seed(seed)
    net = build_network("unet", spatial_dims=3, in_channels=1, out_channels=3, features=(4, 8, 16), norm="instance")
    x = torch.nn.functional.avg_pool3d(torch.randn(1, 1, 20, 20, 20), 5, stride=1) * 5  # (1, 1, 16, 16, 16)
    drawn = (x[:, 0] > 0.6).long() + 2 * (x[:, 0] < -0.6).long()
    plain, opt = build_recipe("dice_ce"), torch.optim.AdamW(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(60):
        plain.train_step(net, x, drawn, torch.ones(1, 3, dtype=torch.bool), opt, _no_autocast)
    with torch.no_grad():
        own = net.eval()(x).logits.argmax(1)
    window = torch.nn.functional.one_hot(own, 3).permute(0, 4, 1, 2, 3).float()
    slab = torch.zeros_like(own, dtype=torch.bool)
    slab[:, 2:6] = True
    slab &= own == 0
    window[:, :, slab.squeeze(0)] = torch.tensor([0.0, 1.0, 0.0])[:, None]
    target = window.argmax(1)
    block = torch.zeros_like(slab)
    block[:, 10:14, 4:8, 4:8] = True
    block &= own != 2
    target[block] = 2
    return net, x, own, window, target, slab, block


@pytest.mark.parametrize("patch_teacher", [True, False])
def test_finetune_patch_teacher_distils_nothing_before_the_first_step(patch_teacher):
    """On the patch the frozen copy and the network agree at the start, so the distillation term
    is zero and the accepted voxels' target is the network's own answer: the loss is the plain
    Dice + CE against that answer (with the whole-volume pass as teacher, it is more)."""
    net, x, own, window, target, slab, block = _patch_teacher_case()
    annotated = torch.ones(1, 3, dtype=torch.bool)
    recipe = build_recipe("finetune", distill=1.0, freeze_encoder=False, patch_teacher=patch_teacher)
    recipe.attach(net, None)
    recipe.soft_targets = window
    loss = recipe.train_step(net, x, target, annotated, torch.optim.SGD(net.parameters(), lr=0.0), _no_autocast)
    plain = build_recipe("finetune", distill=0.0)
    with torch.no_grad():
        expected = plain.loss(net(x), torch.where(block, target, own), annotated)
    if patch_teacher:
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    else:
        assert loss > expected + 0.01


def test_finetune_patch_teacher_learns_the_edit_and_not_the_window_mismatch():
    """Trained on the case above against its own answer on the patch, the network learns the
    user's block and leaves every other voxel as it drew it; the whole-volume teacher teaches the
    slab it never drew on the patch instead (and the block only half)."""
    moved = {}
    for patch_teacher in (True, False):
        net, x, own, window, target, slab, block = _patch_teacher_case()
        annotated = torch.ones(1, 3, dtype=torch.bool)
        recipe = build_recipe("finetune", distill=1.0, freeze_encoder=False, patch_teacher=patch_teacher)
        recipe.attach(net, None)
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
        net.train()
        for _ in range(40):
            recipe.soft_targets = window
            recipe.train_step(net, x, target, annotated, opt, _no_autocast)
        recipe.detach(net)
        with torch.no_grad():
            now = net.eval()(x).logits.argmax(1)
        moved[patch_teacher] = float((now[slab] == 1).float().mean())
        if patch_teacher:
            rest = ~slab & ~block
            assert (now[block] == 2).float().mean() > 0.8 and (now[rest] == own[rest]).float().mean() > 0.99
    assert moved[True] < 0.1 < 0.6 < moved[False], moved
