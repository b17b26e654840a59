"""Window plans of the sliding window on the CPU: the card's window at overlap 0.5 (today) and 0.25,
and the whole cropped volume in one window, on HNOAR validation cases: mean Dice over the organs
each case has, and the predictor's seconds (read and write not counted). Needs ../shared/data/HNOAR.

    python benchmarks/window_plan.py [--cases 4] [--model hn-oar]

The one-window plan runs through the predictor's fitted window (the refine path) with its cap at
the card's window lifted for the run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "HNOAR"


def mean_dice(pred: np.ndarray, ref: np.ndarray, values) -> float:
    out = [2 * float(((pred == v) & (ref == v)).sum()) / float((pred == v).sum() + (ref == v).sum())
           for v in values if (ref == v).any()]
    return float(np.mean(out))


def main() -> int:
    import SimpleITK as sitk

    import medseg_core.inference.predictor as P
    from medseg_core.io import read_channels
    from medseg_core.models import find_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--model", default="hn-oar")
    a = ap.parse_args()
    if not (DATA / "splits.json").is_file():
        print(f"skipped: {DATA} is absent")
        return 0
    pkg = find_model(a.model)
    values = [lab.value for lab in pkg.card.labels]
    capped, margin = P.fitted_patch, P.FIT_MARGIN

    def uncapped(patch, spatial):
        return tuple(-(-int(s) // 32) * 32 for s in spatial)

    plans = {"card window, overlap 0.5": (0.5, False), "card window, overlap 0.25": (0.25, False),
             "whole cropped volume": (0.5, True)}
    results = {name: [] for name in plans}
    for case in json.loads((DATA / "splits.json").read_text())["validation"][: a.cases]:
        images = read_channels(str(DATA / "imagesTr" / f"{case}_0000.nii.gz"), 1)
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "labelsTr" / f"{case}.nii.gz")))
        for name, (overlap, whole) in plans.items():
            pred = P.Predictor(pkg, device="cpu", overlap=overlap)
            if whole:
                P.fitted_patch, P.FIT_MARGIN = uncapped, 0
            try:
                t = time.perf_counter()
                out = pred.predict(images, confidence=False, fit=whole)
                seconds = time.perf_counter() - t
            finally:
                P.fitted_patch, P.FIT_MARGIN = capped, margin
            d = mean_dice(sitk.GetArrayFromImage(out.labels), ref, values)
            results[name].append((d, seconds))
            print(json.dumps({"case": case, "plan": name, "dice": round(d, 4), "seconds": round(seconds, 2)}),
                  flush=True)
    for name, rows in results.items():
        dice_, seconds = np.mean([r[0] for r in rows]), np.median([r[1] for r in rows])
        print(f"{name:28s} mean Dice {dice_:.4f}, median {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
