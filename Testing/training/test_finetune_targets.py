"""What fine-tuning trains and what the new model answers for: the organs the user left alone are
trained as the parent drew them, ``blend`` keeps its share of the change, and the new model
routes the edited organs to the fine-tuned copy and leaves the rest to the parent."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from finetune_helpers import MODEL, TUMOUR, dilate, edited_phantom as _edited, predict as _predict
from medseg_core.data.phantom import make_phantom
from medseg_core.errors import InputError
from medseg_core.models import find_model, load_package
from medseg_core.training.finetune import finetune


def test_organs_the_user_left_alone_are_trained_as_the_parent_drew_them(tmp_path, monkeypatch):
    """The correction is the parent's own result (as ``medseg segment`` writes it) with the Tumour
    grown into the liver: the Tumour and the Liver (which lost those voxels) count as edited, the
    other organs as accepted, and training fits the parent's model-grid labels wherever the user
    changed nothing (not the correction's resampled copy of them), the correction where they did."""
    from medseg_core.data.sampling import PatchSampler
    from medseg_core.inference.postprocess import keep_largest_components
    from medseg_core.inference.predictor import Predictor
    from medseg_core.training import finetune as ft

    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "home"))
    ph = make_phantom(seed=5, spacing=(1.3, 1.1, 2.2))  # a grid unlike the model's: resampling both ways
    sitk.WriteImage(ph.image, str(tmp_path / "i.nii.gz"))
    pred = Predictor(find_model(MODEL), device="cpu")
    shown = keep_largest_components(pred.predict([ph.image], confidence=False).labels,
                                    pred.card.inference.largest_component)
    corr = sitk.GetArrayFromImage(shown)
    corr[dilate(dilate(corr == TUMOUR)) & (corr == 1)] = TUMOUR
    out = sitk.GetImageFromArray(corr)
    out.CopyInformation(ph.image)
    sitk.WriteImage(out, str(tmp_path / "c.nii.gz"))
    seen = {}

    class Spy(PatchSampler):
        def __init__(self, images, labels, *args, **kw):
            seen["labels"], seen["focus"] = [lab.clone() for lab in labels], kw["focus"]
            super().__init__(images, labels, *args, **kw)

    monkeypatch.setattr(ft, "PatchSampler", Spy)
    res = finetune(MODEL, [(tmp_path / "i.nii.gz", tmp_path / "c.nii.gz")], steps=2, device="cpu")
    record = load_package(res.package_dir).card.training["finetune"]
    assert record["cases"][0]["labels_edited"] == ["Liver", "Tumour"]
    assert res.per_label["Tumour"]["edited"] and not res.per_label["LeftGland"]["edited"]
    # the target: the parent's model-grid labels, except the voxels the user changed (the correction
    # and the parent's shown result, both brought onto the model grid as a correction is, differ there)
    pre = pred.preprocessor([ph.image], sitk.ReadImage(str(tmp_path / "c.nii.gz")))
    changed = pred.preprocessor([ph.image], shown).label != pre.label
    parent = pred.predict_array(pre.image)[0].argmax(0)
    target = seen["labels"][0].numpy()
    moved = (target != parent)
    edited = np.isin(target, [1, TUMOUR]) | np.isin(parent, [1, TUMOUR])
    assert moved.any() and edited[moved].all()
    assert np.array_equal(target[changed], pre.label[changed]) and np.array_equal(target[~changed], parent[~changed])
    # what that leaves out: the edited organs' staircase, where the correction read back differs
    # from the parent's model-grid labels though the user changed nothing there
    assert ((pre.label != parent) & ~changed & edited).any()
    # patches focus on what was redrawn only
    focus = seen["focus"][0].numpy()
    assert len(focus) and moved[tuple(focus.T)].all()


