"""Training on phantoms: learns, writes a package, resumes."""

import json

import numpy as np
import pytest

from medseg_core.data.phantom import write_phantom_dataset
from medseg_core.models import find_model
from medseg_core.training.config import TrainConfig
from medseg_core.training.trainer import train


def tiny_config(**kw) -> TrainConfig:
    base = dict(name="tiny-phantom", network={"name": "unet", "kwargs": {"spatial_dims": 3, "features": [8, 16, 32]}},
                patch_size=[24, 32, 32], batch_size=2, steps=200, lr=0.01, warmup_steps=10, val_every=100,
                seed=0, half_weights=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("ds") / "Phantom", 6, seed=11, shape=(32, 48, 48))


def test_tiny_model_learns_the_phantom(phantom_dataset, tmp_path):
    res = train(tiny_config(), tmp_path / "run", data_dir=phantom_dataset, output=tmp_path / "pkg",
                device="cpu", progress="none", log=lambda *a: None)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in history] == [100, 200]
    per_class = history[-1]["per_class"]
    # 200 CPU steps (~15 s): the large organ and the elongated one are learnt; the tumour and the
    # small glands need longer (the bundled phantom model took ~1000 GPU steps for them).
    assert per_class["Liver"] > 0.85, per_class
    assert per_class["SpinalCord"] > 0.5, per_class
    assert res.best_dice > 0.3, per_class
    pkg = find_model(str(tmp_path / "pkg"))
    assert [lab.name for lab in pkg.card.labels] == ["Liver", "SpinalCord", "Tumour", "LeftGland", "RightGland"]
    assert pkg.card.preprocessing.normalization[0]["scheme"] == "ct"
    assert pkg.card.training["steps"] in (100, 200)  # the step of the best validation
    pkg.build()  # the SHA-256 verifies and the weights fit


def test_resume_continues_where_it_stopped(phantom_dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(steps=20, val_every=10), run, data_dir=phantom_dataset, device="cpu", progress="none",
          log=lambda *a: None)
    first = json.loads((run / "last" / "state.json").read_text())
    assert first["step"] == 20
    res = train(tiny_config(steps=30, val_every=10), run, data_dir=phantom_dataset, device="cpu",
                progress="none", resume=True, log=lambda *a: None)
    state = json.loads((run / "last" / "state.json").read_text())
    assert res.steps == 30 and state["step"] == 30
    assert [h["step"] for h in state["history"]] == [10, 20, 30]


def test_sampler_oversamples_small_structures():
    import torch

    from medseg_core.data.sampling import PatchSampler

    lab = torch.zeros(40, 40, 40, dtype=torch.uint8)
    lab[:, :, :30] = 1          # a large organ
    lab[20:22, 20:22, 35:37] = 2  # eight voxels
    img = torch.randn(1, 40, 40, 40)
    s = PatchSampler([img], [lab], 3, (8, 8, 8), fg_fraction=1.0, seed=0)
    hits = sum(bool((s.sample(1)[1] == 2).any()) for _ in range(200))
    assert hits > 70  # about half the patches, against 8/64000 of the voxels


def test_sampler_centres_foreground_patches_on_the_classes_asked_only():
    """A fine-tune's copy answers for its routed organs only: ``fg_classes`` centres every
    foreground patch on one of them, never on another organ."""
    import torch

    from medseg_core.data.sampling import PatchSampler

    lab = torch.zeros(40, 40, 40, dtype=torch.uint8)
    lab[:, :, :10] = 1
    lab[:, :, 30:] = 2
    s = PatchSampler([torch.randn(1, 40, 40, 40)], [lab], 3, (1, 1, 1), fg_fraction=1.0, seed=0, fg_classes=[2])
    centres = [int(s.sample(1)[1].flatten()[0]) for _ in range(100)]
    assert centres == [2] * 100
    both = PatchSampler([torch.randn(1, 40, 40, 40)], [lab], 3, (1, 1, 1), fg_fraction=1.0, seed=0)
    assert {int(both.sample(1)[1].flatten()[0]) for _ in range(100)} == {1, 2}


def test_sampler_crops_soft_targets_with_the_labels_and_pads_them_with_zeros():
    import torch

    from medseg_core.data.sampling import PatchSampler

    lab = torch.zeros(12, 12, 12, dtype=torch.uint8)
    lab[4:8, 4:8, 4:8] = 1
    soft = torch.nn.functional.one_hot(lab.long(), 2).permute(3, 0, 1, 2).half()  # soft targets = the labels
    s = PatchSampler([torch.randn(1, 12, 12, 12)], [lab], 2, (10, 10, 10), fg_fraction=0.0, seed=3, soft=[soft])
    for _ in range(20):
        x, y, annotated, t = s.sample(2)
        assert t.shape == (2, 2, 10, 10, 10) and t.dtype == torch.float32
        inside = t.sum(1) > 0.5  # padding is all zero, everywhere else one class is one
        assert torch.equal(t.argmax(1)[inside], y[inside]) and bool((y[~inside] == 0).all())
    assert len(PatchSampler([torch.randn(1, 12, 12, 12)], [lab], 2, (4, 4, 4)).sample(1)) == 3


