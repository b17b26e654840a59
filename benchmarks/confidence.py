"""Does the confidence map mean something? Errors against confidence on HNOAR's validation split.

For each validation case, segments with the model (confidence = 1 - normalised entropy, or the
model's confidence head) and compares voxel by voxel with the reference on the input grid:

* region "body": voxels above -500 HU; region "near organs": within 10 mm of a predicted or
  reference organ. Voxels predicted as an organ that was not contoured in that case are left
  out (their truth is unknown).
* share of the voxels under the threshold, share of the errors under it, the error rate below
  and above it, and the AUROC of confidence as a predictor of correctness.

    python benchmarks/confidence.py [--model hn-oar-unet] [--cases N] [--tta] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "HNOAR"


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (rank formula, ties averaged)."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hn-oar-unet")
    ap.add_argument("--cases", type=int, default=0, help="first N validation cases (0: all)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    if not DATA.is_dir():
        print(f"{DATA} not found: nothing to measure")
        return
    import SimpleITK as sitk

    from medseg_core.inference.predictor import Predictor
    from medseg_core.io import read_image
    from medseg_core.models import find_model

    cases = json.loads((DATA / "splits.json").read_text())["validation"]
    cases = cases[: a.cases] if a.cases else cases
    pred = Predictor(find_model(a.model), device=a.device)
    regions = {"body": ([], []), "near organs": ([], [])}
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for case in cases:
        img = read_image(DATA / "imagesTr" / f"{case}_0000.nii.gz")
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "labelsTr" / f"{case}.nii.gz")))
        res = pred.predict([img], tta=a.tta)
        lab = sitk.GetArrayFromImage(res.labels)
        conf = res.confidence
        contoured = np.isin(lab, np.unique(ref)) | (lab == 0)
        body = (sitk.GetArrayViewFromImage(img) > -500) & contoured
        fg = sitk.GetImageFromArray(((lab > 0) | (ref > 0)).astype(np.uint8))
        fg.CopyInformation(img)
        radius = [max(1, int(round(10.0 / s))) for s in img.GetSpacing()]
        near = (sitk.GetArrayFromImage(sitk.BinaryDilate(fg, radius)) > 0) & contoured
        wrong = lab != ref
        for name, mask in (("body", body), ("near organs", near)):
            c, w = conf[mask], wrong[mask]
            if c.size > 200_000:  # keep memory modest: a fixed random sample per case
                keep = rng.choice(c.size, 200_000, replace=False)
                c, w = c[keep], w[keep]
            regions[name][0].append(c)
            regions[name][1].append(w)
        print(f"{case}: {wrong[body].mean() * 100:.2f}% of body voxels wrong", flush=True)
    figures = {"model": a.model, "cases": len(cases), "threshold": a.threshold, "tta": a.tta,
               "seconds": round(time.perf_counter() - t0, 1), "regions": {}}
    print(f"\n{a.model} on {len(cases)} validation cases, threshold {a.threshold}, tta {a.tta}")
    print(f"{'region':12s} {'voxels<thr':>10s} {'errors<thr':>10s} {'err rate<thr':>12s} {'err rate>=thr':>13s} {'AUROC':>6s}")
    for name, (cs, ws) in regions.items():
        c, w = np.concatenate(cs), np.concatenate(ws)
        low = c < a.threshold
        row = {"voxels": int(c.size), "errors": int(w.sum()),
               "share_of_voxels_below": float(low.mean()), "share_of_errors_below": float(w[low].sum() / max(1, w.sum())),
               "error_rate_below": float(w[low].mean()) if low.any() else float("nan"),
               "error_rate_above": float(w[~low].mean()) if (~low).any() else float("nan"),
               "auroc_confidence_vs_correct": auroc(c, ~w)}
        figures["regions"][name] = row
        print(f"{name:12s} {row['share_of_voxels_below'] * 100:9.2f}% {row['share_of_errors_below'] * 100:9.2f}% "
              f"{row['error_rate_below'] * 100:11.2f}% {row['error_rate_above'] * 100:12.3f}% "
              f"{row['auroc_confidence_vs_correct']:6.3f}")
        sweep = {}
        for thr in (0.3, 0.5, 0.7, 0.9):
            lo = c < thr
            sweep[thr] = (float(lo.mean()), float(w[lo].sum() / max(1, w.sum())))
        row["sweep"] = {str(k): {"share_of_voxels_below": v[0], "share_of_errors_below": v[1]} for k, v in sweep.items()}
        print(f"{'':12s} sweep (voxels below / errors below): "
              + ", ".join(f"{k}: {v[0] * 100:.2f}% / {v[1] * 100:.1f}%" for k, v in sweep.items()))
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