def test_blend_keeps_the_asked_share_of_the_change(tmp_path, monkeypatch):
    """``blend=0.5`` lands halfway between the parent's weights and those of the same run unblended."""
    from medseg_core.models.package import load_package as load

    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "home"))
    ph = make_phantom(seed=6)
    sitk.WriteImage(ph.image, str(tmp_path / "i.nii.gz"))
    sitk.WriteImage(_edited(ph), str(tmp_path / "c.nii.gz"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {b: finetune(MODEL, [(tmp_path / "i.nii.gz", tmp_path / "c.nii.gz")], steps=3, device="cpu",
                            name=f"b{int(b * 10)}", blend=b, seed=1) for b in (1.0, 0.5)}
    finally:
        torch.set_num_threads(threads)
    parent = find_model(MODEL).load_state_dict()
    full, half = (load(runs[b].package_dir).load_state_dict() for b in (1.0, 0.5))
    for k in parent:  # the routed network keeps the parent as its base, untouched
        assert torch.equal(full[f"base.{k}"], parent[k].float()) and torch.equal(half[f"base.{k}"], parent[k].float())
    moved = [k for k in parent
             if parent[k].is_floating_point() and not torch.equal(full[f"tuned.{k}"].float(), parent[k].float())]
    assert moved  # the decoder trained; the frozen encoder did not move
    for k in moved:
        torch.testing.assert_close(half[f"tuned.{k}"].float(), (parent[k].float() + full[f"tuned.{k}"].float()) / 2,
                                   atol=2e-3, rtol=0)
    assert load(runs[0.5].package_dir).card.training["finetune"]["blend"] == 0.5
    with pytest.raises(InputError, match=r"--blend 0(\.0)?: give a share"):
        finetune(MODEL, [(tmp_path / "i.nii.gz", tmp_path / "c.nii.gz")], steps=1, device="cpu", blend=0)


def test_organs_the_user_accepted_keep_the_parents_answer(tmp_path, monkeypatch):
    """The correction is the parent's own result with the Tumour grown into the liver. The new
    model routes the Tumour to the fine-tuned copy (the Liver only lost voxels to it, so it is
    edited but not routed) and leaves the rest to the parent: wherever neither model draws the
    Tumour, its labels are the parent's. A second generation stays two networks over the same
    untouched parent."""
    from medseg_core.inference.postprocess import keep_largest_components
    from medseg_core.inference.predictor import Predictor

    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "home"))
    ph = make_phantom(seed=8)
    sitk.WriteImage(ph.image, str(tmp_path / "i.nii.gz"))
    pred = Predictor(find_model(MODEL), device="cpu")
    old = sitk.GetArrayFromImage(keep_largest_components(pred.predict([ph.image], confidence=False).labels,
                                                         pred.card.inference.largest_component))
    corr = old.copy()
    corr[dilate(dilate(corr == TUMOUR)) & (corr == 1)] = TUMOUR
    out = sitk.GetImageFromArray(corr)
    out.CopyInformation(ph.image)
    sitk.WriteImage(out, str(tmp_path / "c.nii.gz"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = finetune(MODEL, [(tmp_path / "i.nii.gz", tmp_path / "c.nii.gz")], steps=10, device="cpu", name="first")
        second = finetune(str(res.package_dir), [(tmp_path / "i.nii.gz", tmp_path / "c.nii.gz")], steps=2,
                          device="cpu", name="second")
    finally:
        torch.set_num_threads(threads)
    card = load_package(res.package_dir).card
    ft = card.training["finetune"]
    assert card.network.name == "routed" and ft["routed"] == ["Tumour"]
    assert ft["cases"][0]["labels_edited"] == ["Liver", "Tumour"] and card.network.kwargs["routed"] == [TUMOUR]
    assert card.network.kwargs["base"] == find_model(MODEL).card.network.to_dict()
    new = _predict(str(res.package_dir), ph.image)
    elsewhere = (old != TUMOUR) & (new != TUMOUR)
    assert elsewhere.mean() > 0.5 and np.array_equal(new[elsewhere], old[elsewhere])
    assert (new == TUMOUR).sum() > (old == TUMOUR).sum()  # the copy learnt the larger Tumour
    state, parent = load_package(second.package_dir).load_state_dict(), find_model(MODEL).load_state_dict()
    assert {k.split(".")[0] for k in state} == {"base", "tuned"}
    assert all(torch.equal(state[f"base.{k}"], v.float()) for k, v in parent.items())
    assert load_package(second.package_dir).card.training["finetune"]["routed"] == ["Tumour"]


def test_the_cpu_trains_a_3d_model_on_its_windows_in_plane_size_one_patch_a_step():
    """Instance norms take their statistics over the window, so on the CPU a 3D model keeps its
    card's in-plane window (fewer slices, one patch a step); a GPU trains on the card's patch."""
    from types import SimpleNamespace

    from medseg_core.training.finetune_targets import CPU_PATCH_2D, CPU_SLAB_3D, training_patch

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    card3 = SimpleNamespace(spatial_dims=3, patch_size=[64, 96, 128])
    assert training_patch(card3, None, cpu) == ((CPU_SLAB_3D, 96, 128), 1)
    assert training_patch(card3, None, gpu) == ((64, 96, 128), 2)
    assert training_patch(SimpleNamespace(spatial_dims=3, patch_size=[16, 32, 32]), None, cpu) == ((16, 32, 32), 1)
    assert training_patch(card3, [8, 16, 16], cpu) == ((8, 16, 16), 1)
    card2 = SimpleNamespace(spatial_dims=2, patch_size=[512, 512])
    assert training_patch(card2, None, cpu) == (tuple(CPU_PATCH_2D), 2)
    with pytest.raises(InputError, match="give 3 positive sizes"):
        training_patch(card3, [8, 16], cpu)
