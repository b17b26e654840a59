"""Each paper's own claim, tested on synthetic phantoms on the CPU (2D networks on slices).

Five comparisons, each two training runs that differ only in the claimed ingredient (same
network size where the claim allows, same data, steps, patch, batch, learning rate and seed):

1. ``nsfl``: PGD-UNet's noise-suppression focal loss against focal loss (both + Dice), trained on
   phantoms whose *tumour* contour is perturbed (``label_noise``, a second observer), validated on
   the clean contours. Claim: NSFL is more robust to the noisy boundary (higher tumour Dice).
2. ``godc``: GODC against per-sample soft Dice, both alone (no cross-entropy). Claim: GODC
   converges faster (fewer steps to validation mean Dice 0.3, 0.4 and 0.5; judged at 0.5).
3. ``focusnet``: FocusNet's four stages against its S-Net alone for the same number of steps.
   Claim: the SOL/SOS path segments the small organs (the glands) better.
4. ``lsnet``: L-SNet against a plain U-Net of about the same size on a single small target whose
   size varies sixfold between cases. Claim: localise-then-segment handles the scale variation
   better.
5. ``dan``: the difficulty-aware network trained adversarially (FDice + FCE + adversarial term)
   against the same network trained with the hybrid Dice + CE loss. Claim: higher Dice.

Figures: validation Dice per class at every ``val_every`` steps, the final mean, steps to the
Dice level (claim 2) and seconds. Nothing is asserted: the verdict is printed and recorded in
``docs/results.md``.

``--hard`` makes every task harder, so that plain networks do not saturate: image noise of 45 HU
instead of 20 (the tumour's 20-25 HU contrast falls below the noise), glands at 0.75 of their
radius (about 25 voxels each instead of 57), 20 phantoms instead of 10 (4 validation cases),
and for the scale claim a tenfold size range (radius 1.5 to 15 voxels) at half the contrast,
with distractors exactly as bright as the target.

Usage::

    python benchmarks/claims.py [--only nsfl,godc,...] [--steps 300] [--seeds 0] [--hard] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medseg_core.data.phantom import make_phantom, write_phantom_dataset  # noqa: E402
from medseg_core.training.config import TrainConfig  # noqa: E402
from medseg_core.training.trainer import train  # noqa: E402

SHAPE = (24, 64, 64)
UNET_2D = {"name": "unet", "kwargs": {"spatial_dims": 2, "features": [16, 32, 64, 128], "norm": "instance"}}


def base_config(**kw) -> TrainConfig:
    cfg = dict(name="claim", network=UNET_2D, patch_size=[64, 64], batch_size=8, steps=300, lr=3e-3,
               warmup_steps=20, val_every=25, seed=0, half_weights=False, deep_supervision=False)
    cfg.update(kw)
    return TrainConfig(**cfg)


def run(cfg: TrainConfig, data: Path, work: Path) -> dict:
    """Trains one configuration; returns its validation history and seconds."""
    t = time.perf_counter()
    run_dir = work / f"{cfg.name}-{cfg.seed}"
    train(cfg, run_dir, data_dir=data, cache_dir=work / f"cache-{data.name}", device="cpu", progress="none",
          log=lambda *a: None)
    history = json.loads((run_dir / "history.json").read_text())
    return {"seconds": round(time.perf_counter() - t, 1),
            "history": [{"step": h["step"], "mean": round(h["mean_dice"], 4), "per_class": h["per_class"]}
                        for h in history]}


def final(res: dict, key: str = "mean") -> float:
    h = res["history"][-1]
    return h["mean"] if key == "mean" else h["per_class"][key]


def last_k(res: dict, key: str, k: int = 3) -> float:
    """Mean over the last k validations (steadier than the last one alone)."""
    rows = res["history"][-k:]
    vals = [r["mean"] if key == "mean" else r["per_class"][key] for r in rows]
    return float(np.mean([v for v in vals if v is not None]))


def steps_to(res: dict, level: float) -> int | None:
    return next((h["step"] for h in res["history"] if h["mean"] >= level), None)


# ------------------------------------------------------------------------------- datasets

HARD_PHANTOM = {"noise_sd": 45.0, "gland_scale": 0.75}


def phantom_kwargs(hard: bool) -> dict:
    """``make_phantom`` arguments of the claims' phantoms (easy or hard)."""
    return {"shape": SHAPE, **(HARD_PHANTOM if hard else {})}


