"""Are the test-time flips worth their time on the CPU? The default model on the HNOAR validation
split with and without ``--tta`` (the card's flips: left-right, parotids swapped), the card's
post-processing applied to both: Dice per organ and seconds per case, side by side in one run.
Needs ../shared/data/HNOAR.

    python benchmarks/tta.py [--cases N] [--model hn-oar]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "HNOAR"


def main() -> int:
    import SimpleITK as sitk

    from medseg_core.inference.postprocess import keep_largest_components
    from medseg_core.inference.predictor import Predictor
    from medseg_core.io import read_channels
    from medseg_core.metrics import dice
    from medseg_core.models import find_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=0, help="the first N validation cases (0: all)")
    ap.add_argument("--model", default="hn-oar")
    a = ap.parse_args()
    if not (DATA / "splits.json").is_file():
        print(f"skipped: {DATA} is absent")
        return 0
    cases = json.loads((DATA / "splits.json").read_text())["validation"]
    cases = cases[: a.cases] if a.cases else cases
    pkg = find_model(a.model)
    pred = Predictor(pkg, device="cpu")
    labels = [(lab.value, lab.name) for lab in pkg.card.labels]
    rule = pkg.card.inference.largest_component
    scores = {way: {v: [] for v, _ in labels} for way in ("plain", "tta")}
    seconds = {"plain": [], "tta": []}
    for case in cases:
        images = read_channels(str(DATA / "imagesTr" / f"{case}_0000.nii.gz"), 1)
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "labelsTr" / f"{case}.nii.gz")))
        for way in ("plain", "tta"):
            t = time.perf_counter()
            out = keep_largest_components(pred.predict(images, tta=way == "tta", confidence=False).labels, rule)
            seconds[way].append(time.perf_counter() - t)
            arr = sitk.GetArrayFromImage(out)
            for v, _ in labels:
                if (ref == v).any():
                    scores[way][v].append(dice(arr == v, ref == v))
        print(json.dumps({"case": case, "plain_s": round(seconds["plain"][-1], 2),
                          "tta_s": round(seconds["tta"][-1], 2)}), flush=True)
    print("\n| organ | cases | Dice | Dice with flips |\n| --- | --- | --- | --- |")
    for v, name in labels:
        if scores["plain"][v]:
            print(f"| {name} | {len(scores['plain'][v])} | {np.mean(scores['plain'][v]):.4f} | "
                  f"{np.mean(scores['tta'][v]):.4f} |")
    means = {w: np.mean([np.mean(s[v]) for v, _ in labels if s[v]]) for w, s in scores.items()}
    print(f"\nmean Dice {means['plain']:.4f} without flips, {means['tta']:.4f} with; median "
          f"{np.median(seconds['plain']):.1f} s against {np.median(seconds['tta']):.1f} s a case")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
