"""Data-parallel training under ``torchrun`` (one process per GPU, any number of nodes).

Every rank holds the whole network and trains on its own share of the cases. Rather than
``DistributedDataParallel``'s wrapper, whose gradient hooks assume one forward and one backward
through the wrapper per step, the gradients are averaged where every recipe's optimiser steps
(``recipes.base.step_on``, through :func:`average_gradients`). So the alternating recipes (L-SNet,
DAN: several optimisers and forward passes per step) and FocusNet (whose trained parameters change
with its stage) stay in lockstep: each rank steps with the same averaged gradient. The ranks start
from rank 0's weights and keep rank 0's buffers (:func:`broadcast_module`), and agree on the run's
progress (:func:`agree`), so schedules and stage switches happen at the same step everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # loaded by the collectives only: a rank's identity (from_env, shard) needs none
    import torch


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """Rank and world size as torchrun sets them (1 process when unset)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def init(info: DistInfo, device: torch.device) -> None:
    """Join the process group: NCCL on CUDA, gloo on the CPU.

    The rendezvous is torchrun's (``env://``) unless ``MEDSEG_DIST_INIT`` names another (a
    ``file://`` path on a shared disk needs no free port); ``MEDSEG_DIST_TIMEOUT_S`` bounds how long
    a collective waits for a missing rank (torch's default: 30 minutes)."""
    from datetime import timedelta

    import torch.distributed as dist

    if info.enabled and not dist.is_initialized():
        timeout = os.environ.get("MEDSEG_DIST_TIMEOUT_S")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method=os.environ.get("MEDSEG_DIST_INIT", "env://"),
                                rank=info.rank, world_size=info.world_size,
                                timeout=timedelta(seconds=float(timeout)) if timeout else None)


def shutdown(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process trains with others (a process group of more than one rank)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _coalesced(tensors, collective) -> None:
    """Run ``collective`` in place on one flat tensor per dtype and device, then copy the result
    back into ``tensors``: one call per group instead of one per tensor."""
    import torch

    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        collective(flat)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def average_gradients(parameters) -> None:
    """Average the gradients of ``parameters`` over the ranks.

    Every rank must pass the same parameters in the same order; a parameter without a gradient
    here counts as a zero gradient (another rank may have one), and afterwards has one.
    """
    import torch
    import torch.distributed as dist

    if not active():
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    world = dist.get_world_size()

    def mean(flat):
        dist.all_reduce(flat)
        flat /= world

    _coalesced([p.grad for p in params], mean)


def broadcast_module(module: torch.nn.Module, src: int = 0, buffers_only: bool = False) -> None:
    """Give every rank rank ``src``'s parameters and buffers (only the buffers, such as batch-norm
    running statistics, with ``buffers_only``: after each step, as ``DistributedDataParallel`` does)."""
    import torch
    import torch.distributed as dist

    if not active():
        return
    tensors = list(module.buffers()) if buffers_only else list(module.parameters()) + list(module.buffers())
    with torch.no_grad():
        _coalesced([t.data for t in tensors], lambda flat: dist.broadcast(flat, src))


def agree(value: float, device) -> float:
    """The largest of the ranks' values (e.g. how far the run is, by each rank's clock)."""
    import torch
    import torch.distributed as dist

    if not active():
        return value
    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def shard(items: list, info: DistInfo) -> list:
    """This rank's share of a list (round robin)."""
    return items[info.rank::info.world_size]