def phantoms(folder: Path, hard: bool = False, seed: int = 5, **kw) -> Path:
    return write_phantom_dataset(folder, 20 if hard else 10, seed=seed, **phantom_kwargs(hard), **kw)


def noisy_phantoms(folder: Path, noise: float, hard: bool = False, seed: int = 5) -> Path:
    """Tumour contours perturbed in the training cases; clean in the validation cases."""
    data = phantoms(folder, hard, seed, label_noise=noise)
    for case in json.loads((data / "splits.json").read_text())["validation"]:
        i = int(case.split("_")[1])
        case_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        clean = make_phantom(seed=case_seed, **phantom_kwargs(hard)).label
        sitk.WriteImage(clean, str(data / "labelsTr" / f"{case}.nii.gz"), useCompression=True)
    return data


def scale_targets(folder: Path, hard: bool = False, n: int = 24, seed: int = 0) -> Path:
    """One elliptic target per case, radius 3 to 18 voxels (sixfold), anywhere in a noisy field
    with two brighter distractor bars; 8 slices of 96 x 96, 1 mm.

    ``hard``: radius 1.5 to 15 (tenfold), target +40 over noise of SD 35, bars as bright as the
    target (only their shape tells them apart).
    """
    r_min, r_max, noise, contrast, bar = (1.5, 15.0, 35, 40, 40) if hard else (3.0, 18.0, 25, 80, 120)
    rng = np.random.default_rng(seed)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    cases = []
    yy, xx = np.mgrid[0:96, 0:96]
    for i in range(n):
        r = r_min + (r_max - r_min) * (i % 6) / 5 + rng.uniform(-0.5, 0.5) * r_min / 3
        cy, cx = rng.uniform(r + 4, 96 - r - 4, size=2)
        ratio = rng.uniform(0.7, 1.0)
        inside = ((yy - cy) / r) ** 2 + ((xx - cx) / (r * ratio)) ** 2 <= 1
        img = rng.normal(0, noise, (8, 96, 96))
        img += 60 * np.sin(xx / 9.0 + rng.uniform(0, 6))[None] * 0.5  # a smooth background pattern
        for _ in range(2):  # distractors: bright bars, not targets
            y0, x0 = rng.integers(0, 80, size=2)
            img[:, y0:y0 + 4, x0:x0 + 16] += bar
        img[:, inside] += contrast
        lab = np.repeat(inside[None], 8, axis=0).astype(np.uint8)
        case = f"scale_{i:03d}"
        for arr, path in ((img.astype(np.int16), folder / "imagesTr" / f"{case}_0000.nii.gz"),
                          (lab, folder / "labelsTr" / f"{case}.nii.gz")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing((1.0, 1.0, 2.0))
            sitk.WriteImage(im, str(path), useCompression=True)
        cases.append(case)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "Target": 1},
                                                     "numTraining": n, "file_ending": ".nii.gz", "name": "Scale"}))
    val = [c for j, c in enumerate(cases) if j % 4 == 3]  # every size appears in both splits
    (folder / "splits.json").write_text(json.dumps({"train": [c for c in cases if c not in val], "validation": val}))
    return folder


# ------------------------------------------------------------------------------- claims

