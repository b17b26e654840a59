"""Distillation and L2-SP: zero where nothing moved, the textbook values where something did, and
the mask decides which voxels count."""

from __future__ import annotations

import math

import torch

from medseg_core.losses import l2_sp, masked_kl_divergence


def test_kl_is_zero_when_the_student_matches_the_teacher():
    torch.manual_seed(0)
    teacher = torch.softmax(torch.randn(2, 4, 3, 5, 6), 1)
    assert float(masked_kl_divergence(torch.log(teacher), teacher)) < 1e-6
    # a constant added to every class's logit changes no probability
    assert float(masked_kl_divergence(torch.log(teacher) + 3.0, teacher)) < 1e-5


def test_kl_by_hand_on_one_voxel():
    # teacher (0.75, 0.25), student logits (0, 0) -> (0.5, 0.5): 0.75 ln 1.5 + 0.25 ln 0.5
    teacher = torch.tensor([0.75, 0.25]).view(1, 2, 1)
    kl = masked_kl_divergence(torch.zeros(1, 2, 1), teacher)
    assert math.isclose(float(kl), 0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel_tol=1e-5)


def test_only_masked_voxels_count_and_an_empty_mask_gives_zero_with_a_gradient():
    teacher = torch.tensor([[0.9, 0.1], [0.9, 0.1]]).T.reshape(1, 2, 2)  # two voxels, same teacher
    logits = torch.tensor([[2.197, 0.0], [-5.0, 5.0]]).T.reshape(1, 2, 2).requires_grad_()
    mask = torch.tensor([[True, False]])
    # the first voxel matches the teacher (ln 9 = 2.197), the second is far off but masked out
    assert float(masked_kl_divergence(logits, teacher, mask)) < 1e-4
    assert float(masked_kl_divergence(logits, teacher)) > 1.0
    empty = masked_kl_divergence(logits, teacher, torch.zeros(1, 2, dtype=torch.bool))
    empty.backward()
    assert float(empty) == 0.0 and logits.grad is not None


def test_kl_gradient_pulls_the_student_toward_the_teacher():
    teacher = torch.tensor([0.8, 0.2]).view(1, 2, 1)
    logits = torch.zeros(1, 2, 1, requires_grad=True)
    masked_kl_divergence(logits, teacher).backward()
    assert logits.grad[0, 0, 0] < 0 < logits.grad[0, 1, 0]  # raise class 0, lower class 1


def test_l2_sp_by_hand():
    w = [torch.tensor([1.0, 2.0]), torch.tensor([[0.5]])]
    w0 = [torch.tensor([1.0, 0.0]), torch.tensor([[1.5]])]
    assert float(l2_sp(w, w0)) == 4.0 + 1.0
    assert float(l2_sp(w0, w0)) == 0.0
