"""Training: sampled patches, the recipe's step (``loop.py``), validation Dice, the best model written
atomically, resumable, mixed precision where bf16 is native, data-parallel under ``torchrun``
(``distributed.py``).

A run folder holds ``last/`` (weights, optimiser and sampler state: what resume needs),
``best/`` (a complete model package, replaced atomically whenever validation improves) and
``history.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.augment import Augmenter
from ..data.preprocess_config import PreprocessConfig
from ..data.sampling import PatchSampler
from ..inference.device import resolve_device, use_bf16
from ..inference.sliding_window import sliding_window_predict
from ..io.atomic import atomic_folder, write_text_atomic
from ..io.terminology import default_color, terminology_for
from ..labels import Label
from ..metrics.overlap import dice_per_value
from ..errors import ModelError
from ..models import ModelCard, find_model, load_package, save_package
from ..models.card import InferenceSpec, NetworkSpec
from ..nets import build_network
from ..nets.slicewise import from_net, to_net, volume_patch
from . import distributed as dd
from .config import TrainConfig
from .data import load_tensors, normalization_for, prepare_cache
from .loop import TrainingLoop
from .recipes import build_recipe
from .schedule import lr_factor

Progress = Callable[..., None]  # (stage, fraction, message="", eta_s=None), see medseg_core.progress


@dataclass
class TrainResult:
    """``net`` is the trained network as this process holds it (the last step, not the best)."""

    package_dir: Path
    best_dice: float
    steps: int
    seconds: float
    net: torch.nn.Module | None = None


class _Clock:
    """How far a run is: the larger of steps done and time used, when a time budget is set."""

    def __init__(self, cfg: TrainConfig, seconds_before: float = 0.0):
        self.cfg, self.t0, self.before = cfg, time.time(), seconds_before

    def elapsed(self) -> float:
        return self.before + time.time() - self.t0

    def fraction(self, step: int) -> float:
        f = step / self.cfg.steps
        if self.cfg.time_budget_s:
            f = max(f, self.elapsed() / self.cfg.time_budget_s)
        return min(1.0, f)


def network_kwargs(cfg: TrainConfig, in_ch: int, n_cls: int) -> dict:
    kw = dict(cfg.network.get("kwargs", {}))
    kw.setdefault("spatial_dims", len(cfg.patch_size))
    kw.update(in_channels=in_ch, out_channels=n_cls)
    if "deep_supervision" not in kw and cfg.network["name"] == "unet":
        kw["deep_supervision"] = cfg.deep_supervision
    return kw


def validate(net: torch.nn.Module, images, labels, num_classes: int, patch, device, spatial_dims: int,
             batch_size: int = 4) -> np.ndarray:
    """Dice per (case, class 1..N-1) on the model grid; NaN where the reference lacks the class.
    Leaves ``net`` in eval mode."""
    net.eval()
    patch = volume_patch(patch, spatial_dims)
    amp = use_bf16(device)

    def fwd(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            logits = net(to_net(torch.from_numpy(batch).to(device), spatial_dims)).logits
        return from_net(logits.float(), spatial_dims).cpu().numpy()

    out = np.full((len(images), num_classes - 1), np.nan)
    for i, (img, lab) in enumerate(zip(images, labels)):
        probs = sliding_window_predict(np.asarray(img, dtype=np.float32), fwd, tuple(patch), num_classes,
                                       batch_size=batch_size)
        for c, value in dice_per_value(probs.argmax(0), np.asarray(lab), range(1, num_classes)).items():
            out[i, c - 1] = value
    return out


def train(config: TrainConfig, run_dir: str | Path, data_dir: str | Path | None = None,
          cache_dir: str | Path | None = None, output: str | Path | None = None, device: str = "auto",
          resume: bool = False, split_file: str | None = None, progress: str = "bar",
          callback: Progress | None = None, log=print, command: str = "") -> TrainResult:
    """Train ``config`` on a dataset (or a prepared cache) and write a model package.

    Args:
        run_dir: where checkpoints, the best package and the history go.
        data_dir: an nnU-Net raw dataset; may be None when ``cache_dir`` already holds it.
        cache_dir: the preprocessing cache (default ``run_dir/cache``).
        output: where the final package is copied (atomically); default ``run_dir/best`` only.
        resume: continue from ``run_dir/last``.
        progress: "bar" (tqdm), or "none"; ``callback`` receives (stage, fraction, message, eta_s).
        command: the command line recorded in the card's training record (its provenance).
    """
    return Trainer(config, run_dir, data_dir, cache_dir, output, device, split_file, progress, callback, log,
                   command).run(resume)


class Trainer:
    """One training run, in the order :meth:`run` calls its parts (arguments as :func:`train`)."""

    def __init__(self, config: TrainConfig, run_dir, data_dir=None, cache_dir=None, output=None, device="auto",
                 split_file=None, progress="bar", callback: Progress | None = None, log=print, command=""):
        self.config, self.run_dir = config, Path(run_dir)
        self.data_dir, self.output, self.split_file = data_dir, output, split_file
        self.cache_dir = Path(cache_dir) if cache_dir else self.run_dir / "cache"
        self.device_name, self.progress, self.callback = device, progress, callback
        self.log, self.command = log, command
        self.step, self.best, self.best_step, self.history = 0, -1.0, 0, []

    def run(self, resume: bool = False) -> TrainResult:
        self.t_start = time.time()
        self._start()
        self._load_data()
        self._build()
        if resume and (self.run_dir / "last" / "state.json").is_file():
            self._resume()
        dd.broadcast_module(self.net)  # every rank starts from rank 0's weights (step_on averages the gradients)
        self.val_images = self.val_labels = None
        if self.info.is_main and self.val_cases:
            # on the CPU, where the sliding window blends; the windows go to the device in turn
            self.val_images, self.val_labels = load_tensors(self.cache_dir, self.val_cases, self.pre,
                                                            torch.device("cpu"))
        self._loop()
        return self._finish()

    # ------------------------------------------------------------------ set-up

    def _start(self) -> None:
        """The device and, under ``torchrun``, the process group; the run folder."""
        self.info = info = dd.from_env()
        dev = resolve_device(self.device_name)
        if info.enabled and dev.type == "cuda":
            dev = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(dev)
        dd.init(info, dev)
        self.dev = dev
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.say = self.log if info.is_main else (lambda *a, **k: None)

    def _load_data(self) -> None:
        """The preprocessed cache (rank 0 builds it), the split and this rank's training tensors."""
        cfg, info = self.config, self.info
        if info.is_main:
            index = prepare_cache(cfg, self.data_dir, self.cache_dir, self.split_file, log=self.say)
        if info.enabled:
            torch.distributed.barrier()
        if not info.is_main:
            index = prepare_cache(cfg, None, self.cache_dir)
        self.ds = ds = index["dataset"]
        self.train_cases, self.val_cases = ds["train"], ds["validation"]
        if cfg.val_cases is not None:
            self.val_cases = self.val_cases[: cfg.val_cases]
        self.label_items = sorted(((v, k) for k, v in ds["labels"].items() if v != 0))
        self.n_cls = 1 + len(self.label_items)
        norm = normalization_for(index, self.cache_dir, self.train_cases)
        # the cache key leaves out what only inference does (straightening an oblique grid)
        self.pre = PreprocessConfig.from_dict({**index["preprocessing"], "normalization": norm,
                                               "resample_oblique": cfg.resample_oblique})
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        my_cases = dd.shard(self.train_cases, info) or self.train_cases
        self.images, self.labels = load_tensors(self.cache_dir, my_cases, self.pre, self.dev)

    def _build(self) -> None:
        """Network, sampler, augmentation, recipe, optimiser, schedule and the loop that steps them."""
        cfg, info = self.config, self.info
        self.net_kwargs = network_kwargs(cfg, len(self.ds["channels"]), self.n_cls)
        self.spatial_dims = self.net_kwargs["spatial_dims"]
        seed = cfg.seed * 1000 + info.rank
        patch = volume_patch(cfg.patch_size, self.spatial_dims)
        self.sampler = PatchSampler(self.images, self.labels, self.n_cls, patch, cfg.fg_fraction, seed=seed)
        spacing = list(reversed(self.pre.spacing)) if self.pre.spacing else None  # (z, y, x) like a patch
        self.augment = Augmenter(cfg.mirror_axes, cfg.mirror_swap, seed=seed + 1, spacing=spacing,
                                 **cfg.augment_kwargs)
        self.net = build_network(cfg.network["name"], **self.net_kwargs).to(self.dev)
        self.parent = self._init_weights() if cfg.init_from else None

        def make_optimizer(params) -> torch.optim.Optimizer:
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

        self.recipe = build_recipe(cfg.recipe, **cfg.recipe_kwargs)
        self.recipe.attach(self.net, make_optimizer)
        self.opt = make_optimizer(self.recipe.parameters(self.net))
        self.clock = _Clock(cfg)
        self.fraction = 0.0  # how far the run is, as the ranks agree (see _loop); the schedule reads it
        sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, self.fraction, cfg.warmup_steps))
        amp = cfg.amp and use_bf16(self.dev)  # on CPUs with native bf16 it about halves a step
        self.loop = TrainingLoop(self.recipe, self.net, self.sampler, self.augment, self.opt, sched, cfg.batch_size,
                                 self.spatial_dims, self.dev, amp)

    def _init_weights(self) -> dict:
        """Start from the weights of ``config.init_from`` (SHA-256 checked); its record for the card."""
        pkg = find_model(self.config.init_from)
        if pkg.card.network.name != self.config.network["name"]:
            raise ModelError(f"{pkg.path}: init_from is a {pkg.card.network.name}, the config trains a "
                             f"{self.config.network['name']}")
        try:
            self.net.load_state_dict(pkg.load_state_dict())
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelError(f"{pkg.path}: init_from weights do not fit the network ({first})") from None
        self.say(f"starting from {pkg.card.name} {pkg.card.version}")
        return {"name": pkg.card.name, "version": pkg.card.version, "weights_sha256": pkg.card.weights.sha256,
                "parent": pkg.card.parent, "how": "training continued on the whole training split"}

    def _resume(self) -> None:
        from safetensors.torch import load_file

        last, rank = self.run_dir / "last", self.info.rank
        self.net.load_state_dict(load_file(str(last / "weights.safetensors"), device=str(self.dev)))
        extra = torch.load(last / "optim.pt", map_location=self.dev, weights_only=True)
        self.opt.load_state_dict(extra["optimizer"])
        self.loop.scheduler.load_state_dict(extra["scheduler"])
        self.recipe.load_state_dict(extra.get("recipe", {}))
        self.sampler.gen.set_state(extra["sampler_rng"][rank % len(extra["sampler_rng"])])
        self.augment.gen.set_state(extra["augment_rng"][rank % len(extra["augment_rng"])])
        state = json.loads((last / "state.json").read_text())
        self.step, self.best, self.history = state["step"], state["best"], state["history"]
        self.best_step = next((h["step"] for h in self.history if h.get("mean_dice") == self.best), 0)
        self.clock = _Clock(self.config, state.get("train_seconds", 0.0))
        self.say(f"resumed at step {self.step} (best validation Dice {self.best:.4f})")

    # ------------------------------------------------------------------ the run

    def _loop(self) -> None:
        cfg, info, dev = self.config, self.info, self.dev
        bar = None
        if self.progress == "bar" and info.is_main:
            from tqdm import tqdm

            bar = tqdm(total=1000, initial=int(1000 * self.clock.fraction(self.step)), desc="train",
                       dynamic_ncols=True, bar_format="{l_bar}{bar}| {elapsed}<{remaining}{postfix}")
        self.recipe.train_mode(self.net)
        t_loop, running = time.time(), None
        # one agreed fraction per step drives the recipe's schedule, the learning rate and the end, so
        # every rank switches stages and stops at the same step, whatever its own clock says
        fraction = fraction0 = dd.agree(self.clock.fraction(self.step), dev)
        done = False
        while not done:
            lv = self.loop.step(self.step, fraction)
            self.step += 1
            fraction = self.fraction = dd.agree(self.clock.fraction(self.step), dev)
            self.loop.advance(self.step)
            done = fraction >= 1.0
            running = lv if running is None else 0.98 * running + 0.02 * lv
            eta = (time.time() - t_loop) / max(fraction - fraction0, 1e-9) * (1 - fraction)
            if bar is not None:
                bar.n = int(1000 * fraction)
                bar.set_postfix(step=self.step, loss=f"{running:.3f}", best=f"{max(self.best, 0):.3f}")
            if self.callback is not None and info.is_main:
                self.callback("train", fraction, f"step {self.step} loss {running:.4f}", eta)
            if self.step % cfg.val_every == 0 or done:
                self._checkpoint(running, done)
        if bar is not None:
            bar.close()

    def _checkpoint(self, running: float, done: bool) -> None:
        """Validation (rank 0), the best package when it improves, the resume point and the history."""
        cfg, info = self.config, self.info
        if info.is_main and self.val_images:
            dice = validate(self.net, self.val_images, self.val_labels, self.n_cls, cfg.patch_size, self.dev,
                            self.spatial_dims, batch_size=4 if self.spatial_dims == 3 else 32)
            self.recipe.train_mode(self.net)
            per_class = np.nanmean(dice, axis=0)
            mean = float(np.nanmean(per_class))
            self.history.append({"step": self.step, "loss": running, "mean_dice": mean, **self.recipe.state(),
                                 "per_class": {k: (None if np.isnan(d) else round(float(d), 4))
                                               for (v, k), d in zip(self.label_items, per_class)},
                                 "seconds": round(time.time() - self.t_start, 1)})
            self.say(f"step {self.step}: loss {running:.4f}, validation Dice {mean:.4f} "
                     + " ".join(f"{k}={d:.3f}" for (v, k), d in zip(self.label_items, per_class)))
            if mean > self.best:
                self.best, self.best_step = mean, self.step
                self._save_best()
        elif info.is_main and not self.val_images and done:
            self.best, self.best_step = 0.0, self.step
            self._save_best()
        self._save_last()
        if info.is_main:
            write_text_atomic(self.run_dir / "history.json", json.dumps(self.history, indent=1))

    def _save_best(self) -> None:
        save_package(self._card(), self.net.state_dict(), self.run_dir / "best", half=self.config.half_weights,
                     overwrite=True)

    def _save_last(self) -> None:
        """The resume point; every rank's sampler state is gathered, only rank 0 writes."""
        from safetensors.torch import save_file

        info = self.info
        rng_s, rng_a = [self.sampler.gen.get_state()], [self.augment.gen.get_state()]
        if info.enabled:
            gs, ga = [None] * info.world_size, [None] * info.world_size
            torch.distributed.all_gather_object(gs, rng_s[0])
            torch.distributed.all_gather_object(ga, rng_a[0])
            rng_s, rng_a = gs, ga
        if not info.is_main:
            return
        with atomic_folder(self.run_dir / "last") as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()},
                      str(tmp / "weights.safetensors"))
            torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.loop.scheduler.state_dict(),
                        "sampler_rng": rng_s, "augment_rng": rng_a, "recipe": self.recipe.state_dict()},
                       tmp / "optim.pt")
            (tmp / "state.json").write_text(json.dumps({"step": self.step, "best": self.best, "history": self.history,
                                                         "train_seconds": self.clock.elapsed()}))

    def _card(self) -> ModelCard:
        cfg, ds = self.config, self.ds
        labels = [Label(v, k, default_color(k, v - 1), terminology_for(k)) for v, k in self.label_items]
        return ModelCard(
            name=cfg.name, version=cfg.version, description=cfg.description,
            modality=ds["channels"][0], channels=ds["channels"], labels=labels,
            preprocessing=self.pre,
            network=NetworkSpec(cfg.network["name"], dict(self.net_kwargs)),
            inference=InferenceSpec(list(cfg.patch_size), list(cfg.mirror_axes or []),
                                    [list(p) for p in cfg.mirror_swap or []]),
            training={"dataset": ds["name"], "train_cases": len(self.train_cases),
                      "validation_cases": len(self.val_cases), "config": cfg.to_dict(), "steps": self.step,
                      "seconds": round(self.clock.elapsed(), 1), "device": str(self.dev),
                      "world_size": self.info.world_size, "command": self.command},
            validation={"during_training": {"mean_dice_model_grid": round(self.best, 4), "step": self.best_step}},
            small_organs=list(cfg.small_organs), parent=self.parent)

    def _finish(self) -> TrainResult:
        """The final package copied to ``output`` (rank 0), the process group closed."""
        result_dir = self.run_dir / "best"
        if self.info.is_main and self.output is not None:
            pkg = load_package(result_dir)
            card = pkg.card
            card.training["seconds"] = round(time.time() - self.t_start, 1)
            save_package(card, pkg.load_state_dict(), self.output, half=self.config.half_weights, overwrite=True)
            result_dir = Path(self.output)
        if self.info.enabled:
            torch.distributed.barrier()
        dd.shutdown(self.info)
        return TrainResult(result_dir, self.best, self.step, time.time() - self.t_start, self.net)
