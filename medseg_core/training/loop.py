"""The one training step, shared by training (``trainer.py``) and fine-tuning (``finetune.py``).

A step samples a batch, augments it, runs the recipe's step (forward under autocast, loss,
:func:`~medseg_core.training.recipes.base.step_on`) and keeps rank 0's batch-norm statistics
under ``torchrun``; :meth:`TrainingLoop.advance` then moves the learning-rate schedule and the
recipe's own schedule on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..nets.slicewise import labels_to_net, to_net
from . import distributed as dd


@dataclass
class TrainingLoop:
    """Attributes:
        recipe: the :class:`~medseg_core.training.recipes.Recipe`, attached to ``net``.
        net: the network (the one handle every recipe steps).
        sampler: gives ``(images, labels, annotated)`` batches (:class:`~medseg_core.data.sampling.PatchSampler`),
            or ``(images, labels, annotated, soft)``: soft targets go to ``recipe.soft_targets``.
        augment: ``(images, labels) -> (images, labels)``; with soft targets it must not move voxels.
        optimizer, scheduler: the main optimiser and its learning-rate schedule.
        batch_size: patches per step.
        spatial_dims: the network's (2D networks get single-slice patches without their slice axis).
        device: where the batch is computed.
        amp: bf16 autocast.
        memory_format: the layout the batch is handed to the network in (``torch.channels_last_3d``
            where the network was moved to it, :func:`to_training_layout`).
    """

    recipe: object
    net: torch.nn.Module
    sampler: object
    augment: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batch_size: int
    spatial_dims: int
    device: torch.device
    amp: bool = False
    memory_format: torch.memory_format = torch.contiguous_format

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def step(self, step: int, fraction: float) -> float:
        """One optimiser step at ``step`` (0-based), ``fraction`` of the run done; the loss."""
        x, y, annotated, *soft = self.sampler.sample(self.batch_size)
        if soft and getattr(self.augment, "moves_voxels", True):
            raise ValueError("soft targets need an augmentation that leaves voxels where they are")
        x, y = self.augment(x, y)
        x, y = to_net(x, self.spatial_dims), labels_to_net(y, self.spatial_dims)
        x = x.contiguous(memory_format=self.memory_format)
        if soft:
            self.recipe.soft_targets = to_net(soft[0], self.spatial_dims)
        self.recipe.before_step(step, fraction)
        loss = self.recipe.train_step(self.net, x, y, annotated, self.optimizer, self.autocast)
        dd.broadcast_module(self.net, buffers_only=True)  # rank 0's batch-norm statistics, as DDP keeps them
        return float(loss.detach())

    def advance(self, steps_done: int) -> None:
        """After a step: the learning-rate schedule, then the recipe's (``steps_done`` counts it)."""
        self.scheduler.step()
        self.recipe.after_step(steps_done)


def to_training_layout(net: torch.nn.Module, device: torch.device, spatial_dims: int) -> torch.memory_format:
    """Moves ``net`` to the layout to train it in, and returns that layout: channels-last for a 3D
    network on the CPU that declares it computes the same so
    (:attr:`~medseg_core.nets.base.SegNetwork.channels_last_training`), where PyTorch's
    convolutions are faster that way; the plain layout otherwise. The caller moves the network back
    (``net.to(memory_format=torch.contiguous_format)``) before saving or exporting it."""
    fmt = torch.contiguous_format
    if device.type == "cpu" and spatial_dims == 3 and getattr(net, "channels_last_training", False):
        fmt = torch.channels_last_3d
    net.to(memory_format=fmt)
    return fmt
