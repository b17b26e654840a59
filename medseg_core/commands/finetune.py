"""``finetune``: the request, its checks, and the run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import InputError
from . import checks


@dataclass
class FinetuneRequest:
    """What ``medseg finetune`` and the worker's ``finetune`` request take; checked when built.

    Attributes:
        model: the parent model (never modified).
        cases: ``[image, corrected label]`` pairs.
        steps: optimiser steps (at least 1); ``None`` takes the recipe's.
        lr: peak learning rate (positive); ``None`` takes the recipe's.
        name: the new model's name; ``None`` takes ``MODEL-ft-<date-time>``.
        device: ``auto``, ``cpu``, ``cuda`` (or ``gpu``) or ``mps``.
        force: fine-tune on a correction that disagrees with the model almost everywhere.
    """

    model: str
    cases: list
    steps: int | None = None
    lr: float | None = None
    name: str | None = None
    device: str = "auto"
    force: bool = False

    def __post_init__(self):
        self.model = checks.text("--model", self.model)
        if isinstance(self.cases, (str, bytes, dict)) or not isinstance(self.cases, (list, tuple)) or not self.cases:
            raise InputError(f"finetune: cases {self.cases!r}: give at least one [image, label] pair")
        pairs = []
        for case in self.cases:
            if isinstance(case, (str, bytes)) or not isinstance(case, (list, tuple)) or len(case) != 2:
                raise InputError(f"finetune: case {case!r}: expected an [image, label] pair")
            pairs.append((checks.path("--image", case[0]), checks.path("--label", case[1])))
        self.cases = pairs
        self.steps = None if self.steps is None else checks.count("--steps", self.steps)
        if self.lr is not None:
            self.lr = checks.number("--lr", self.lr)
            if self.lr <= 0:
                raise InputError(f"--lr {self.lr}: the learning rate must be a positive number")
        self.name = None if self.name is None else checks.text("--name", self.name)
        self.device = checks.device("--device", self.device)
        self.force = checks.flag("--force", self.force)

    @classmethod
    def from_dict(cls, args) -> FinetuneRequest:
        """From a worker request's ``args`` (unknown or missing keys are refused)."""
        return checks.request_from_dict(cls, "finetune", args)


def run_finetune(request: FinetuneRequest, progress: Callable | None = None):
    """Fine-tune and save the new model; returns the ``FinetuneResult``."""
    from ..training.finetune import finetune

    return finetune(request.model, request.cases, steps=request.steps, lr=request.lr, name=request.name,
                    device=request.device, progress=progress, force=request.force)


def finetune_outputs(result) -> dict:
    """The ``result`` event's outputs of a fine-tuning run (the same from both faces)."""
    return {"model": str(result.package_dir), "name": result.package_dir.name, "dice_before": result.dice_before,
            "dice_after": result.dice_after, "steps": result.steps, "seconds": result.seconds,
            "per_label": result.per_label}
