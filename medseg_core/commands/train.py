"""``train``: the request, its checks, and the run. The command line recorded in the model card
(its provenance) is part of the request, never passed through the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError
from . import checks


@dataclass
class TrainRequest:
    """What ``medseg train`` takes; checked when built.

    Attributes:
        config: the training config JSON.
        run: the run folder (checkpoints, best package, history).
        data: the nnU-Net raw dataset (optional with a ready ``cache``).
        cache: the preprocessing cache (default ``RUN/cache``).
        split: the split file (default ``splits.json`` beside ``dataset.json``).
        export: also write the final package here.
        resume: continue from ``RUN/last``.
        device: ``auto``, ``cpu``, ``cuda`` (or ``gpu``) or ``mps``.
        steps, time_budget, seed: override the config's (``time_budget`` 0: none, train for the steps).
        preprocess_only: build the cache and stop.
        command: the command line recorded in the card's training record.
    """

    config: str
    run: str
    data: str | None = None
    cache: str | None = None
    split: str | None = None
    export: str | None = None
    resume: bool = False
    device: str = "auto"
    steps: int | None = None
    time_budget: float | None = None
    seed: int | None = None
    preprocess_only: bool = False
    command: str = ""

    def __post_init__(self):
        self.config = checks.path("--config", self.config)
        self.run = checks.path("--run", self.run)
        for name in ("data", "cache", "split", "export"):
            setattr(self, name, checks.optional_path(f"--{name}", getattr(self, name)))
        self.resume = checks.flag("--resume", self.resume)
        self.preprocess_only = checks.flag("--preprocess-only", self.preprocess_only)
        self.device = checks.device("--device", self.device)
        self.steps = None if self.steps is None else checks.count("--steps", self.steps)
        if self.time_budget is not None:
            self.time_budget = checks.number("--time-budget", self.time_budget)
            if self.time_budget < 0:
                raise InputError(f"--time-budget {self.time_budget}: must be 0 (none) or more seconds")
        self.seed = None if self.seed is None else checks.count("--seed", self.seed, minimum=0)
        self.command = str(self.command)


def run_train(request: TrainRequest, progress: str = "bar", callback: Callable | None = None, log=print):
    """Train (or only build the cache); returns the ``TrainResult`` (``None`` for ``preprocess_only``)."""
    from ..training.config import TrainConfig
    from ..training.trainer import train

    config = TrainConfig.read(request.config)
    if request.steps is not None:
        config.steps = request.steps
    if request.time_budget is not None:
        config.time_budget_s = request.time_budget or None
    if request.seed is not None:
        config.seed = request.seed
    if request.preprocess_only:
        from ..training.data import prepare_cache

        prepare_cache(config, request.data, Path(request.cache) if request.cache else Path(request.run) / "cache",
                      request.split)
        return None
    return train(config, request.run, data_dir=request.data, cache_dir=request.cache, output=request.export,
                 device=request.device, resume=request.resume, split_file=request.split, progress=progress,
                 callback=callback, log=log, command=request.command)
