"""An oblique grid against the default model: a HNOAR validation case resampled onto a grid
rotated about the superior-inferior axis (1.5 mm in-plane), segmented as it is and with the
card's ``resample_oblique`` (the image straightened onto the model's axis-aligned frame).

Prints mean Dice per way: on the rotated grid against the reference labels resampled there
(nearest), and with the result brought back onto the original grid against the original
reference; the original case segmented as it is gives the ceiling, and the reference itself taken
onto the rotated grid and back the floor of the measurement. Per case, then the means and the
gap (original minus straightened, original grid; issue 14's target: 0.02). Needs
../shared/data/HNOAR.

    python benchmarks/oblique.py [--cases hn_201,hn_202] [--degrees 20] [--model NAME_OR_FOLDER]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "HNOAR"


def rotated_grid(img, degrees: float, inplane: float):
    import SimpleITK as sitk

    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    sp = np.array(img.GetSpacing(), dtype=float)
    n = np.ceil(np.array(img.GetSize()) * sp / np.array([inplane, inplane, sp[2]])).astype(int)
    sp[:2] = inplane
    centre = np.array(img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in img.GetSize()]))
    ref = sitk.Image([int(v) for v in n], sitk.sitkUInt8)
    ref.SetSpacing(sp.tolist())
    ref.SetDirection(rot.ravel().tolist())
    ref.SetOrigin((centre - rot @ (sp * (n - 1) / 2)).tolist())
    return ref


def mean_dice(pred, ref, values) -> float:
    out = []
    for v in values:
        a, b = pred == v, ref == v
        if b.any():
            out.append(2 * float((a & b).sum()) / float(a.sum() + b.sum()))
    return float(np.mean(out))


def main() -> int:
    import SimpleITK as sitk

    from medseg_core.models import find_model, save_package
    from medseg_core.segment import segment_files

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="hn_201")
    ap.add_argument("--degrees", type=float, default=20.0)
    ap.add_argument("--inplane", type=float, default=1.5)
    ap.add_argument("--model", default="hn-oar", help="model name or package folder")
    ap.add_argument("--straightened-only", action="store_true", help="skip the run without straightening")
    a = ap.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent")
        return 0
    work = Path(tempfile.mkdtemp(prefix="medseg-oblique-"))
    try:
        pkg = find_model(a.model)
        for flag in (False, True):
            card = copy.deepcopy(pkg.card)
            card.name, card.preprocessing.resample_oblique = f"hn-{flag}", flag
            save_package(card, pkg.load_state_dict(), work / card.name, int8=True)
        values = [lab.value for lab in pkg.card.labels]
        rows = []
        for case in a.cases.split(","):
            img = sitk.ReadImage(str(DATA / "imagesTr" / f"{case}_0000.nii.gz"))
            lab = sitk.ReadImage(str(DATA / "labelsTr" / f"{case}.nii.gz"))
            ref = rotated_grid(img, a.degrees, a.inplane)
            img_r = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, img.GetPixelID())
            lab_r_img = sitk.Resample(lab, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            lab_r = sitk.GetArrayFromImage(lab_r_img)
            sitk.WriteImage(img, str(work / f"{case}.nii.gz"))
            sitk.WriteImage(img_r, str(work / f"{case}_rot.nii.gz"))
            original = segment_files([work / f"{case}.nii.gz"], str(work / "hn-False"), work / "o", device="cpu")[0]
            orig_labels = sitk.ReadImage(original["outputs"]["labels"])
            row = {"case": case, "original": mean_dice(sitk.GetArrayFromImage(orig_labels), sitk.GetArrayFromImage(lab),
                                                       values)}
            # the floor of the "original grid" column: the reference itself taken there and back
            there_and_back = sitk.Resample(lab_r_img, lab, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            row["reference there and back"] = mean_dice(sitk.GetArrayFromImage(there_and_back),
                                                        sitk.GetArrayFromImage(lab), values)
            for flag in ((True,) if a.straightened_only else (False, True)):
                t = time.perf_counter()
                rep = segment_files([work / f"{case}_rot.nii.gz"], str(work / f"hn-{flag}"), work / f"o{flag}",
                                    device="cpu")[0]
                out = sitk.ReadImage(rep["outputs"]["labels"])
                back = sitk.Resample(out, lab, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
                way = "straightened" if flag else "as is"
                row[f"{way}, rotated grid"] = mean_dice(sitk.GetArrayFromImage(out), lab_r, values)
                row[f"{way}, original grid"] = mean_dice(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(lab),
                                                         values)
                row[f"{way} s"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        means = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0] if k != "case"}
        means["gap (original - straightened, original grid)"] = round(
            means["original"] - means["straightened, original grid"], 4)
        print(json.dumps({"mean over": len(rows), **means}))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
