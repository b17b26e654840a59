"""The training loop: sampled patches, Dice + CE, validation Dice, best model written atomically,
resumable, mixed precision on CUDA, data-parallel under ``torchrun`` (``distributed.py``).

A run folder holds ``last/`` (weights, optimiser and sampler state: what resume needs),
``best/`` (a complete model package, replaced atomically whenever validation improves) and
``history.json``.
"""

from __future__ import annotations

import json
import os
import shutil
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
from ..io.terminology import default_color, terminology_for
from ..labels import Label
from ..metrics.overlap import dice_per_value
from ..models import ModelCard, load_package, save_package
from ..nets import build_network
from . import distributed as dd
from .config import TrainConfig
from .data import load_tensors, normalization_for, prepare_cache
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


def _network_kwargs(cfg: TrainConfig, in_ch: int, n_cls: int) -> dict:
    kw = dict(cfg.network.get("kwargs", {}))
    kw.setdefault("spatial_dims", len(cfg.patch_size))
    kw.update(in_channels=in_ch, out_channels=n_cls)
    if "deep_supervision" not in kw and cfg.network["name"] == "unet":
        kw["deep_supervision"] = cfg.deep_supervision
    return kw


def validate(net: torch.nn.Module, images, labels, num_classes: int, patch, device, spatial_dims: int,
             batch_size: int = 4) -> np.ndarray:
    """Dice per (case, class 1..N-1) on the model grid; NaN where the reference lacks the class."""
    net.eval()
    if spatial_dims == 2:
        fwd = lambda b: net(b[:, :, 0]).logits[:, :, None]  # noqa: E731
        patch = (1,) + tuple(patch)
    else:
        fwd = lambda b: net(b).logits  # noqa: E731
    out = np.full((len(images), num_classes - 1), np.nan)
    for i, (img, lab) in enumerate(zip(images, labels)):
        amp = use_bf16(device)
        probs = sliding_window_predict(img, fwd, tuple(patch), num_classes, batch_size=batch_size, device=device,
                                       accumulate_device=device, amp=amp)
        for c, value in dice_per_value(probs.argmax(0), lab, range(1, num_classes)).items():
            out[i, c - 1] = value
    net.train()
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
    t_start = time.time()
    info = dd.from_env()
    dev = resolve_device(device)
    if info.enabled and dev.type == "cuda":
        dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    dd.init(info, dev)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir else run_dir / "cache"
    say = log if info.is_main else (lambda *a, **k: None)
    if info.is_main:
        index = prepare_cache(config, data_dir, cache_dir, split_file, log=say)
    if info.enabled:
        torch.distributed.barrier()
    if not info.is_main:
        index = prepare_cache(config, None, cache_dir)
    ds = index["dataset"]
    train_cases, val_cases = ds["train"], ds["validation"]
    if config.val_cases is not None:
        val_cases = val_cases[: config.val_cases]
    label_items = sorted(((v, k) for k, v in ds["labels"].items() if v != 0))
    n_cls = 1 + len(label_items)
    pre = PreprocessConfig.from_dict({**index["preprocessing"], "normalization": normalization_for(index, cache_dir, train_cases)})

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    my_cases = dd.shard(train_cases, info) or train_cases
    images, labels = load_tensors(cache_dir, my_cases, pre, dev)
    net_kwargs = _network_kwargs(config, len(ds["channels"]), n_cls)
    spatial_dims = net_kwargs["spatial_dims"]
    patch = tuple(config.patch_size) if spatial_dims == 3 else (1,) + tuple(config.patch_size)
    sampler = PatchSampler(images, labels, n_cls, patch, config.fg_fraction, seed=config.seed * 1000 + info.rank)
    augment = Augmenter(config.mirror_axes, config.mirror_swap, seed=config.seed * 1000 + info.rank + 1)
    net = build_network(config.network["name"], **net_kwargs).to(dev)

    def make_optimizer(params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    recipe = build_recipe(config.recipe, **config.recipe_kwargs)
    recipe.attach(net, make_optimizer)
    opt = make_optimizer(recipe.parameters(net))
    clock = _Clock(config)
    progress_now = {"fraction": 0.0}  # how far the run is, as the ranks agree (see the loop)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, progress_now["fraction"], config.warmup_steps))
    step, best, history = 0, -1.0, []
    last = run_dir / "last"
    if resume and (last / "state.json").is_file():
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(last / "weights.safetensors"), device=str(dev)))
        extra = torch.load(last / "optim.pt", map_location=dev, weights_only=True)
        opt.load_state_dict(extra["optimizer"])
        sched.load_state_dict(extra["scheduler"])
        recipe.load_state_dict(extra.get("recipe", {}))
        sampler.gen.set_state(extra["sampler_rng"][info.rank % len(extra["sampler_rng"])])
        augment.gen.set_state(extra["augment_rng"][info.rank % len(extra["augment_rng"])])
        state = json.loads((last / "state.json").read_text())
        step, best, history = state["step"], state["best"], state["history"]
        clock = _Clock(config, state.get("train_seconds", 0.0))
        say(f"resumed at step {step} (best validation Dice {best:.4f})")
    dd.broadcast_module(net)  # every rank starts from rank 0's weights (step_on averages the gradients)
    val_images = val_labels = None
    if info.is_main and val_cases:
        val_images, val_labels = load_tensors(cache_dir, val_cases, pre, dev)

    def make_card() -> ModelCard:
        labels_out = [Label(v, k, default_color(k, v - 1), terminology_for(k)) for v, k in label_items]
        return ModelCard(
            name=config.name, version=config.version, description=config.description,
            modality=ds["channels"][0], channels=ds["channels"], labels=labels_out,
            preprocessing=pre.to_dict(), patch_size=list(config.patch_size),
            network={"name": config.network["name"], "kwargs": {k: v for k, v in net_kwargs.items()}},
            training={"dataset": ds["name"], "train_cases": len(train_cases), "validation_cases": len(val_cases),
                      "config": config.to_dict(), "steps": step, "seconds": round(clock.elapsed(), 1),
                      "device": str(dev), "world_size": info.world_size,
                      "command": command},
            validation={"during_training": {"mean_dice_model_grid": round(best, 4), "step": best_step}},
            small_organs=list(config.small_organs))

    def save_last() -> None:
        """The resume point; every rank's sampler state is gathered, only rank 0 writes."""
        from safetensors.torch import save_file

        rng_s, rng_a = [sampler.gen.get_state()], [augment.gen.get_state()]
        if info.enabled:
            gs, ga = [None] * info.world_size, [None] * info.world_size
            torch.distributed.all_gather_object(gs, rng_s[0])
            torch.distributed.all_gather_object(ga, rng_a[0])
            rng_s, rng_a = gs, ga
        if not info.is_main:
            return
        tmp = run_dir / ".last.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(tmp / "weights.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "sampler_rng": rng_s,
                    "augment_rng": rng_a, "recipe": recipe.state_dict()}, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "best": best, "history": history,
                                                     "train_seconds": clock.elapsed()}))
        old = run_dir / ".last.old"
        shutil.rmtree(old, ignore_errors=True)
        if last.exists():
            os.replace(last, old)
        os.replace(tmp, last)
        shutil.rmtree(old, ignore_errors=True)

    best_step = next((h["step"] for h in history if h.get("mean_dice") == best), 0)
    bar = None
    if progress == "bar" and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=1000, initial=int(1000 * clock.fraction(step)), desc="train", dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| {elapsed}<{remaining}{postfix}")
    amp = config.amp and use_bf16(dev)  # on CPUs with native bf16 it about halves a step
    net.train()
    t_loop, running = time.time(), None
    # one agreed fraction per step drives the recipe's schedule, the learning rate and the end, so
    # every rank switches stages and stops at the same step, whatever its own clock says
    fraction = fraction0 = dd.agree(clock.fraction(step), dev)
    done = False
    while not done:
        x, y, ann = sampler.sample(config.batch_size)
        x, y = augment(x, y)
        if spatial_dims == 2 and x.ndim == 5:
            x, y = x[:, :, 0], y[:, 0]
        recipe.before_step(step, fraction)
        loss = recipe.train_step(net, x, y, ann, opt,
                                 lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp))
        dd.broadcast_module(net, buffers_only=True)  # rank 0's batch-norm statistics, as DDP keeps them
        step += 1
        fraction = progress_now["fraction"] = dd.agree(clock.fraction(step), dev)
        sched.step()
        recipe.after_step(step)
        done = fraction >= 1.0
        lv = float(loss.detach())
        running = lv if running is None else 0.98 * running + 0.02 * lv
        eta = (time.time() - t_loop) / max(fraction - fraction0, 1e-9) * (1 - fraction)
        if bar is not None:
            bar.n = int(1000 * fraction)
            bar.set_postfix(step=step, loss=f"{running:.3f}", best=f"{max(best, 0):.3f}")
        if callback is not None and info.is_main:
            callback("train", fraction, f"step {step} loss {running:.4f}", eta)
        if step % config.val_every == 0 or done:
            if info.is_main and val_images:
                dice = validate(net, val_images, val_labels, n_cls, config.patch_size, dev, spatial_dims,
                                batch_size=4 if spatial_dims == 3 else 32)
                per_class = np.nanmean(dice, axis=0)
                mean = float(np.nanmean(per_class))
                history.append({"step": step, "loss": running, "mean_dice": mean, **recipe.state(),
                                "per_class": {k: (None if np.isnan(d) else round(float(d), 4))
                                              for (v, k), d in zip(label_items, per_class)},
                                "seconds": round(time.time() - t_start, 1)})
                say(f"step {step}: loss {running:.4f}, validation Dice {mean:.4f} "
                    + " ".join(f"{k}={d:.3f}" for (v, k), d in zip(label_items, per_class)))
                if mean > best:
                    best, best_step = mean, step
                    save_package(make_card(), net.state_dict(), run_dir / "best", half=config.half_weights,
                                 overwrite=True)
            elif info.is_main and not val_images and done:
                best, best_step = 0.0, step
                save_package(make_card(), net.state_dict(), run_dir / "best", half=config.half_weights, overwrite=True)
            save_last()
            if info.is_main:
                (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    if bar is not None:
        bar.close()
    result_dir = run_dir / "best"
    if info.is_main and output is not None:
        pkg = load_package(result_dir)
        card = pkg.card
        card.training["seconds"] = round(time.time() - t_start, 1)
        save_package(card, pkg.load_state_dict(), output, half=config.half_weights, overwrite=True)
        result_dir = Path(output)
    if info.enabled:
        torch.distributed.barrier()
    dd.shutdown(info)
    return TrainResult(result_dir, best, step, time.time() - t_start, net)
