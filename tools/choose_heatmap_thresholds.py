"""Choose, per small organ, the heatmap threshold above which a FocusNet's SOS-Net segments it:
segment the validation split once per candidate threshold (every organ at that value), keep for
each organ the candidate with the best mean Dice (on a tie the card's own, then the highest), then
segment once more with the choice and print Dice and HD95 per organ before (the card's
thresholds) and after. With ``--output DIR`` writes the model with the choice in its card
(``network.kwargs.heatmap_threshold``) as a new package: the weights copied byte for byte.

The card's post-processing (``inference.largest_component``) is applied in every run.

    python tools/choose_heatmap_thresholds.py --model hn-oar-focusnet --data ../shared/data/HNOAR
                                              [--thresholds 0.6,0.4,0.2,0.1] [--cases N] [--output DIR]
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from choose_postprocessing import _median, validation_arguments, validation_cases, write_with_card  # noqa: E402


def main() -> int:
    import SimpleITK as sitk

    from medseg_core.inference.postprocess import keep_largest_components
    from medseg_core.inference.predictor import Predictor
    from medseg_core.io import read_channels
    from medseg_core.metrics import dice, hd95
    from medseg_core.models import find_model

    ap = validation_arguments(__doc__, "hn-oar-focusnet", "write the model with the chosen thresholds here")
    ap.add_argument("--thresholds", default="0.6,0.4,0.2,0.1", help="candidate thresholds, comma-separated")
    a = ap.parse_args()
    try:
        candidates = sorted({float(t) for t in a.thresholds.split(",")}, reverse=True)
    except ValueError:
        candidates = []
    if not candidates or not all(0 < t < 1 for t in candidates):
        print(f"--thresholds {a.thresholds}: give heatmap values between 0 and 1, comma-separated", file=sys.stderr)
        return 2
    data, cases = Path(a.data), validation_cases(Path(a.data), a.cases)
    pkg = find_model(a.model)
    kwargs = pkg.card.network.kwargs
    organs = [int(v) for v in kwargs.get("small_organs", [])]
    if pkg.card.network.name != "focusnet" or not organs:
        print(f"{a.model}: not a FocusNet with small organs", file=sys.stderr)
        return 2
    own = kwargs.get("heatmap_threshold", 0.6)
    own = [float(t) for t in own] if isinstance(own, list) else [float(own)] * len(organs)
    names = {lab.value: lab.name for lab in pkg.card.labels}
    images, done = {}, {}

    def score(thresholds: list[float]) -> dict:
        """Per label value: Dice and HD95 lists over the cases that hold it (each setting run once)."""
        key = tuple(thresholds)
        if key not in done:
            done[key] = _score(thresholds)
        return done[key]

    def _score(thresholds: list[float]) -> dict:
        variant = copy.copy(pkg)
        variant.card = copy.deepcopy(pkg.card)
        variant.card.network.kwargs["heatmap_threshold"] = thresholds
        pred = Predictor(variant, device="cpu")
        out = {v: {"dice": [], "hd": []} for v in names}
        t0 = time.perf_counter()
        for case in cases:
            if case not in images:
                images[case] = (read_channels(str(data / "imagesTr" / f"{case}_0000.nii.gz"), 1),
                                sitk.ReadImage(str(data / "labelsTr" / f"{case}.nii.gz")))
            image, ref_img = images[case]
            labels = pred.predict(image, confidence=False).labels
            seg = sitk.GetArrayFromImage(keep_largest_components(labels, variant.card.inference.largest_component))
            ref, spacing = sitk.GetArrayFromImage(ref_img), ref_img.GetSpacing()[::-1]
            for v in names:
                if (ref == v).any():
                    out[v]["dice"].append(dice(seg == v, ref == v))
                    if (seg == v).any():
                        out[v]["hd"].append(hd95(seg == v, ref == v, spacing))
        print(f"thresholds {thresholds}: {len(cases)} cases in {time.perf_counter() - t0:.0f} s", file=sys.stderr,
              flush=True)
        return out

    runs = {t: score([t] * len(organs)) for t in candidates}
    chosen = []
    for j, v in enumerate(organs):
        means = {t: float(np.mean(runs[t][v]["dice"])) if runs[t][v]["dice"] else 0.0 for t in candidates}
        best = max(means.values())
        ties = [t for t in candidates if means[t] == best]
        chosen.append(own[j] if own[j] in ties else ties[0])
        print(f"{names[v]}: " + ", ".join(f"{t:g} -> {means[t]:.4f}" for t in candidates) + f"; chosen {chosen[-1]:g}")
    before = score(own)
    after = score(chosen)
    print("| organ | cases | threshold before -> after | Dice before | Dice after | HD95 median mm before | after |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for v, name in names.items():
        if not before[v]["dice"]:
            continue
        j = organs.index(v) if v in organs else None
        th = f"{own[j]:g} -> {chosen[j]:g}" if j is not None else "(large organ)"
        b, c = float(np.mean(before[v]["dice"])), float(np.mean(after[v]["dice"]))
        rows.append((b, c))
        print(f"| {name} | {len(before[v]['dice'])} | {th} | {b:.4f} | {c:.4f} | {_median(before[v]['hd']):.1f} | "
              f"{_median(after[v]['hd']):.1f} |")
    print(f"\nmean Dice {np.mean([r[0] for r in rows]):.4f} -> {np.mean([r[1] for r in rows]):.4f}")
    if a.output:
        card = json.loads((pkg.path / "card.json").read_text())
        card["network"]["kwargs"]["heatmap_threshold"] = chosen
        write_with_card(pkg.path, card, Path(a.output))
        print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
