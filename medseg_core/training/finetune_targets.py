"""What fine-tuning fits from a correction: which organs the user changed, the target that
keeps the accepted ones as the parent drew them, the voxels to focus on, and the steps a
correction of that size deserves."""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
import torch

from ..data.preprocess import probabilities_to_labels
from ..inference.postprocess import keep_largest_components
from ..errors import InputError
from ..models.card import ModelCard

DISAGREE_DICE = 0.25
"""Refused unless forced: a correction the parent matches under this mean Dice over two organs or
more (most likely another image's, other labels, or shifted); one organ alone may be a miss."""

STEPS_PER_CASE = 12
STEPS_PER_CASE_SEVERAL = 15
MAX_STEPS = 75
MIN_STEPS = 8
FULL_CHANGE = 1000
"""Voxels changed on the model grid per case that earn one case the full ``STEPS_PER_CASE``; a
smaller correction gets fewer, with the square root of its size, at least ``MIN_STEPS``. Several
cases get ``STEPS_PER_CASE_SEVERAL`` each, at most ``MAX_STEPS`` in all. Measured on the
adaptation benchmark (bf16 CPU, routing, four new cases): one corrected case closed 95 % of the
margin style's gap with 15 steps, 92 % with 12 and 85 % with 10 (93 % with 30 in an earlier run),
the cut style's well over 100 % with each; 12 a case takes a fifth off one case's training (3 s on
the widest HNOAR case with AVX2). Three cases of the merge style (eight new cases) closed 15 % of
its gap in 16 steps, 76 % in 30 and 126 % in 45; margin 107 % with 30 and with 45, cut 251 % and
469 %. Five cases get 75: merge 44 % (21 % in 45), margin 108 %, cut 87 %. Two cases get 30,
which was not measured apart (:func:`steps_for`). These figures predate the patch teacher (the
``finetune`` recipe), which took out a growth of the trained organ that no correction asked for;
with it, three cases of merge close 37 % in 45 steps and 21 % in 30 (``docs/results.md``)."""


CPU_SLAB_3D = 32
CPU_PATCH_2D = (160, 160)
BATCH_SIZE = 2
"""On the CPU a 3D model trains on one patch a step of its card's in-plane window and at most
``CPU_SLAB_3D`` slices; elsewhere on ``BATCH_SIZE`` patches of the card's window (2D on the CPU:
capped at ``CPU_PATCH_2D``). The networks' instance norms take their statistics over the window:
on a 48 x 64 x 64 patch the bundled U-Net drew hn_201's organs 10-45 % smaller than on its
64 x 96 x 128 window, so a copy fine-tuned on two such patches a step learnt to draw every organ
5-25 % larger, and on new patients it did (the brainstem grew in-plane where a merge style asked
it to reach down into the cord). One 32 x 96 x 128 patch costs what two 48 x 64 x 64 did."""


def training_patch(card: ModelCard, patch_size, device: torch.device) -> tuple[tuple[int, ...], int]:
    """The training patch and the patches a step: as asked, else as above."""
    batch = 1 if device.type == "cpu" and card.spatial_dims == 3 else BATCH_SIZE
    if patch_size is not None:
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != len(card.patch_size) or min(patch) < 1:
            raise InputError(f"patch size {list(patch)}: give {len(card.patch_size)} positive sizes")
        return patch, batch
    patch = tuple(int(p) for p in card.patch_size)
    if device.type != "cpu":
        return patch, batch  # a GPU: the card's patch, as the parent was trained
    if card.spatial_dims == 3:
        return (min(patch[0], CPU_SLAB_3D),) + patch[1:], batch
    return tuple(min(p, c) for p, c in zip(patch, CPU_PATCH_2D)), batch


def steps_for(changed: int, cases: int = 1) -> int:
    """Optimiser steps a correction deserves. One case earns ``STEPS_PER_CASE`` from
    ``FULL_CHANGE`` voxels changed on the model grid and fewer for a smaller change, so a slip of
    a few dozen voxels does not move the model much. Several cases earn
    ``STEPS_PER_CASE_SEVERAL`` each (at most ``MAX_STEPS``) whatever their size: the same change
    on several patients is a style (three cases of the adaptation benchmark's merge style, tens of
    voxels each (hn_201's: 63), closed 15 % of its gap in the 16 steps their size gave, 76 % in 30
    and 126 % in 45, before the patch teacher; the organs the copy does not answer for moved by at
    most 0.0002 either way).

    >>> steps_for(5000), steps_for(1000), steps_for(250), steps_for(30)
    (12, 12, 8, 8)
    >>> steps_for(3000, cases=3), steps_for(30, cases=3), steps_for(30, cases=2), steps_for(30, cases=8)
    (45, 45, 30, 75)
    """
    if cases > 1:
        return min(MAX_STEPS, STEPS_PER_CASE_SEVERAL * int(cases))
    full = STEPS_PER_CASE
    share = changed / FULL_CHANGE
    return int(min(full, max(MIN_STEPS, math.ceil(full * math.sqrt(share)))))