def claim_nsfl(work: Path, steps: int, seed: int, hard: bool = False) -> dict:
    data = noisy_phantoms(work / "NoisyPhantom", noise=0.8, hard=hard)
    switch = int(0.4 * steps)
    runs = {
        "focal": run(base_config(name="focal", recipe="focal_dice", steps=steps, seed=seed), data, work),
        "nsfl": run(base_config(name="nsfl", recipe="pgd_nsfl", recipe_kwargs={"switch_step": switch},
                                steps=steps, seed=seed), data, work),
    }
    a, b = last_k(runs["focal"], "Tumour"), last_k(runs["nsfl"], "Tumour")
    return {"runs": runs, "tumour_dice": {"focal": round(a, 4), "nsfl": round(b, 4)},
            "holds": b > a, "summary": f"tumour Dice (clean reference, mean of last 3 validations): focal {a:.3f}, NSFL {b:.3f}"}


def claim_godc(work: Path, steps: int, seed: int, hard: bool = False, levels=(0.3, 0.4, 0.5)) -> dict:
    data = phantoms(work / "Phantom", hard)
    runs = {
        "dice": run(base_config(name="dice", recipe="dice_ce", recipe_kwargs={"lambda_ce": 0.0, "batch": False},
                                steps=steps, seed=seed), data, work),
        "godc": run(base_config(name="godc", recipe="godc", recipe_kwargs={"ce_weight": 0.0}, steps=steps, seed=seed),
                    data, work),
    }
    s = {str(level): {k: steps_to(v, level) for k, v in runs.items()} for level in levels}
    judged = s[str(levels[-1])]
    holds = judged["godc"] is not None and (judged["dice"] is None or judged["godc"] < judged["dice"])
    return {"runs": runs, "steps_to_level": s, "holds": holds,
            "summary": "steps to mean Dice " + ", ".join(f"{lv}: Dice {v['dice']} / GODC {v['godc']}" for lv, v in s.items())
                       + f"; final mean {final(runs['dice']):.3f} vs {final(runs['godc']):.3f}"}


def claim_focusnet(work: Path, steps: int, seed: int, hard: bool = False) -> dict:
    data = phantoms(work / "Phantom", hard)
    net = {"name": "focusnet", "kwargs": {"spatial_dims": 2, "small_organs": [4, 5], "roi_sizes": [[24, 24], [24, 24]],
                                          "features": [16, 32], "aspp_growth": 16, "sos_features": [16, 16]}}
    runs = {
        "snet_only": run(base_config(name="snet", network=net, recipe="focusnet",
                                     recipe_kwargs={"stage_fractions": [1, 0, 0, 0]}, steps=steps, seed=seed,
                                     small_organs=["LeftGland", "RightGland"]), data, work),
        "focusnet": run(base_config(name="focusnet", network=net, recipe="focusnet", steps=steps, seed=seed,
                                    small_organs=["LeftGland", "RightGland"]), data, work),
    }
    g = {k: round((final(v, "LeftGland") + final(v, "RightGland")) / 2, 4) for k, v in runs.items()}
    # Ablation: the FocusNet run's own S-Net (stage 1 forward, the SOL/SOS path off), same weights.
    own = snet_part_dice(work / f"focusnet-{seed}", work / f"cache-{data.name}", data)
    g["focusnet_snet_part"] = round((own["LeftGland"] + own["RightGland"]) / 2, 4)
    return {"runs": runs, "gland_dice": g, "focusnet_snet_part_per_class": own, "holds": g["focusnet"] > g["snet_only"],
            "summary": f"glands' Dice at the end: S-Net alone {g['snet_only']:.3f}, FocusNet {g['focusnet']:.3f} "
                       f"(its own S-Net without SOL/SOS {g['focusnet_snet_part']:.3f})"}


