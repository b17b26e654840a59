"""The int8 network (``tools/quantize_int8.py``) against the float32 one on HNOAR validation cases,
on the CPU's float32 path (OpenVINO, ``MEDSEG_CPU_BF16=0`` set here): Dice per organ (the mean over
the cases that hold it), the mean over organs, the share of voxels whose label differs, and the
predictor's median seconds (read and write not counted), side by side per case. Needs
../shared/data/HNOAR and OpenVINO.

    python benchmarks/int8.py [--cases 8 | --all] [--model hn-oar-unet]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from window_plan import dice_per_organ  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "HNOAR"


def main() -> int:
    os.environ["MEDSEG_CPU_BF16"] = "0"
    import SimpleITK as sitk

    from medseg_core.inference.predictor import Predictor
    from medseg_core.io import read_channels
    from medseg_core.models import find_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--all", action="store_true", help="every validation case")
    ap.add_argument("--model", default="hn-oar-unet")
    a = ap.parse_args()
    if not (DATA / "splits.json").is_file():
        print(f"skipped: {DATA} is absent")
        return 0
    pkg = find_model(a.model)
    if not pkg.card.inference.int8:
        print(f"{pkg.card.name}: the card has no int8 network (tools/quantize_int8.py makes one)")
        return 1
    names = {lab.value: lab.name for lab in pkg.card.labels}
    cases = json.loads((DATA / "splits.json").read_text())["validation"]
    cases = cases if a.all else cases[: a.cases]
    plans = ("float32", "int8")
    dice = {p: {v: [] for v in names} for p in plans}
    seconds, differ = {p: [] for p in plans}, []
    for case in cases:
        images = read_channels(str(DATA / "imagesTr" / f"{case}_0000.nii.gz"), 1)
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "labelsTr" / f"{case}.nii.gz")))
        labels = {}
        for plan in plans:
            os.environ["MEDSEG_INT8"] = "1" if plan == "int8" else "0"
            pred = Predictor(pkg, device="cpu", runtime="openvino")
            assert getattr(pred._openvino, "int8", False) == (plan == "int8"), plan
            t = time.perf_counter()
            labels[plan] = sitk.GetArrayFromImage(pred.predict(images, confidence=False).labels)
            seconds[plan].append(time.perf_counter() - t)
            for v, d in dice_per_organ(labels[plan], ref, list(names)).items():
                dice[plan][v].append(d)
        differ.append(float(np.mean(labels["float32"] != labels["int8"])))
        print(json.dumps({"case": case, **{p: round(seconds[p][-1], 2) for p in plans},
                          "voxels_differ": round(differ[-1], 5)}), flush=True)
    os.environ.pop("MEDSEG_INT8", None)
    print(f"\n{len(cases)} validation cases, {pkg.card.name} {pkg.card.version}\n")
    print("| organ | cases | float32 | int8 | change |\n| --- | --- | --- | --- | --- |")
    for v, n in names.items():
        if dice["float32"][v]:
            f, q = np.mean(dice["float32"][v]), np.mean(dice["int8"][v])
            print(f"| {n} | {len(dice['float32'][v])} | {f:.4f} | {q:.4f} | {q - f:+.4f} |")
    means = {p: np.mean([np.mean(x) for x in dice[p].values() if x]) for p in plans}
    f, q = means["float32"], means["int8"]
    print(f"| mean over organs | | {f:.4f} | {q:.4f} | {q - f:+.4f} |")
    print(f"| median seconds | | {np.median(seconds['float32']):.2f} | {np.median(seconds['int8']):.2f} | |")
    print(f"voxels whose label differs: mean {np.mean(differ):.5f}, most {np.max(differ):.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
