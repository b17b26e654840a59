"""Issue 17's adaptation benchmark: does fine-tuning teach a clinic's contouring style to the
*next* patients, and forget nothing else?

Clinic styles are simulated on the HNOAR reference contours, each on its own organs:

- ``margin``: the parotids drawn one voxel wider in-plane (a margin);
- ``cut``: the spinal cord cut at a fixed level, its top 20 mm left out;
- ``merge``: the brainstem drawn to include the spinal cord's top 15 mm (a structure with its
  neighbour; the cord, which loses that part, is then scored with neither group);
- ``tiny``: the larynx's most superior slice left out (a few dozen voxels: a correction that
  should cost nothing elsewhere).

For a style, the corrections are what a clinician would send back: the default model's result on
a case with only the styled organs redrawn in the style (the other organs left as the model drew
them). The parent is fine-tuned (``medseg finetune``'s defaults) on K = 1, 3, 5 corrected cases
(the first validation cases), and each model is scored on ``--new`` other validation cases: the
styled organs against the styled contours, the other organs against the original ones. The
*gap* is the parent's own Dice against unstyled contours minus its Dice against styled ones;
``closed`` is how much of it a fine-tune closed (the issue's targets: half after K = 1, 90 %
after K = 3; the other organs lose at most 0.003). ``--chain N`` also fine-tunes the fine-tuned
model again on the next case, N generations, and reports the organs never corrected.

Each fine-tune prints its steps, precision, the organs it routes to the fine-tuned copy and its
seconds by stage. All runs use a temporary ``MEDSEG_HOME``. Needs ``../shared/data/HNOAR``; exits
0 with a message when it is absent. On 2 cores with native bf16, one style with ``--k 1 --new 4``
takes about 2 minutes, ``--styles margin --k 1,3,5 --new 4 --chain 5`` about 12 (float32 about
twice as long).

    python benchmarks/adaptation.py [--styles margin,cut,merge,tiny] [--k 1,3,5] [--new 6] [--chain 0]
                                    [--singles 1] [--style-the-model]

``--singles N`` fine-tunes K = 1 N times, each on one of the first N validation cases, and reports
their mean: one case's share of a small gap swings widely with the case and the precision.

``--style-the-model`` draws each correction as the style applied to the model's own result (its
parotids grown, its cord cut or merged into its brainstem) instead of the styled organs redrawn
from the reference: the reference's own case-to-case variation then stays out of what is taught.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "HNOAR"
MODEL = "hn-oar-unet"
STYLED = {"margin": ["RightParotid", "LeftParotid"], "cut": ["SpinalCord"], "merge": ["Brainstem"], "tiny": ["Larynx"]}
NOT_SCORED = {"merge": ["SpinalCord"]}
"""Organs a style changes besides its styled ones: neither styled nor left alone."""


def styled_labels(label: np.ndarray, style: str, values: dict[str, int], reference) -> np.ndarray:
    """The reference labelmap (z, y, x) of the image ``reference`` drawn in ``style``."""
    from scipy import ndimage

    out = label.copy()
    if style == "margin":
        struct = np.zeros((3, 3, 3), bool)
        struct[1] = ndimage.generate_binary_structure(2, 1)  # in-plane only
        for name in STYLED["margin"]:
            v = values[name]
            grown = ndimage.binary_dilation(label == v, struct) & (out == 0)
            out[grown] = v
    elif style in ("cut", "merge"):
        v = values["SpinalCord"]
        zs = np.nonzero((label == v).any(axis=(1, 2)))[0]
        if zs.size:
            # which end of the slice axis is superior (LPS: +z), from the image's direction
            up = np.reshape(reference.GetDirection(), (3, 3))[2, 2] > 0
            n = int(round((20.0 if style == "cut" else 15.0) / reference.GetSpacing()[2]))
            region = out[zs.max() - n + 1:zs.max() + 1] if up else out[zs.min():zs.min() + n]
            region[region == v] = 0 if style == "cut" else values["Brainstem"]
    elif style == "tiny":
        v = values["Larynx"]
        zs = np.nonzero((label == v).any(axis=(1, 2)))[0]
        if zs.size:
            up = np.reshape(reference.GetDirection(), (3, 3))[2, 2] > 0
            top = out[zs.max()] if up else out[zs.min()]
            top[top == v] = 0
    else:
        raise ValueError(style)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """The project's Dice (``metrics.dice``), None where the reference holds no voxel."""
    from medseg_core.metrics import dice as dice_

    return None if not b.any() else float(dice_(a, b))


def score(pred: np.ndarray, original: np.ndarray, styled: np.ndarray, style: str, values: dict[str, int]) -> dict:
    """Per organ Dice: styled organs against ``styled`` (and against ``original``), the others
    against ``original``."""
    out = {}
    for name, v in values.items():
        if name in STYLED[style]:
            out[name + " (styled)"] = dice(pred == v, styled == v)
            out[name + " (unstyled)"] = dice(pred == v, original == v)
        elif name not in NOT_SCORED.get(style, []):
            out[name] = dice(pred == v, original == v)
    return out


