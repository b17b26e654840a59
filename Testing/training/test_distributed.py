"""Training under ``torchrun``: two CPU processes (gloo) end with identical weights, for every
recipe, including the alternating ones (L-SNet, DAN), FocusNet's changing stages and fine-tuning's
frozen encoder."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from medseg_core.data.phantom import write_phantom_dataset

# recipe -> (network, patch, extra config): tiny 2D networks (3D for the plain U-Net), a few steps
RECIPES = {
    "dice_ce": ({"name": "unet", "kwargs": {"spatial_dims": 3, "features": [4, 8]}}, [16, 16, 16], {}),
    "pgd_nsfl": ({"name": "pgd_unet", "kwargs": {"spatial_dims": 2, "features": [4, 8, 8, 8]}}, [32, 32],
                 {"recipe_kwargs": {"switch_step": 2}}),
    "godc": ({"name": "lfam_unet", "kwargs": {"spatial_dims": 2, "features": [4, 8, 8, 8]}}, [32, 32], {}),
    "focusnet": ({"name": "focusnet", "kwargs": {"spatial_dims": 2, "small_organs": [4, 5], "roi_sizes": [[16, 16], [16, 16]],
                                                 "features": [8, 16], "aspp_growth": 8, "sos_features": [8, 8]}},
                 [40, 40], {"small_organs": ["LeftGland", "RightGland"],
                            "recipe_kwargs": {"stage_fractions": [0.25, 0.25, 0.25, 0.25]}}),
    "lsnet": ({"name": "lsnet", "kwargs": {"spatial_dims": 2, "lnet_features": [8, 16], "snet_features": [8, 16],
                                           "roi_size": 24, "snet_feature_channels": 4}},
              [40, 40], {"small_organs": ["LeftGland", "RightGland"]}),
    "dan": ({"name": "dan", "kwargs": {"spatial_dims": 2, "features": [8, 16, 16, 16],
                                       "confidence_features": [4, 8, 8, 8]}}, [40, 40], {}),
    "finetune": ({"name": "unet", "kwargs": {"spatial_dims": 3, "features": [4, 8]}}, [16, 16, 16], {}),
}
STEPS = 8


def _worker(rank, world, data, run, out):
    """One rank: every recipe in turn (one process pair for all: spawning costs more than the steps),
    each with its own rendezvous file and run folder. A file needs no free port (ports picked ahead
    can be taken meanwhile), gloo talks over loopback, and a rank that goes missing fails the test in
    minutes rather than torch's 30."""
    torch.set_num_threads(1)
    os.environ.update(GLOO_SOCKET_IFNAME="lo", MEDSEG_DIST_TIMEOUT_S="300")
    from medseg_core.nets import build_network
    from medseg_core.training.config import TrainConfig
    from medseg_core.training.trainer import network_kwargs, train

    for recipe in RECIPES:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          MEDSEG_DIST_INIT="file://" + os.path.join(out, f"{recipe}.rendezvous"))
        network, patch, extra = RECIPES[recipe]
        cfg = TrainConfig(name=f"ddp-{recipe}", network=network, patch_size=patch, batch_size=2, steps=STEPS,
                          val_every=100, warmup_steps=1, seed=3, half_weights=False, recipe=recipe, **extra)
        res = train(cfg, os.path.join(run, recipe), data_dir=data, device="cpu", progress="none",
                    log=lambda *a: None)
        torch.manual_seed(cfg.seed)  # the trainer's initialisation, for comparison
        init = build_network(network["name"], **network_kwargs(cfg, 1, 6)).state_dict()
        torch.save({"trained": res.net.state_dict(), "init": init, "steps": res.steps},
                   os.path.join(out, f"{recipe}-rank{rank}.pt"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("ddp") / "Phantom", 4, seed=5, shape=(24, 40, 40))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """Both ranks' weights after every recipe (two processes, gloo)."""
    tmp = tmp_path_factory.mktemp("ddp-runs")
    run, out = tmp / "run", tmp / "out"
    out.mkdir()
    mp.spawn(_worker, args=(2, str(dataset), str(run), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("recipe", RECIPES)
def test_two_gloo_ranks_hold_identical_weights(trained, recipe):
    r0 = torch.load(trained / f"{recipe}-rank0.pt", weights_only=True)
    r1 = torch.load(trained / f"{recipe}-rank1.pt", weights_only=True)
    assert r0["steps"] == r1["steps"] == STEPS
    a, b = r0["trained"], r1["trained"]
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{recipe}: the ranks disagree on {len(differ)} tensors, e.g. {differ[:3]}"
    assert any(not torch.equal(a[k], r0["init"][k]) for k in a)  # and they did train
    if recipe == "finetune":  # its encoder is frozen: it must not have moved on either rank
        encoder = [k for k in a if k.startswith("encoder.")]
        assert encoder and all(torch.equal(a[k], r0["init"][k]) for k in encoder)