def what_was_edited(card: ModelCard, case, probs: np.ndarray, parent: np.ndarray):
    """The annotated organs the user changed, those the new model must answer for, and the
    training target on the model grid.

    The parent's result is brought onto the image's grid as ``medseg segment`` writes it (largest
    components kept as the card says) and compared with the correction there, organ by organ: an
    organ whose voxels are all as the parent drew them was *accepted*. Its voxels on the model
    grid are then the parent's own (the correction's copy went through a resampling and back, a
    staircase the model must not learn); so are an edited organ's voxels the user left as they
    were, and only the voxels the user changed are taken from the correction.

    Routed (answered for by the fine-tuned copy, :class:`~medseg_core.nets.routed.RoutedNetwork`)
    are the organs that gained voxels or lost some to the background. An organ that only lost
    voxels to another organ (the mandible under a parotid drawn wider, the spinal cord's top
    drawn into the brainstem) is not: the organ that took them is routed and claims them, and the
    parent keeps answering for the rest of it.

    Returns:
        ``(edited, routed, target)``: class values, class values, (z, y, x) labels.
    """
    shown = sitk.GetImageFromArray(probabilities_to_labels(probs, case.grid, case.reference))
    shown.CopyInformation(case.reference)
    shown = sitk.GetArrayFromImage(keep_largest_components(shown, card.inference.largest_component))
    edited = [v for v in case.annotated if v and not np.array_equal(shown == v, case.drawn == v)]
    routed = [v for v in edited if ((case.drawn == v) & (shown != v)).any() or ((shown == v) & (case.drawn == 0)).any()]
    changed = (shown != case.drawn) & (np.isin(shown, edited) | np.isin(case.drawn, edited))
    mine = on_model_grid(changed, case.reference, case.grid)
    target = parent.copy()
    target[mine] = case.label[mine]
    return edited, routed, target


def on_model_grid(mask: np.ndarray, reference: sitk.Image, grid) -> np.ndarray:
    """A (z, y, x) mask on ``reference``'s grid brought onto the model grid as the correction's
    labels were (nearest neighbour, by physical position).

    Only the voxels the user changed take the correction's labels: the rest of an edited organ,
    read back from the image grid, is a staircase around the parent's own model-grid boundary
    (a merge of 23 voxels on hn_201's image grid gave 528 differing model-grid voxels, and the
    brainstem learnt from them grew in-plane on new patients)."""
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.CopyInformation(reference)
    out = sitk.Resample(img, grid.image(np.zeros(tuple(grid.size)[::-1], np.uint8)), sitk.Transform(),
                        sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayViewFromImage(out).astype(bool)


def errors(case, predicted: np.ndarray, num_classes: int) -> torch.Tensor:
    """Voxels where the parent disagrees with the correction, on the labels the correction annotates
    (a prediction of an unannotated label is not an error)."""
    annotated = np.zeros(num_classes, dtype=bool)
    annotated[list(case.annotated)] = True
    ref = case.target
    wrong = (predicted != ref) & ((ref > 0) | ((predicted > 0) & annotated[predicted]))
    return torch.from_numpy(np.argwhere(wrong))


def refuse_disagreeing(cases, per_case: list[dict[int, float]], parent: ModelCard) -> None:
    """One clear error for the first correction the parent matches almost nowhere."""
    for (_, lab_path), dice in zip(cases, per_case):
        mean = float(np.mean(list(dice.values()))) if len(dice) >= 2 else 1.0
        if mean < DISAGREE_DICE:
            raise InputError(f"{lab_path}: the correction disagrees with {parent.name} almost everywhere (mean Dice "
                             f"{mean:.2f} over {len(dice)} organs, under {DISAGREE_DICE}): is it this image's, with "
                             f"the model's labels, not shifted? --force fine-tunes on it anyway")