def snet_part_dice(run_dir: Path, cache: Path, data: Path) -> dict:
    """Validation Dice per class of a FocusNet run's last weights with only its S-Net running."""
    import torch
    from safetensors.torch import load_file

    from medseg_core.models.package import load_package
    from medseg_core.training.data import load_tensors
    from medseg_core.training.trainer import validate

    pkg = load_package(run_dir / "best")
    net = pkg.build("cpu")
    net.load_state_dict(load_file(str(run_dir / "last" / "weights.safetensors")))
    net.set_stage(1)
    val = json.loads((data / "splits.json").read_text())["validation"]
    images, labels = load_tensors(cache, val, pkg.card.preprocessing, torch.device("cpu"))
    names = [lab.name for lab in pkg.card.labels]
    dice = validate(net, images, labels, len(names) + 1, pkg.card.patch_size, torch.device("cpu"), 2)
    return {name: round(float(np.nanmean(dice[:, i])), 4) for i, name in enumerate(names)}


def claim_lsnet(work: Path, steps: int, seed: int, hard: bool = False) -> dict:
    data = scale_targets(work / "Scale", hard)
    unet = {"name": "unet", "kwargs": {"spatial_dims": 2, "features": [16, 32, 64, 128], "norm": "instance"}}
    lsnet = {"name": "lsnet", "kwargs": {"spatial_dims": 2, "lnet_features": [16, 32, 64], "snet_features": [16, 32, 64],
                                         "roi_size": 48, "snet_feature_channels": 8}}
    runs = {
        "unet": run(base_config(name="unet", network=unet, patch_size=[96, 96], steps=steps, seed=seed), data, work),
        "lsnet": run(base_config(name="lsnet", network=lsnet, recipe="lsnet", patch_size=[96, 96], steps=steps,
                                 seed=seed), data, work),
    }
    d = {k: round(last_k(v, "Target"), 4) for k, v in runs.items()}
    return {"runs": runs, "target_dice": d, "holds": d["lsnet"] > d["unet"],
            "summary": f"target Dice (mean of last 3 validations): U-Net {d['unet']:.3f}, L-SNet {d['lsnet']:.3f}"}


def claim_dan(work: Path, steps: int, seed: int, hard: bool = False) -> dict:
    data = phantoms(work / "Phantom", hard)
    net = {"name": "dan", "kwargs": {"spatial_dims": 2, "features": [16, 32, 64, 128],
                                     "confidence_features": [8, 16, 32, 64]}}
    runs = {
        "hybrid": run(base_config(name="hybrid", network=net, recipe="dice_ce", steps=steps, seed=seed), data, work),
        "dan": run(base_config(name="dan", network=net, recipe="dan", steps=steps, seed=seed), data, work),
    }
    d = {k: round(last_k(v, "mean"), 4) for k, v in runs.items()}
    return {"runs": runs, "mean_dice": d, "holds": d["dan"] > d["hybrid"],
            "summary": f"mean Dice (last 3 validations): hybrid Dice+CE {d['hybrid']:.3f}, DAN {d['dan']:.3f}"}


CLAIMS = {"nsfl": claim_nsfl, "godc": claim_godc, "focusnet": claim_focusnet, "lsnet": claim_lsnet, "dan": claim_dan}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(CLAIMS), help="comma-separated subset of " + ", ".join(CLAIMS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; each claim runs once per seed")
    ap.add_argument("--hard", action="store_true", help="noisier images, smaller glands, wider size range")
    ap.add_argument("--json", help="write all figures here")
    a = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {a.steps}, seeds {a.seeds}, "
          f"{'hard' if a.hard else 'easy'} phantoms", flush=True)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.only.split(","):
            out[name] = []
            for seed in (int(s) for s in a.seeds.split(",")):
                work = Path(tmp) / f"{name}-{seed}"
                t = time.perf_counter()
                res = CLAIMS[name](work, a.steps, seed, hard=a.hard)
                res["seconds"] = round(time.perf_counter() - t, 1)
                out[name].append(res)
                print(f"{name} (seed {seed}, {res['seconds']} s): {res['summary']} -> "
                      f"{'holds' if res['holds'] else 'does not hold'}", flush=True)
            if len(out[name]) > 1:
                print(f"{name}: holds in {sum(r['holds'] for r in out[name])} of {len(out[name])} seeds", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
