"""Window plans of the sliding window on the CPU, on HNOAR validation cases: the card's window at
overlap 0.5 with an axis a little longer than the window run in one stretched window (today,
:func:`~medseg_core.inference.sliding_window.stretched_patch`), the same without stretching (the
plan before), overlap 0.25, and the whole cropped volume in one window. Per plan: the Dice per
organ (the mean over the cases that hold it), the mean over organs, and the predictor's median
seconds (read and write not counted). Needs ../shared/data/HNOAR.

    python benchmarks/window_plan.py [--cases 4 | --all] [--stretched-only] [--plans today,before]
                                     [--model hn-oar]

``--stretched-only`` keeps the cases whose plan stretching changes (the others are computed
identically by both). The one-window plan runs through the predictor's fitted window (the refine
path) with its cap at the card's window lifted for the run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "HNOAR"
PLANS = {"today": "card window, overlap 0.5, a little longer axis stretched (today)",
         "before": "card window, overlap 0.5, never stretched (before)",
         "overlap25": "card window, overlap 0.25", "whole": "whole cropped volume",
         "fit16": "an axis shorter than the card window in a window fitted to it with 16 voxels of air each side",
         "fit8": "fitted, 8 voxels of air each side", "fit0": "fitted, no air added",
         "shrink16": "today, and an axis shorter than the window in one fitted to it (16 voxels of air each side, "
                     "rounded up to the network's down-sampling)", "shrink8": "shrink16 with 8 voxels of air"}


def dice_per_organ(pred: np.ndarray, ref: np.ndarray, values) -> dict[int, float]:
    return {v: 2 * float(((pred == v) & (ref == v)).sum()) / float((pred == v).sum() + (ref == v).sum())
            for v in values if (ref == v).any()}


def main() -> int:
    import SimpleITK as sitk

    import medseg_core.inference.predictor as P
    from medseg_core.io import read_channels
    from medseg_core.models import find_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--all", action="store_true", help="every validation case")
    ap.add_argument("--stretched-only", action="store_true", help="only cases whose plan stretching changes")
    ap.add_argument("--plans", default="today,before,overlap25,whole", help=f"of {', '.join(PLANS)}")
    ap.add_argument("--model", default="hn-oar")
    a = ap.parse_args()
    if not (DATA / "splits.json").is_file():
        print(f"skipped: {DATA} is absent")
        return 0
    pkg = find_model(a.model)
    names = {lab.value: lab.name for lab in pkg.card.labels}
    capped, margin, stretched = P.fitted_patch, P.FIT_MARGIN, P.stretched_patch

    def uncapped(patch, spatial):
        return tuple(-(-int(s) // 32) * 32 for s in spatial)

    plans = [p for p in a.plans.split(",") if p]
    results = {p: {"dice": {v: [] for v in names}, "seconds": []} for p in plans}
    cases = json.loads((DATA / "splits.json").read_text())["validation"]
    cases = cases if a.all or a.stretched_only else cases[: a.cases]
    probe = P.Predictor(pkg, device="cpu")
    for case in cases:
        images = read_channels(str(DATA / "imagesTr" / f"{case}_0000.nii.gz"), 1)
        if a.stretched_only:
            spatial = probe.preprocessor(images).image.shape[1:]
            if stretched(tuple(probe.card.patch_size), spatial) == tuple(probe.card.patch_size):
                continue
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "labelsTr" / f"{case}.nii.gz")))
        for plan in plans:
            pred = P.Predictor(pkg, device="cpu", overlap=0.25 if plan == "overlap25" else 0.5)
            if plan == "whole":
                P.fitted_patch, P.FIT_MARGIN = uncapped, 0
            if plan.startswith("fit"):
                P.FIT_MARGIN = int(plan[3:])
            if plan.startswith("shrink"):
                m = int(plan[6:])

                def shrunk(patch, spatial, multiple=16, m=m):
                    out = stretched(patch, spatial, multiple=multiple)
                    mult = multiple if isinstance(multiple, (tuple, list)) else (multiple,) * len(patch)
                    return tuple(min(o, -(-(int(n) + 2 * m) // k) * k) for o, n, k in zip(out, spatial, mult))
                P.stretched_patch = shrunk
            if plan in ("before", "overlap25"):
                P.stretched_patch = lambda patch, spatial, **kw: tuple(patch)
            try:
                t = time.perf_counter()
                out = pred.predict(images, confidence=False, fit=plan == "whole" or plan.startswith("fit"))
                seconds = time.perf_counter() - t
            finally:
                P.fitted_patch, P.FIT_MARGIN, P.stretched_patch = capped, margin, stretched
            d = dice_per_organ(sitk.GetArrayFromImage(out.labels), ref, list(names))
            for v, x in d.items():
                results[plan]["dice"][v].append(x)
            results[plan]["seconds"].append(seconds)
            print(json.dumps({"case": case, "plan": plan, "mean_dice": round(float(np.mean(list(d.values()))), 4),
                              "seconds": round(seconds, 2)}), flush=True)
    print("\n| organ | cases | " + " | ".join(plans) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in plans) + " |")
    means = {p: [] for p in plans}
    for v, name in names.items():
        n = len(results[plans[0]]["dice"][v])
        if not n:
            continue
        row = []
        for p in plans:
            m = float(np.mean(results[p]["dice"][v]))
            means[p].append(m)
            row.append(f"{m:.4f}")
        print(f"| {name} | {n} | " + " | ".join(row) + " |")
    print("| mean over organs | | " + " | ".join(f"{np.mean(means[p]):.4f}" for p in plans) + " |")
    print("| median seconds | | " + " | ".join(f"{np.median(results[p]['seconds']):.2f}" for p in plans) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
