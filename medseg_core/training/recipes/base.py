"""What a training recipe is: the loss and, where a paper needs it, the whole training step."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch

from ...losses import DiceLoss, FocalLoss
from ..distributed import average_gradients

MakeOptimizer = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]

GRAD_CLIP = 12.0


class Recipe:
    """A paper's training procedure, chosen by name in the config.

    The trainer (sampling, optimiser, LR schedule, validation, checkpoints) is the same for every
    recipe, so methods compare on an equal footing. A recipe supplies:

    * :meth:`loss` ``(out, target, annotated)``: the loss of one forward pass;
    * :meth:`train_step`: one optimisation step; the default runs forward, :meth:`loss`, then
      :func:`step_on` (backward, gradients averaged over the ranks, clipping, the optimiser
      step). Alternating methods (L-SNet, DAN) override it; every optimiser step goes through
      :func:`step_on`, the same number of times on every rank;
    * :meth:`attach`: called once with the built network, before the main optimiser is made,
      to set up stages or extra optimisers; :meth:`parameters` says what the main optimiser
      updates (default: everything);
    * :meth:`train_mode`: puts the network in training mode (default: all of it);
      :meth:`detach`: undoes what :meth:`attach` changed on the network, once training ends;
    * :meth:`before_step` ``(step, fraction)`` and :meth:`after_step` ``(step)``: schedules;
    * :meth:`state` (shown in the training history) and :meth:`state_dict` /
      :meth:`load_state_dict` (saved with the resume point).
    """

    name = "base"

    def attach(self, net: torch.nn.Module, make_optimizer: MakeOptimizer) -> None:
        pass

    def parameters(self, net: torch.nn.Module) -> Iterable[torch.nn.Parameter]:
        return net.parameters()

    def train_mode(self, net: torch.nn.Module) -> None:
        net.train()

    def detach(self, net: torch.nn.Module) -> None:
        pass

    def before_step(self, step: int, fraction: float) -> None:
        pass

    def loss(self, out, target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor):
        """The training forward pass (FocusNet passes the organs' centres, for example)."""
        return model(x)

    def train_step(self, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor,
                   optimizer: torch.optim.Optimizer, autocast: Callable[[], AbstractContextManager]) -> torch.Tensor:
        """One step; returns the (detached) loss to log."""
        with autocast():
            out = self.forward(model, x, target)
        loss = self.loss(out, target, annotated)
        step_on(optimizer, loss, model.parameters())
        return loss.detach()

    def after_step(self, step: int) -> None:
        pass

    def state(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def step_on(optimizer: torch.optim.Optimizer, loss: torch.Tensor | None, parameters, clip: float = GRAD_CLIP) -> None:
    """zero_grad, backward, average the gradients over the ranks (under ``torchrun``), clip the
    gradient norm of ``parameters``, step: the one optimiser step of every recipe.

    ``loss`` may be ``None`` when this rank has nothing to learn from this step (an L-SNet batch
    without a region): it still takes part, with zero gradients, so every rank steps alike.
    """
    parameters = [p for p in parameters if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    if loss is not None:
        loss.backward()
    average_gradients(parameters)
    torch.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], clip)
    optimizer.step()


def sync_lr(source: torch.optim.Optimizer, *others: torch.optim.Optimizer) -> None:
    """Gives extra optimisers the main optimiser's current learning rate (the trainer's schedule)."""
    lr = source.param_groups[0]["lr"]
    for opt in others:
        for group in opt.param_groups:
            group["lr"] = lr


class FocalDice(torch.nn.Module):
    """``focal + dice_weight * Dice`` with the marginal treatment of un-annotated classes."""

    def __init__(self, gamma: float = 2.0, dice_weight: float = 1.0):
        super().__init__()
        self.focal = FocalLoss(gamma=gamma)
        self.dice = DiceLoss()
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                annotated: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        return self.focal(logits, target, annotated) + self.dice_weight * self.dice(logits, target, annotated)
