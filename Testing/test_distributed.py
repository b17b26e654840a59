"""DistributedDataParallel: two CPU processes (gloo) end with identical weights."""

import os
import socket

import torch
import torch.multiprocessing as mp

from medseg_core.data.phantom import write_phantom_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, data, run, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from medseg_core.nets import build_network
    from medseg_core.training.config import TrainConfig
    from medseg_core.training.trainer import _network_kwargs, train

    cfg = TrainConfig(name="ddp", network={"name": "unet", "kwargs": {"spatial_dims": 3, "features": [4, 8]}},
                      patch_size=[16, 16, 16], batch_size=1, steps=4, val_every=100, warmup_steps=1, seed=3,
                      half_weights=False)
    res = train(cfg, run, data_dir=data, device="cpu", progress="none", log=lambda *a: None)
    torch.manual_seed(cfg.seed)  # the trainer's initialisation, for comparison
    init = build_network("unet", **_network_kwargs(cfg, 1, 6)).state_dict()
    torch.save({"trained": res.net.state_dict(), "init": init, "steps": res.steps},
               os.path.join(out, f"rank{rank}.pt"))


def test_two_gloo_ranks_hold_identical_weights(tmp_path):
    data = write_phantom_dataset(tmp_path / "Phantom", 4, seed=5, shape=(24, 32, 32))
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(data), str(run), str(out)), nprocs=2, join=True)
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    assert r0["steps"] == r1["steps"] == 4
    a, b = r0["trained"], r1["trained"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # all-reduced gradients keep ranks in lockstep
    assert any(not torch.equal(a[k], r0["init"][k]) for k in a)  # and they did train
