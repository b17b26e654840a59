"""Losses of the five papers: focal / NSFL, generalised Dice, GODC, organ-attention Dice, FCE and
the confidence BCEs, heatmap losses, DIoU. Tiny tensors; values checked by hand; gradients against
finite differences in float64."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from medseg_core.losses import (CenterNetFocalLoss, ConfidenceWeightedCE, DiceLoss, FocalLoss, GeneralizedDiceLoss,
                                GODCLoss, HeatmapMSELoss, NoiseSuppressionFocalLoss, NSFLDiceLoss,
                                OrganAttentionDiceLoss, adversarial_loss, confidence_bce, diou_loss,
                                gaussian_heatmap, generalized_dice_weights, godc_weights, marginal_cross_entropy)

D64 = torch.float64


def _perfect_logits(target, n, scale=50.0, dtype=torch.float32):
    return F.one_hot(target, n).movedim(-1, 1).to(dtype) * scale


def _two_class_logits(pt, dtype=D64):
    """(1, 2, S) logits whose class-0 probability is ``pt`` (a list), labels all 0."""
    p = torch.tensor(pt, dtype=dtype)
    z = torch.log(p) - torch.log1p(-p)
    return torch.stack([z, torch.zeros_like(z)])[None], torch.zeros(1, len(pt), dtype=torch.long)


# ----------------------------------------------------------------------------------------- focal
def test_focal_two_voxels_by_hand():
    # p_t = 0.5 and 0.8: losses 0.25 log 2 and 0.04 log 1.25
    logits, t = _two_class_logits([0.5, 0.8])
    expected = [0.25 * math.log(2), 0.04 * math.log(1.25)]
    none = FocalLoss(reduction="none")(logits, t)
    assert torch.allclose(none, torch.tensor([expected], dtype=D64), atol=1e-12)
    assert abs(FocalLoss()(logits, t).item() - sum(expected) / 2) < 1e-12
    assert abs(FocalLoss(reduction="sum")(logits, t).item() - sum(expected)) < 1e-12
    # per-class alpha weights by the labelled class; a float a means [1 - a, a]
    assert abs(FocalLoss(alpha=[0.3, 0.7])(logits, t).item() - 0.3 * sum(expected) / 2) < 1e-12
    assert abs(FocalLoss(alpha=0.25)(logits, t).item() - 0.75 * sum(expected) / 2) < 1e-12


def test_focal_gamma_zero_is_cross_entropy_and_marginal_with_annotation():
    torch.manual_seed(0)
    logits, t = torch.randn(2, 4, 3, 5), torch.randint(0, 4, (2, 3, 5))
    assert torch.allclose(FocalLoss(gamma=0)(logits, t), F.cross_entropy(logits, t), atol=1e-6)
    ann = torch.tensor([[True, True, False, True], [True, False, True, True]])
    t = torch.where(~ann[torch.arange(2)[:, None, None], t], torch.zeros_like(t), t)  # no unannotated labels
    assert torch.allclose(FocalLoss(gamma=0)(logits, t, ann), marginal_cross_entropy(logits, t, ann), atol=1e-6)


def test_focal_and_nsfl_vanish_on_confident_correct_logits():
    t = torch.randint(0, 3, (2, 4, 5))
    for loss in (FocalLoss(), NoiseSuppressionFocalLoss(alpha=[1.0, 2.0, 3.0]), NSFLDiceLoss()):
        assert loss(_perfect_logits(t, 3), t).item() < 1e-6


def test_focal_gradient_is_finite_at_saturation():
    t = torch.randint(0, 3, (1, 4, 4))
    for loss in (FocalLoss(gamma=0.5), NoiseSuppressionFocalLoss(gamma=0.5)):
        x = _perfect_logits(t, 3, scale=200.0).requires_grad_(True)  # p_t == 1 exactly in float32
        loss(x, t).backward()
        assert torch.isfinite(x.grad).all()


def test_focal_unannotated_prediction_is_not_punished():
    logits = torch.tensor([[-10.0, -10.0, 10.0]]).T[None, :, :, None]  # (1, 3, 1, 1) -> class 2
    t = torch.zeros(1, 1, 1, dtype=torch.long)
    assert FocalLoss()(logits, t, torch.tensor([[True, True, False]])).item() < 1e-6
    assert FocalLoss()(logits, t).item() > 10


def test_focal_without_background_ignores_background_voxels():
    logits, t = torch.randn(1, 3, 6), torch.tensor([[0, 0, 1, 2, 0, 1]])
    none = FocalLoss(include_background=False, reduction="none")(logits, t)
    assert (none[t == 0] == 0).all() and (none[t != 0] > 0).all()


# ------------------------------------------------------------------------------------------ NSFL
@pytest.mark.parametrize("alpha", [None, [0.25, 0.75]])
def test_nsfl_is_continuous_at_eps(alpha):
    eps = 0.2
    loss = NoiseSuppressionFocalLoss(alpha=alpha, eps=eps, reduction="none")
    logits, t = _two_class_logits([eps - 1e-9, eps + 1e-9, eps])
    v = loss(logits, t)[0]
    a0 = 1.0 if alpha is None else alpha[0]
    assert abs(v[0] - v[1]) < 1e-6
    assert abs(v[2] - a0 * (1 - eps) ** 2 * -math.log(eps)) < 1e-12
    # the suppressed branch is really used below eps, focal at and above
    below, _ = _two_class_logits([0.1])
    assert abs(loss(below, t[:, :1]).item() - a0 * loss.scale * 0.1 ** 0.2 * -math.log(0.1)) < 1e-12


def test_nsfl_gradient_below_eps_is_smaller_than_focal():
    beta, gamma, eps, p = 0.2, 2.0, 0.2, 0.05
    logits, t = _two_class_logits([p])
    grads = {}
    for name, fn in (("focal", FocalLoss(gamma=gamma)), ("nsfl", NoiseSuppressionFocalLoss(beta=beta, eps=eps))):
        x = logits.clone().requires_grad_(True)
        fn(x, t).backward()
        grads[name] = x.grad[0, 0, 0].item()  # d loss / d (logit of the true class)
    c = (1 - eps) ** gamma / eps ** beta
    nsfl_by_hand = -c * p ** beta * (beta * math.log(p) + 1) * (1 - p)
    focal_by_hand = gamma * p * (1 - p) ** gamma * math.log(p) - (1 - p) ** (gamma + 1)
    assert abs(grads["nsfl"] - nsfl_by_hand) < 1e-10 and abs(grads["focal"] - focal_by_hand) < 1e-10
    assert abs(grads["nsfl"]) < 0.2 * abs(grads["focal"])


def test_nsfl_equals_focal_above_eps_and_before_the_switch():
    torch.manual_seed(1)
    logits, t = torch.randn(2, 3, 4, 4, dtype=D64), torch.randint(0, 3, (2, 4, 4))
    focal = FocalLoss(alpha=[0.2, 0.3, 0.5])(logits, t)
    waiting = NoiseSuppressionFocalLoss(alpha=[0.2, 0.3, 0.5], switch_threshold=0.9)
    assert not bool(waiting.active) and torch.equal(waiting(logits, t), focal)
    hi, th = _two_class_logits([0.3, 0.6, 0.99])
    assert torch.equal(NoiseSuppressionFocalLoss()(hi, th), FocalLoss()(hi, th))


def test_nsfl_switch_latches_and_survives_the_state_dict():
    loss = NoiseSuppressionFocalLoss(switch_threshold=0.9, switch_step=100)
    logits, t = _two_class_logits([0.5, 0.9])
    loss(logits, t)
    assert abs(loss.last_mean_pt.item() - 0.7) < 1e-12
    assert loss.update(mean_pt=loss.last_mean_pt, step=5) is False
    assert loss.update(mean_pt=0.95) is True and loss.update(mean_pt=0.1, step=0) is True
    fresh = NoiseSuppressionFocalLoss(switch_threshold=0.9)
    fresh.load_state_dict(loss.state_dict())
    assert bool(fresh.active)
    by_step = NSFLDiceLoss(switch_step=3)
    assert [by_step.update(step=s) for s in (1, 3, 0)] == [False, True, True]
    assert NoiseSuppressionFocalLoss().active  # no switch configured: NSFL from the start


def test_nsfl_dice_combination():
    torch.manual_seed(2)
    logits, t = torch.randn(2, 3, 5, 4), torch.randint(0, 3, (2, 5, 4))
    ann = torch.tensor([[True, True, True], [True, True, False]])
    t[1][t[1] == 2] = 0
    combo = NSFLDiceLoss(lambda_=0.3)
    expected = 0.3 * NoiseSuppressionFocalLoss()(logits, t, ann) + 0.7 * DiceLoss()(logits, t, ann)
    assert torch.allclose(combo(logits, t, ann), expected, atol=1e-6)


# ---------------------------------------------------------------------------------- generalised Dice
def test_generalized_dice_weights_and_value_by_hand():
    assert generalized_dice_weights(torch.tensor([3.0, 1.0]), normalize=False).tolist() == pytest.approx([1 / 9, 1])
    assert generalized_dice_weights(torch.tensor([3.0, 1.0])).tolist() == pytest.approx([0.1, 0.9])
    w = generalized_dice_weights(torch.tensor([[3.0, 0.0, 1.0]]))
    assert torch.isfinite(w).all() and w[0, 1] == 0
    # class 1 predicted 0.5 on voxels 2, 3; labels [0, 0, 0, 1]: I = (2.5, 0.5), P = (3, 1), G = (3, 1)
    p1 = torch.tensor([0.0, 0.0, 0.5, 0.5])
    probs = torch.stack([1 - p1, p1])[None]
    t = torch.tensor([[0, 0, 0, 1]])
    gdl = GeneralizedDiceLoss(softmax=False, smooth_nr=0, smooth_dr=0)
    expected = 1 - 2 * (0.1 * 2.5 + 0.9 * 0.5) / (0.1 * 6 + 0.9 * 2)
    assert abs(gdl(probs, t).item() - expected) < 1e-6


def test_generalized_dice_absent_class_and_annotation():
    t = torch.randint(0, 2, (2, 4, 4))
    t[0, 0, 0], t[1, 0, 0] = 0, 1
    assert GeneralizedDiceLoss()(_perfect_logits(t, 3), t).item() < 1e-6  # class 2 absent: weight 0
    loss = GeneralizedDiceLoss(batch=False, include_background=False, reduction="none")
    empty = torch.zeros(1, 4, 4, dtype=torch.long)
    assert loss(torch.randn(1, 3, 4, 4), empty).item() == 0.0  # nothing present: excluded, not NaN
    logits = _perfect_logits(t, 3)
    logits[:, 2][t == 0] = 100.0  # predicts uncontoured class 2 where the label says background
    ann = torch.tensor([[True, True, False]] * 2)
    assert GeneralizedDiceLoss()(logits, t, ann).item() < 1e-6
    assert GeneralizedDiceLoss()(logits, t).item() > 0.3


# --------------------------------------------------------------------------------------------- GODC
def test_godc_weights():
    assert godc_weights(torch.tensor([1.0, 3.0])).tolist() == [1.0, 2.0]
    assert godc_weights(torch.tensor([2.0, 1.0, 3.0])).tolist() == [1.5, 1.0, 2.0]
    assert godc_weights(torch.tensor([7.0])).tolist() == [1.0]
    assert godc_weights(torch.tensor([4.0, 4.0, 4.0])).tolist() == [1.0, 1.0, 1.0]
    assert godc_weights(torch.tensor([1.0, 3.0]), "mean").tolist() == [0.5, 1.5]
    assert godc_weights(torch.tensor([7.0]), "mean").tolist() == [1.0]
    with pytest.raises(ValueError):
        godc_weights(torch.tensor([1.0]), "median")


def test_godc_value_by_hand_and_perfect_prediction():
    # sample 0 perfect (union 2); sample 1: I = 1, P = 3, G = 1 -> Dice 0.5, union 3 -> weight 2
    fg = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    probs = torch.stack([1 - fg, fg], 1)
    t = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    loss = GODCLoss(softmax=False, smooth_nr=0, smooth_dr=0, reduction="none")
    assert loss(probs, t).tolist() == pytest.approx([0.0, 1.0])
    assert loss.last_weights.tolist() == [1.0, 2.0]
    assert GODCLoss(softmax=False, smooth_nr=0, smooth_dr=0)(probs, t).item() == pytest.approx(0.5)
    t3 = torch.randint(0, 3, (3, 4, 5))
    assert GODCLoss()(_perfect_logits(t3, 3), t3).item() < 1e-6
    one = GODCLoss()
    one(torch.randn(1, 3, 4, 5), t3[:1])
    assert one.last_weights.tolist() == [1.0]


def test_godc_weights_are_detached():
    torch.manual_seed(3)
    x = torch.randn(3, 3, 4, 4, dtype=D64, requires_grad=True)
    t = torch.randint(0, 3, (3, 4, 4))
    loss = GODCLoss(mode="mean")
    loss(x, t).backward()
    w = loss.last_weights
    assert not w.requires_grad and not torch.allclose(w, torch.ones_like(w))
    # reference: the weights as constants times an independent per-sample foreground Dice
    x2 = x.detach().clone().requires_grad_(True)
    p, g = torch.softmax(x2, 1), F.one_hot(t, 3).movedim(-1, 1).to(D64)
    inter, psum, gsum = (p * g).sum((2, 3)), p.sum((2, 3)), g.sum((2, 3))
    dice = ((2 * inter + 1e-5) / (psum + gsum + 1e-5))[:, 1:].mean(1)
    union = (psum + gsum - inter)[:, 1:].sum(1)
    assert torch.allclose(w, union.detach() / union.detach().mean())
    (w * (1 - dice)).mean().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-12)


# ------------------------------------------------------------------------------ organ attention Dice
def test_organ_attention_running_dice_and_weights():
    loss = OrganAttentionDiceLoss(num_classes=3, momentum=0.5, softmax=False, smooth_nr=0, smooth_dr=0)
    t = torch.tensor([[0, 1, 1, 2]])
    p = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]])
    # Dice: bg 1, class 1: 2*1/(1+2) = 2/3, class 2: 2*1/(2+1) = 2/3
    loss(p, t)
    assert loss.running_dice.tolist() == pytest.approx([1.0, 2 / 3, 2 / 3])
    loss(F.one_hot(t, 3).movedim(-1, 1).float(), t)  # perfect: Dice 1 -> running 0.5 * (old + 1)
    assert loss.running_dice.tolist() == pytest.approx([1.0, 5 / 6, 5 / 6])
    assert loss.class_weights()[1:].tolist() == pytest.approx([(1 / 6) ** 2] * 2)
    absent = torch.tensor([[0, 1, 1, 1]])  # class 2 absent: its running Dice is not updated
    loss(F.one_hot(absent, 3).movedim(-1, 1).float(), absent)
    assert loss.running_dice[2].item() == pytest.approx(5 / 6)
    loss.eval()
    before = loss.running_dice.clone()
    loss(p, t)
    assert torch.equal(before, loss.running_dice)


def test_organ_attention_value_by_hand_and_perfect():
    loss = OrganAttentionDiceLoss(num_classes=3, softmax=False, smooth_nr=0, smooth_dr=0).eval()
    loss.running_dice.copy_(torch.tensor([0.9, 0.5, 0.8]))  # weights 0.25 and 0.04 -> 25/29, 4/29
    t = torch.tensor([[0, 1, 1, 2]])
    p = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]])
    w1, w2 = 25 / 29, 4 / 29
    expected = 1 - 2 * (w1 * 1 + w2 * 1) / (w1 * 3 + w2 * 3)
    assert loss(p, t).item() == pytest.approx(expected, abs=1e-6)
    t2 = torch.randint(0, 3, (2, 4, 4))
    assert OrganAttentionDiceLoss(3)(_perfect_logits(t2, 3), t2).item() < 1e-6


# ------------------------------------------------------------------------------- confidence losses
def test_fce_uses_each_items_own_confidence():
    torch.manual_seed(4)
    logits = torch.randn(1, 3, 4, 4).repeat(2, 1, 1, 1)
    t = torch.randint(0, 3, (1, 4, 4)).repeat(2, 1, 1)
    conf = torch.stack([torch.zeros(1, 4, 4), torch.full((1, 4, 4), 0.5)])  # (B=2, 1, 4, 4)
    conf.requires_grad_(True)
    none = ConfidenceWeightedCE(reduction="none")(logits, t, conf)
    ce = F.cross_entropy(logits, t, reduction="none")
    assert torch.allclose(none[0], ce[0]) and torch.allclose(none[1], 0.25 * ce[1])
    assert not none.requires_grad  # the confidence map is detached (logits carry no grad here)
    beta3 = ConfidenceWeightedCE(beta=3.0)(logits, t, conf[:, 0])
    assert beta3.item() == pytest.approx(((ce[0] + 0.125 * ce[1]) / 2).mean().item(), rel=1e-6)


def test_confidence_bce_and_adversarial_values():
    gt, pred = torch.tensor([[[2.0]]]), torch.tensor([[[-1.0]]])
    expected = math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))
    assert confidence_bce(gt, pred).item() == pytest.approx(expected, rel=1e-6)
    assert adversarial_loss(pred).item() == pytest.approx(0.005 * math.log1p(math.exp(1.0)), rel=1e-6)
    assert adversarial_loss(pred, weight=1.0).item() == pytest.approx(math.log1p(math.exp(1.0)), rel=1e-6)


# ---------------------------------------------------------------------------------------- heatmaps
def test_gaussian_heatmap():
    h = gaussian_heatmap((3, 9), [[1, 4]], sigma=2.0)
    assert h.shape == (3, 9) and h[1, 4] == 1.0 and h.argmax().item() == 1 * 9 + 4
    assert h[1, 6].item() == pytest.approx(math.exp(-0.5))
    assert h[1, 0].item() == pytest.approx(math.exp(-2.0))
    cut = gaussian_heatmap((1, 9), [[0, 0]], sigma=1.0)
    assert cut[0, 4].item() == 0.0 and cut[0, 3].item() == pytest.approx(math.exp(-4.5))  # exp(-8) < 0.01
    two = gaussian_heatmap((4, 4, 4), [[0, 0, 0], [3, 3, 3]], sigma=(1.0, 2.0, 2.0))
    assert two[0, 0, 0] == 1.0 and two[3, 3, 3] == 1.0
    assert gaussian_heatmap((2, 2), [], sigma=1.0).sum() == 0


def test_heatmap_mse_and_annotation():
    pred, target = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    target[0, 1] = 3.0
    assert HeatmapMSELoss()(pred, target).item() == pytest.approx(5.0)  # (1 + 9) / 2
    assert HeatmapMSELoss()(pred, target, torch.tensor([[True, False]])).item() == pytest.approx(1.0)
    assert HeatmapMSELoss(sigmoid=True)(torch.zeros(1, 1, 2), torch.full((1, 1, 2), 0.5)).item() == 0.0


def test_centernet_focal_tiny_heatmap_by_hand():
    p = torch.tensor([[[0.8, 0.3, 0.1]]])
    g = torch.tensor([[[1.0, 0.5, 0.0]]])
    pos = -math.log(0.8) * 0.2 ** 2
    neg = -math.log(0.7) * 0.3 ** 2 * 0.5 ** 4 - math.log(0.9) * 0.1 ** 2
    assert CenterNetFocalLoss()(p, g).item() == pytest.approx(pos + neg, rel=1e-6)
    # two peaks: normalised by 2; sigmoid input gives the same
    p2, g2 = torch.cat([p, p], 1), torch.cat([g, g], 1)
    assert CenterNetFocalLoss()(p2, g2).item() == pytest.approx(pos + neg, rel=1e-6)
    logits = torch.log(p2) - torch.log1p(-p2)
    assert CenterNetFocalLoss(sigmoid=True)(logits, g2).item() == pytest.approx(pos + neg, rel=1e-5)
    no_peak = CenterNetFocalLoss()(torch.tensor([[[0.1]]]), torch.tensor([[[0.0]]]))
    assert no_peak.item() == pytest.approx(-math.log(0.9) * 0.01, rel=1e-6)


# --------------------------------------------------------------------------------------------- DIoU
def test_diou_by_hand_2d_and_3d():
    a2, b2 = torch.tensor([0.0, 0.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, 3.0, 3.0])
    assert diou_loss(a2, b2).item() == pytest.approx(1 - 1 / 7 + 2 / 18, abs=1e-6)
    a3, b3 = torch.tensor([0.0, 0.0, 0.0, 2.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, 1.0, 3.0, 3.0, 3.0])
    assert diou_loss(a3, b3).item() == pytest.approx(1 - 1 / 15 + 3 / 27, abs=1e-6)
    # disjoint: IoU 0, centres (0.5, 0.5) and (2.5, 3.5): d^2 = 13, enclosing [0,3]x[0,4]: 25
    far = diou_loss(torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.tensor([2.0, 3.0, 3.0, 4.0]))
    assert far.item() == pytest.approx(1 + 13 / 25, abs=1e-6)
    batch = torch.stack([a2, a2]), torch.stack([b2, a2])
    none = diou_loss(*batch, reduction="none")
    assert none.shape == (2,) and none[1].item() == pytest.approx(0.0, abs=1e-6)
    assert diou_loss(*batch).item() == pytest.approx(none.mean().item())
    with pytest.raises(ValueError):
        diou_loss(torch.zeros(5), torch.zeros(5))


# ---------------------------------------------------------------------------------------- gradients
def _gradcheck(fn, *inputs):
    inputs = [x.detach().to(D64).requires_grad_(True) for x in inputs]
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_segmentation_losses():
    torch.manual_seed(5)
    x = torch.randn(2, 3, 2, 3, dtype=D64)
    t = torch.tensor([[[0, 1, 2], [1, 0, 0]], [[2, 2, 1], [0, 1, 0]]])
    ann = torch.tensor([[True, True, False], [True, True, True]])
    t[0][t[0] == 2] = 0
    _gradcheck(lambda a: FocalLoss(alpha=[0.2, 0.3, 0.5])(a, t, ann), x)
    _gradcheck(lambda a: GeneralizedDiceLoss(batch=False)(a, t, ann), x)
    _gradcheck(lambda a: GODCLoss()(a, t, ann), x)  # B = 2: minmax weights are locally constant
    fdice = OrganAttentionDiceLoss(3).double().eval()
    fdice.running_dice.copy_(torch.tensor([0.9, 0.4, 0.7]))
    _gradcheck(lambda a: fdice(a, t, ann), x)
    conf = torch.rand(2, 1, 2, 3, dtype=D64)
    _gradcheck(lambda a: ConfidenceWeightedCE()(a, t, conf, ann), x)


def test_gradcheck_nsfl_away_from_the_kink():
    pts = [0.02, 0.1, 0.15, 0.3, 0.6, 0.95]  # both sides of eps = 0.2
    logits, t = _two_class_logits(pts)
    _gradcheck(lambda a: NoiseSuppressionFocalLoss(alpha=[0.4, 0.6])(a, t), logits)
    torch.manual_seed(6)
    x, t3 = torch.randn(2, 3, 3, 2, dtype=D64), torch.randint(0, 3, (2, 3, 2))
    pt = torch.softmax(x, 1).gather(1, t3[:, None])
    assert ((pt - 0.2).abs() > 1e-3).all()
    _gradcheck(lambda a: NSFLDiceLoss(lambda_=0.5)(a, t3), x)


def test_gradcheck_confidence_heatmap_and_box_losses():
    torch.manual_seed(7)
    _gradcheck(lambda a, b: confidence_bce(a, b) + adversarial_loss(b, weight=0.3),
               torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3))
    g = gaussian_heatmap((4, 5), [[1, 2]], sigma=1.0, dtype=D64)[None, None]
    _gradcheck(lambda a: HeatmapMSELoss(sigmoid=True)(a, g), torch.randn(1, 1, 4, 5))
    _gradcheck(lambda a: CenterNetFocalLoss(sigmoid=True)(a, g), torch.randn(1, 1, 4, 5))
    _gradcheck(lambda a: CenterNetFocalLoss()(a, g), torch.rand(1, 1, 4, 5) * 0.9 + 0.05)
    boxes = torch.tensor([[0.0, 0.1, 2.2, 2.5], [1.0, 0.3, 3.1, 2.0]])
    target = torch.tensor([[1.1, 1.2, 3.3, 3.4], [0.2, 0.5, 2.6, 2.7]])
    _gradcheck(lambda a: diou_loss(a, target.to(D64)), boxes)
    boxes3 = torch.tensor([[0.0, 0.1, 0.2, 2.2, 2.5, 1.9]])
    target3 = torch.tensor([[1.1, 1.2, 0.7, 3.3, 3.4, 2.8]], dtype=D64)
    _gradcheck(lambda a: diou_loss(a, target3), boxes3)