def mean_over(rows: list[dict], keys) -> float:
    vals = [r[k] for r in rows for k in keys if r.get(k) is not None]
    return float(np.mean(vals)) if vals else float("nan")


def share(closed: float, table: bool = False) -> str:
    """How much of the gap a fine-tune closed, or that there was none (the style does not lower
    the parent's Dice on these new cases: nothing to close)."""
    if not np.isfinite(closed):
        return "no gap" if table else "the style leaves the parent no gap to close"
    return f"{100 * closed:.0f} %" if table else f"closed {100 * closed:.0f} % of the gap"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--styles", default="margin,cut,merge,tiny")
    ap.add_argument("--k", default="1,3,5")
    ap.add_argument("--new", type=int, default=6, help="new validation cases scored")
    ap.add_argument("--chain", type=int, default=0, help="generations of fine-tunes on one case each")
    ap.add_argument("--fit-cases", type=int, default=5,
                    help="validation cases kept for corrections (at least max K and --chain); the new ones follow")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--singles", type=int, default=1,
                    help="K = 1 fine-tuned this many times, each on one of the first fit cases; their mean is reported")
    ap.add_argument("--style-the-model", action="store_true",
                    help="corrections apply the style to the model's own result (its brainstem grown into its cord, "
                         "...) instead of redrawing the styled organs from the reference contours")
    ap.add_argument("--json", default=None)
    ap.add_argument("--finetune-args", default="{}",
                    help="JSON of finetune() keyword arguments, e.g. '{\"distill\": 0}'")
    a = ap.parse_args()
    if not (DATA / "splits.json").is_file():
        print(f"skipped: {DATA} is absent")
        return 0
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    home = Path(tempfile.mkdtemp(prefix="medseg-adapt-"))
    os.environ["MEDSEG_HOME"] = str(home)
    from medseg_core.inference.postprocess import keep_largest_components
    from medseg_core.inference.predictor import Predictor
    from medseg_core.io import read_channels
    from medseg_core.models import find_model
    from medseg_core.training.finetune import finetune

    ks = [int(k) for k in a.k.split(",")]
    extra = json.loads(a.finetune_args)
    val = json.loads((DATA / "splits.json").read_text())["validation"]
    n_fit = max(ks + [a.chain, a.fit_cases, a.singles])
    fit_cases, new_cases = val[:n_fit], val[n_fit:n_fit + a.new]
    parent_pkg = find_model(MODEL)
    values = {lab.name: lab.value for lab in parent_pkg.card.labels}
    images = {c: read_channels(str(DATA / "imagesTr" / f"{c}_0000.nii.gz"), 1) for c in fit_cases + new_cases}
    refs = {c: sitk.ReadImage(str(DATA / "labelsTr" / f"{c}.nii.gz")) for c in fit_cases + new_cases}
    cache: dict[tuple, np.ndarray] = {}
    predictors: dict[str, Predictor] = {}  # one load per model

    def predict(model_dir: str, case: str) -> np.ndarray:
        key = (model_dir, case)
        if key not in cache:
            if model_dir not in predictors:
                predictors[model_dir] = Predictor(find_model(model_dir), device="cpu")
            result = predictors[model_dir].predict(images[case], confidence=False)
            shown = keep_largest_components(result.labels, parent_pkg.card.inference.largest_component)
            cache[key] = sitk.GetArrayFromImage(shown)  # as `medseg segment` writes it
        return cache[key]

    results = {"model": MODEL, "fit_cases": fit_cases, "new_cases": new_cases, "styles": {}}
    work = home / "corrections"
    work.mkdir()
    try:
        for style in a.styles.split(","):
            styled = {c: styled_labels(sitk.GetArrayFromImage(refs[c]), style, values, refs[c])
                      for c in fit_cases + new_cases}
            originals = {c: sitk.GetArrayFromImage(refs[c]) for c in fit_cases + new_cases}

            def correction(model_dir: str, c: str, tag: str) -> Path:
                """``model_dir``'s result on case ``c``, the styled organs redrawn: what a clinician sends back."""
                corr = predict(model_dir, c).copy()
                if a.style_the_model:  # the model's own organs, drawn in the style: no annotator's variation
                    corr = styled_labels(corr, style, values, refs[c])
                for name in ([] if a.style_the_model else STYLED[style]):
                    v = values[name]
                    corr[corr == v] = 0
                    corr[styled[c] == v] = v
                img = sitk.GetImageFromArray(corr.astype(np.uint8))
                img.CopyInformation(refs[c])
                path = work / f"{style}_{tag}_{c}.nii.gz"
                sitk.WriteImage(img, str(path))
                return path

            paths = {c: correction(MODEL, c, "parent") for c in fit_cases}
            styled_keys = [n + " (styled)" for n in STYLED[style]]
            other_keys = [n for n in values if n not in STYLED[style] + NOT_SCORED.get(style, [])]

            def evaluate(model_dir: str) -> dict:
                rows = [score(predict(model_dir, c), originals[c], styled[c], style, values) for c in new_cases]
                return {"styled": mean_over(rows, styled_keys),
                        "unstyled": mean_over(rows, [n + " (unstyled)" for n in STYLED[style]]),
                        "others": mean_over(rows, other_keys),
                        "per_organ": {key: mean_over(rows, [key]) for key in rows[0]}}

            base = evaluate(MODEL)
            gap = base["unstyled"] - base["styled"]
            entry = {"organs": STYLED[style], "parent": base, "gap": gap, "k": {}, "chain": []}
            print(f"\n{style} ({', '.join(STYLED[style])}): parent styled {base['styled']:.4f}, unstyled "
                  f"{base['unstyled']:.4f} (gap {gap:.4f}), others {base['others']:.4f}", flush=True)
            for k in ks:
                # K = 1 with --singles N: N one-case fine-tunes, each on its own case (one case's share
                # of a small gap swings widely; their mean says what one correction teaches)
                fits = [[c] for c in fit_cases[:a.singles]] if k == 1 and a.singles > 1 else [fit_cases[:k]]
                runs = []
                for fit in fits:
                    t = time.perf_counter()
                    res = finetune(MODEL, [(DATA / "imagesTr" / f"{c}_0000.nii.gz", paths[c]) for c in fit],
                                   steps=a.steps, name=f"{style}-k{k}-{fit[0]}", device="cpu", **extra)
                    seconds = time.perf_counter() - t
                    ft = find_model(str(res.package_dir)).card.training["finetune"]
                    ev = evaluate(str(res.package_dir))
                    closed = (ev["styled"] - base["styled"]) / gap if gap > 0 else float("nan")
                    runs.append({**ev, "closed": closed, "others_change": ev["others"] - base["others"],
                                 "seconds": seconds, "seconds_per_case": seconds / k, "steps": ft["steps"],
                                 "seconds_by_stage": ft["seconds_by_stage"], "precision": ft["precision"],
                                 "routed": ft.get("routed"), "cases": fit})
                    print(f"  K={k} ({', '.join(fit) if k <= 3 else f'{fit[0]}...'}): styled {ev['styled']:.4f} "
                          f"({share(closed)}), others {ev['others']:.4f} ({ev['others'] - base['others']:+.4f}), "
                          f"{seconds:.0f} s ({seconds / k:.0f} s a case)", flush=True)
                    print(f"    {ft['steps']} steps, {ft['precision']}, routed {ft.get('routed')}; seconds by stage: "
                          + ", ".join(f"{n} {v:.1f}" for n, v in ft["seconds_by_stage"].items()), flush=True)
                    print("    per organ, change: " + ", ".join(  # an organ no new case has gets no figure, not "+nan"
                        f"{n} {v - base['per_organ'][n]:+.3f}" if np.isfinite(v - base["per_organ"][n])
                        else f"{n} (in no new case)" for n, v in ev["per_organ"].items()), flush=True)
                entry["k"][k] = {key: float(np.mean([r[key] for r in runs]))
                                 for key in ("styled", "closed", "others_change", "seconds_per_case")}
                entry["k"][k]["runs"] = runs
                if len(runs) > 1:
                    c = [r["closed"] for r in runs]
                    print(f"  K={k}, {len(runs)} single cases: mean {share(float(np.mean(c)))} (from "
                          f"{100 * min(c):.0f} % to {100 * max(c):.0f} %), others "
                          f"{np.mean([r['others_change'] for r in runs]):+.4f}", flush=True)
            parent = MODEL
            for g in range(a.chain):
                fix = correction(parent, fit_cases[g], f"gen{g + 1}")  # on what this generation drew
                res = finetune(parent, [(DATA / "imagesTr" / f"{fit_cases[g]}_0000.nii.gz", fix)],
                               steps=a.steps, name=f"{style}-gen{g + 1}", device="cpu", **extra)
                parent = str(res.package_dir)
                ev = evaluate(parent)
                entry["chain"].append(ev)
                print(f"  generation {g + 1}: styled {ev['styled']:.4f}, never-corrected organs {ev['others']:.4f} "
                      f"({ev['others'] - base['others']:+.4f})", flush=True)
            results["styles"][style] = entry
        print("\n| style | organs | K | styled Dice (parent) | closed | other organs, change | s a case |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for style, e in results["styles"].items():
            for k, r in e["k"].items():
                k_ = f"{k} (mean of {len(r['runs'])})" if len(r["runs"]) > 1 else k
                print(f"| {style} | {', '.join(e['organs'])} | {k_} | {r['styled']:.4f} "
                      f"({e['parent']['styled']:.4f}) | {share(r['closed'], table=True)} | "
                      f"{r['others_change']:+.4f} | {r['seconds_per_case']:.0f} |")
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1, default=float))
        return 0
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
