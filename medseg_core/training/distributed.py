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

import torch
import torch.distributed as dist


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
    """Join the process group: NCCL on CUDA, gloo on the CPU."""
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process trains with others (a process group of more than one rank)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_gradients(parameters) -> None:
    """Average the gradients of ``parameters`` over the ranks, in one all-reduce per dtype.

    Every rank must pass the same parameters in the same order; a parameter without a gradient
    here counts as a zero gradient (another rank may have one), and afterwards has one.
    """
    if not active():
        return
    params = [p for p in parameters if p.requires_grad]
    world = dist.get_world_size()
    by_dtype: dict = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def broadcast_module(module: torch.nn.Module, src: int = 0, buffers_only: bool = False) -> None:
    """Give every rank rank ``src``'s parameters and buffers (only the buffers, such as batch-norm
    running statistics, with ``buffers_only``: after each step, as ``DistributedDataParallel`` does)."""
    if not active():
        return
    tensors = list(module.buffers()) if buffers_only else list(module.parameters()) + list(module.buffers())
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor.data, src)


def agree(value: float, device) -> float:
    """The largest of the ranks' values (e.g. how far the run is, by each rank's clock)."""
    if not active():
        return value
    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def shard(items: list, info: DistInfo) -> list:
    """This rank's share of a list (round robin)."""
    return items[info.rank::info.world_size]
