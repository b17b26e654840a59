"""A simulated user of ``medseg refine`` on the HNOAR validation split.

For each case the default model segments the image once; then, for each organ, the organ is
erased from that result and one point is placed at the reference contour's centroid (a second
point, at the largest remaining error's centroid, with ``--second``). Printed per organ: the
model's own Dice (unprompted), Dice after 0 prompts (erased: 0) and after each prompt, with a
warm model (the worker's case), and the seconds per refine. Also checks that nothing outside
the reported region changed. With ``--worst K`` nothing is erased: the K organs the model did
worst on in each case are refined from the model's own result (the clinician's case: fix what
the model got wrong), the first point at the reference centroid. Needs ../shared/data/HNOAR.

    python benchmarks/interactive.py [--cases 3] [--model hn-oar] [--second] [--worst K]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "HNOAR"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * float((a & b).sum()) / float(s)


def main() -> int:
    import SimpleITK as sitk

    from medseg_core.commands import RefineRequest, run_refine
    from medseg_core.inference.predictor import Predictor
    from medseg_core.models import find_model
    from medseg_core.segment import segment_files

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--model", default="hn-oar")
    ap.add_argument("--second", action="store_true", help="a second point at the largest remaining error")
    ap.add_argument("--worst", type=int, default=0, help="refine the K worst organs of each case, not erased ones")
    a = ap.parse_args()
    if not (DATA / "splits.json").is_file():
        print(f"skipped: {DATA} is absent")
        return 0
    cases = json.loads((DATA / "splits.json").read_text())["validation"][: a.cases]
    work = Path(tempfile.mkdtemp(prefix="medseg-interactive-"))
    try:
        pkg = find_model(a.model)
        pred = Predictor(pkg, device="cpu")
        rows, times, leaks = [], [], 0
        for case in cases:
            image = DATA / "imagesTr" / f"{case}_0000.nii.gz"
            ref_img = sitk.ReadImage(str(DATA / "labelsTr" / f"{case}.nii.gz"))
            ref = sitk.GetArrayFromImage(ref_img)
            report = segment_files([image], a.model, work / case, device="cpu", predictor=pred, confidence=False)[0]
            model_img = sitk.ReadImage(report["outputs"]["labels"])
            model = sitk.GetArrayFromImage(model_img)
            organs = [lab for lab in pkg.card.labels if (ref == lab.value).any()]
            if a.worst:
                organs = sorted(organs, key=lambda lab: dice(model == lab.value, ref == lab.value))[: a.worst]
            for lab in organs:
                v = lab.value
                erased = model.copy()
                if not a.worst:
                    erased[erased == v] = 0
                current = work / f"{case}_{v}_erased.nii.gz"
                img = sitk.GetImageFromArray(erased)
                img.CopyInformation(model_img)
                sitk.WriteImage(img, str(current))
                row = {"case": case, "organ": lab.name, "model": dice(model == v, ref == v),
                       "0": dice(erased == v, ref == v)}
                target = ref == v
                for k in range(2 if a.second else 1):
                    wrong = target & (erased != v)  # erased: the labels as they stand now
                    if not wrong.any():
                        break
                    # the first point at the reference's centroid, a second at what is still missed
                    centre = np.argwhere(target if k == 0 else wrong).mean(0)[::-1]
                    point = model_img.TransformContinuousIndexToPhysicalPoint(centre.tolist())
                    out = work / f"{case}_{v}_{k}"
                    req = RefineRequest(input=str(image), model=a.model, labels=str(current), output=str(out),
                                        device="cpu", prompts=[{"label": lab.name, "point": list(point)}])
                    t = time.perf_counter()
                    record = run_refine(req, predictor=pred)
                    times.append(time.perf_counter() - t)
                    new = sitk.GetArrayFromImage(sitk.ReadImage(record["outputs"]["labels"]))
                    before = sitk.GetArrayFromImage(sitk.ReadImage(str(current)))
                    box = record["changes"][0]["box_index"]
                    outside = np.ones_like(new, dtype=bool)
                    if box:
                        i0, j0, k0, i1, j1, k1 = box
                        outside[k0:k1, j0:j1, i0:i1] = False
                    leaks += int((new != before)[outside].any())
                    row[str(k + 1)] = dice(new == v, target)
                    current = Path(record["outputs"]["labels"])
                    erased = new
                rows.append(row)
                print(json.dumps({k: round(x, 3) if isinstance(x, float) else x for k, x in row.items()}), flush=True)
        organs = sorted({r["organ"] for r in rows}, key=[lab.name for lab in pkg.card.labels].index)
        print("\norgan          model   0 prompts  1 point" + ("  2 points" if a.second else ""))
        for organ in organs:
            rs = [r for r in rows if r["organ"] == organ]
            cols = [np.mean([r["model"] for r in rs]), np.mean([r["0"] for r in rs]),
                    np.mean([r.get("1", r["0"]) for r in rs])]
            if a.second:
                cols.append(np.mean([r.get("2", r.get("1", r["0"])) for r in rs]))
            print(f"{organ:14s} " + "  ".join(f"{c:7.3f}" for c in cols) + f"   ({len(rs)})")
        if a.worst:
            gain = np.mean([r.get("1", r["0"]) - r["model"] for r in rows])
            print(f"\none point changes the worst organs' Dice by {gain:+.3f} on average ({len(rows)} organs); "
                  f"refine {np.median(times):.2f} s median warm; changes outside the reported region: {leaks}")
        else:
            ratio = np.mean([r.get("1", 0.0) / r["model"] for r in rows if r["model"] > 0])
            print(f"\none point restores {ratio:.0%} of the model's own Dice on average; refine "
                  f"{np.median(times):.2f} s median warm ({len(times)} refines); changes outside the reported "
                  f"region: {leaks}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
