"""Two ways of running inference on the CPU side by side: speed and Dice on HNOAR.

For each validation case of ``../shared/data/HNOAR`` (``splits.json``), the model predicts once
in each of two ``--modes`` in this process, the order alternating from case to case so that
machine noise falls on both. A mode is ``PRECISION`` or ``RUNTIME:PRECISION``: ``float32`` or
``bf16`` (the default on CPUs that compute bf16 natively, see
``medseg_core.inference.device.native_bf16_cpu``) on the runtime ``auto`` picks, or ``torch`` /
``openvino`` named (``torch:bf16,openvino:bf16`` compares the two runtimes in bf16). Printed: the
prediction seconds of each, their ratio, the share of voxels whose label differs, and per-organ
Dice against the clinical contours for both (organs not contoured in a case are left out).

With ``--against OTHER`` the two runs are ``--model`` and ``OTHER`` (a name or a package
folder), each at the default precision: e.g. a package stored in int8 against its float16 one.

Usage::

    python benchmarks/precision.py [--model hn-oar-unet] [--modes float32,bf16] [--against OTHER]
        [--cases N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "HNOAR"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hn-oar-unet")
    ap.add_argument("--modes", default="float32,bf16", help="the two modes, [RUNTIME:]PRECISION each")
    ap.add_argument("--against", help="compare --model with this model instead of two modes")
    ap.add_argument("--cases", type=int, default=0, help="first N validation cases (0: all)")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    if not DATA.is_dir():
        print(f"{DATA} not found: nothing to measure")
        return
    import SimpleITK as sitk
    import torch

    from medseg_core.inference.device import native_bf16_cpu
    from medseg_core.inference.predictor import Predictor
    from medseg_core.io import read_image
    from medseg_core.metrics import dice
    from medseg_core.models import find_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, native bf16: {native_bf16_cpu()}")
    cases = json.loads((DATA / "splits.json").read_text())["validation"]
    cases = cases[: a.cases] if a.cases else cases
    def predictor(model: str, mode: str = "auto:default") -> Predictor:
        runtime, _, precision = mode.rpartition(":")
        if precision == "float32":
            os.environ["MEDSEG_CPU_BF16"] = "0"  # read when the predictor is built
        try:
            return Predictor(find_model(model), device="cpu", runtime=runtime or "auto")
        finally:
            os.environ.pop("MEDSEG_CPU_BF16", None)

    if a.against:
        modes = {a.model: predictor(a.model), a.against: predictor(a.against)}
    else:
        modes = {m: predictor(a.model, m) for m in a.modes.split(",")}
    for mode, p in modes.items():
        print(f"{mode}: {p.runtime}, {'bf16' if p.amp else 'float32'}")
    pred = next(iter(modes.values()))
    first, second = list(modes)
    names = {lab.value: lab.name for lab in pred.card.labels}
    seconds = {m: [] for m in modes}
    dices = {m: {n: [] for n in names.values()} for m in modes}
    differ = []
    for i, case in enumerate(cases):
        img = read_image(DATA / "imagesTr" / f"{case}_0000.nii.gz")
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "labelsTr" / f"{case}.nii.gz")))
        labels = {}
        for mode in (modes if i % 2 == 0 else list(modes)[::-1]):
            t = time.perf_counter()
            res = modes[mode].predict([img], confidence=False)
            seconds[mode].append(time.perf_counter() - t)
            labels[mode] = sitk.GetArrayFromImage(res.labels)
            for value, name in names.items():
                if (ref == value).any():
                    dices[mode][name].append(dice(labels[mode] == value, ref == value))
        differ.append(float((labels[first] != labels[second]).mean()))
        print(f"{case}: {first} {seconds[first][-1]:.2f} s, {second} {seconds[second][-1]:.2f} s, "
              f"labels differ on {differ[-1] * 100:.4f}% of voxels", flush=True)
    figures = {"model": a.model, "cases": len(cases), "native_bf16": native_bf16_cpu(),
               "median_seconds": {m: round(statistics.median(v), 3) for m, v in seconds.items()},
               "modes": [first, second],
               "second_over_first": round(statistics.median(b / f for b, f in zip(seconds[second], seconds[first])), 3),
               "voxels_differing_mean": float(np.mean(differ)),
               "dice": {m: {n: round(float(np.mean(v)), 4) if v else None for n, v in d.items()} for m, d in dices.items()}}
    for m in modes:
        per_organ = [v for v in figures["dice"][m].values() if v is not None]
        figures["dice"][m]["mean"] = round(float(np.mean(per_organ)), 4)
    print(f"\n{a.model} on {len(cases)} validation cases (2 runs each, alternating order)")
    print(f"predict median: {first} {figures['median_seconds'][first]} s, {second} {figures['median_seconds'][second]} s, "
          f"ratio {figures['second_over_first']}")
    print(f"labels differing: {figures['voxels_differing_mean'] * 100:.4f}% of voxels on average")
    print(f"{'organ':14s} {first[:12]:>12s} {second[:12]:>12s}")
    for name in list(names.values()) + ["mean"]:
        f, b = figures["dice"][first][name], figures["dice"][second][name]
        print(f"{name:14s} {f:12.4f} {b:12.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
