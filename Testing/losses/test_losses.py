"""Dice + CE, including partially annotated cases."""

import torch
import torch.nn.functional as F

from medseg_core.losses import DiceCELoss, DiceLoss, deep_supervision_loss, marginal_cross_entropy


def _perfect_logits(target, n, scale=50.0):
    return F.one_hot(target, n).movedim(-1, 1).float() * scale


def test_dice_is_zero_on_a_perfect_prediction():
    t = torch.randint(0, 3, (2, 6, 7, 5))
    assert DiceLoss()(_perfect_logits(t, 3), t).item() < 1e-4


def test_dice_known_value():
    # one class, prediction covers 2 of 4 voxels of which 1 is right: Dice = 2*1/(2+2) = 0.5
    probs = torch.tensor([[[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]])  # (B=1, N=2, S=4)
    target = torch.tensor([[1, 1, 0, 0]])
    loss = DiceLoss(softmax=False, smooth_nr=0, smooth_dr=0)(probs, target)
    assert abs(loss.item() - 0.5) < 1e-6


def test_marginal_ce_equals_ce_when_everything_is_annotated():
    logits, t = torch.randn(2, 4, 5, 6), torch.randint(0, 4, (2, 5, 6))
    ann = torch.ones(2, 4, dtype=torch.bool)
    assert torch.allclose(marginal_cross_entropy(logits, t, ann), F.cross_entropy(logits, t), atol=1e-6)


def test_unannotated_class_is_not_punished_in_background():
    # A background voxel predicted as class 2 costs nothing when class 2 was not contoured.
    logits = torch.tensor([[-10.0, -10.0, 10.0]]).T[None, :, :, None]  # (1, 3, 1, 1) -> class 2
    t = torch.zeros(1, 1, 1, dtype=torch.long)
    annotated = torch.tensor([[True, True, False]])
    assert marginal_cross_entropy(logits, t, annotated).item() < 1e-3
    assert marginal_cross_entropy(logits, t, torch.ones(1, 3, dtype=torch.bool)).item() > 10


def test_dice_skips_unannotated_pairs():
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    t[0, :2] = 1
    logits = _perfect_logits(t, 3)
    logits[0, 2, 2:] = 100.0  # predicts class 2 where nobody contoured it
    ann = torch.tensor([[True, True, False]])
    assert DiceLoss()(logits, t, ann).item() < 1e-4
    assert DiceLoss()(logits, t).item() > 0.4


def test_dice_ce_gradient_matches_finite_differences():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (1, 3, 3))
    loss_fn = DiceCELoss()
    # the loss casts to float32 internally: compare on a float64 copy of its formula by autograd vs FD
    loss = loss_fn(logits, t)
    loss.backward()
    eps, idx = 1e-3, (0, 1, 1, 2)
    with torch.no_grad():
        lp, lm = logits.clone(), logits.clone()
        lp[idx] += eps
        lm[idx] -= eps
        fd = (loss_fn(lp, t) - loss_fn(lm, t)) / (2 * eps)
    assert abs(fd.item() - logits.grad[idx].item()) < 1e-3


def test_deep_supervision_weights_sum_to_one():
    t = torch.randint(0, 2, (1, 4, 4)).repeat_interleave(2, -1).repeat_interleave(2, -2)  # 2x2 blocks
    perfect = _perfect_logits(t, 2)
    coarse = F.avg_pool2d(perfect, 2)
    assert deep_supervision_loss(DiceCELoss(), perfect, [coarse], t).item() < 0.05