def test_the_loop_refuses_soft_targets_with_an_augmentation_that_moves_voxels():
    import torch

    from medseg_core.data.augment import Augmenter
    from medseg_core.data.sampling import PatchSampler
    from medseg_core.training.loop import TrainingLoop

    lab = torch.zeros(8, 8, 8, dtype=torch.uint8)
    soft = torch.zeros(2, 8, 8, 8)
    sampler = PatchSampler([torch.randn(1, 8, 8, 8)], [lab], 2, (4, 4, 4), soft=[soft])
    assert Augmenter([2]).moves_voxels and Augmenter(affine_p=0.5).moves_voxels and not Augmenter().moves_voxels
    loop = TrainingLoop(None, None, sampler, Augmenter([2]), None, None, 1, 3, torch.device("cpu"))
    with pytest.raises(ValueError, match="soft targets"):
        loop.step(0, 0.0)


@pytest.mark.parametrize("recipe,net,patch", [
    ("pgd_nsfl", {"name": "pgd_unet", "kwargs": {"spatial_dims": 2, "features": [8, 16, 32, 32]}}, [48, 48]),
    ("godc", {"name": "unet", "kwargs": {"spatial_dims": 2, "features": [8, 16, 32, 32]}}, [48, 48]),
])
def test_paper_recipes_train_2d_networks_on_slices(phantom_dataset, tmp_path, recipe, net, patch):
    cfg = tiny_config(network=net, patch_size=patch, recipe=recipe, steps=40, val_every=40, batch_size=4,
                      recipe_kwargs={"switch_step": 20} if recipe == "pgd_nsfl" else {})
    res = train(cfg, tmp_path / "run", data_dir=phantom_dataset, output=tmp_path / "pkg", device="cpu",
                progress="none", log=lambda *a: None)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert max(history[-1]["per_class"].values()) > 0.5, history[-1]  # learning, slice by slice
    if recipe == "pgd_nsfl":
        assert history[-1]["nsfl_active"] and history[-1]["nsfl_switched_at"] == 20
    pkg = find_model(str(tmp_path / "pkg"))
    assert pkg.card.spatial_dims == 2 and pkg.card.patch_size == patch
    assert np.isfinite(res.best_dice)


def test_init_from_starts_at_the_parents_weights_and_records_it(phantom_dataset, tmp_path):
    from medseg_core.errors import ModelError

    quiet = dict(device="cpu", progress="none", log=lambda *a: None)
    train(tiny_config(steps=10, val_every=10), tmp_path / "a", data_dir=phantom_dataset, output=tmp_path / "A", **quiet)
    parent = find_model(str(tmp_path / "A"))
    # with a learning rate of 0 the child is its parent, whatever the (new) augmentation does
    child_cfg = tiny_config(steps=4, val_every=4, lr=0.0, init_from=str(tmp_path / "A"), version="1.1.0",
                            augment_kwargs={"affine_p": 1.0, "blur_p": 1.0}, resample_oblique=True)
    train(child_cfg, tmp_path / "b", data_dir=phantom_dataset, output=tmp_path / "B", **quiet)
    child = find_model(str(tmp_path / "B"))
    a, b = parent.load_state_dict(), child.load_state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert child.card.parent["name"] == "tiny-phantom" and child.card.parent["version"] == "1.0.0"
    assert child.card.parent["weights_sha256"] == parent.card.weights.sha256
    assert child.card.training["config"]["augment_kwargs"] == {"affine_p": 1.0, "blur_p": 1.0}
    # the config's straightening of oblique grids reaches the card (the cache's key leaves it out)
    assert child.card.preprocessing.resample_oblique and not parent.card.preprocessing.resample_oblique
    other = tiny_config(steps=2, init_from=str(tmp_path / "A"),
                        network={"name": "unet", "kwargs": {"spatial_dims": 3, "features": [8, 16, 64]}})
    with pytest.raises(ModelError, match="init_from weights do not fit"):
        train(other, tmp_path / "c", data_dir=phantom_dataset, **quiet)


def test_a_config_with_an_unknown_augmentation_option_is_one_error_naming_the_file(tmp_path):
    from medseg_core.errors import InputError

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"network": {"name": "unet"}, "augment_kwargs": {"affine_p": 0.3, "rotate": 10}}))
    with pytest.raises(InputError, match=r"c\.json: unknown augment_kwargs keys: rotate \(known: .*rotate_deg"):
        TrainConfig.read(path)
    path.write_text(json.dumps({"network": {"name": "unet"}, "augment_kwargs": {"affine_p": 0.3, "blur_p": 0.2}}))
    assert TrainConfig.read(path).augment_kwargs == {"affine_p": 0.3, "blur_p": 0.2}
