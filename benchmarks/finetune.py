"""Fine-tuning benchmark: one corrected real head-and-neck CT, the bundled ``hn-oar-unet``, a CPU.

What is measured:

1. One HNOAR validation case (default: the first of ``splits.json``'s validation list) plays
   the corrected case: its reference labelmap is the "correction" (organs absent from it were not
   contoured, so they are not trained on, as in ``medseg finetune``). ``finetune`` runs with the
   default recipe on the CPU with 2 threads; the wall time of the call is the fine-tune time
   (target: under 30 s, issue 17; it includes loading, both Dice evaluations and saving). The
   parent's OpenVINO export is made first, outside the timing, as a user who segmented the case
   before correcting it has it in the cache (``--cold``: not).
2. Dice on that case, before -> after (the figures ``finetune`` reports: model grid, labels
   present in the reference). Target: improves.
3. Mean Dice on held-out validation cases (default: a fixed subset, the first ``--n`` = 8 of the
   other validation cases; ``--all`` for all of them), parent -> fine-tuned model, on the model
   grid (the card's preprocessing; this dataset's spacing is the model's, so the model grid is
   the input grid cropped to the body): per organ the mean over cases that contain it, then the
   mean over organs. Target: drops by at most 0.02.

``MEDSEG_HOME`` is set to a temporary folder, so nothing lands in the real user model folder.
PASS/MISS is printed; nothing is asserted. Needs ``../shared/data/HNOAR`` beside the repository
and exits 0 with a message when it is absent. About 3-5 minutes on 2 cores with ``--n 8``.

Usage::

    python benchmarks/finetune.py [--case hn_201] [--n 8 | --all] [--threads 2] [--steps S] [--lr LR]
                                  [--train-all] [--no-bf16] [--cold] [--keep] [--json OUT]
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "HNOAR"
MODEL = "hn-oar-unet"
TARGET_SECONDS = 30.0
TARGET_DROP = 0.02


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


class StageClock:
    """A progress callback that adds up wall and CPU seconds per stage (both evaluations
    together under "evaluate")."""

    def __init__(self):
        self.stage, self.t, self.c = None, time.perf_counter(), time.process_time()
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, stage, fraction, message="", eta_s=None):
        if stage != self.stage:
            t, c = time.perf_counter(), time.process_time()
            if self.stage is not None:
                self.wall[self.stage] = self.wall.get(self.stage, 0.0) + t - self.t
                self.cpu[self.stage] = self.cpu.get(self.stage, 0.0) + c - self.c
            self.stage, self.t, self.c = stage, t, c

    def summary(self) -> str:
        return ", ".join(f"{k} {self.wall[k]:.1f} s ({self.cpu[k]:.1f} s CPU)" for k in self.wall)


def heldout_dice(predictor, cases: list[dict], names: dict[int, str]) -> tuple[float, dict[str, float]]:
    """Mean over organs of the per-organ mean Dice over the cases that contain the organ."""
    import numpy as np

    from medseg_core.metrics.overlap import dice_per_value

    per = {v: [] for v in names}
    for c in cases:
        labels = np.asarray(predictor.predict_array(c["image"])[0]).argmax(0)
        for v, d in dice_per_value(labels, c["label"], list(names)).items():
            per[v].append(d)
    per_label = {names[v]: float(np.mean(d)) for v, d in per.items() if d}
    return float(np.mean(list(per_label.values()))), per_label


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", help="the corrected case (default: the first validation case)")
    ap.add_argument("--n", type=int, default=8, help="held-out cases (the first N other validation cases)")
    ap.add_argument("--all", action="store_true", help="hold out every other validation case")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    ap.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    ap.add_argument("--train-all", action="store_true", help="also train the encoder")
    ap.add_argument("--no-bf16", action="store_true",
                    help="train in float32 even where the CPU computes bfloat16 natively (MEDSEG_CPU_BF16=0)")
    ap.add_argument("--cold", action="store_true",
                    help="time the parent's OpenVINO export too (by default it is made before the timing)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary MEDSEG_HOME and the new package")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()

    if not (DATA / "splits.json").is_file():
        print(f"skipped: {DATA} is absent (the HNOAR dataset is needed)")
        return 0
    home = tempfile.mkdtemp(prefix="medseg-ft-bench-")
    os.environ["MEDSEG_HOME"] = home  # before anything reads it: no package reaches ~/.medseg
    if a.no_bf16:
        os.environ["MEDSEG_CPU_BF16"] = "0"
    try:
        return run(a, home)
    finally:
        if not a.keep:
            shutil.rmtree(home, ignore_errors=True)


def run(a, home: str) -> int:
    import numpy as np
    import SimpleITK as sitk
    import torch

    from medseg_core.training.finetune import DEFAULT_LR, finetune
    from medseg_core.inference.predictor import Predictor
    from medseg_core.models import find_model, load_package

    torch.set_num_threads(a.threads)
    val = json.loads((DATA / "splits.json").read_text())["validation"]
    case = a.case or val[0]
    others = [c for c in val if c != case]
    held = others if a.all else others[: a.n]
    img = DATA / "imagesTr" / f"{case}_0000.nii.gz"
    lab = DATA / "labelsTr" / f"{case}.nii.gz"
    print(f"corrected case {case}; held-out {len(held)} case(s); {a.threads} thread(s); "
          f"steps {a.steps or 'sized from the correction'}, lr {a.lr or DEFAULT_LR}; MEDSEG_HOME={home}")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work slows the timing)")

    parent = Predictor(find_model(MODEL), device="cpu")  # it scores the held-out cases after
    if not a.cold:  # one window makes the export a user's earlier `medseg segment` left in the cache
        parent.predict_array(np.zeros((len(parent.card.channels), *parent.card.patch_size), np.float32))
    clock = StageClock()
    t0, c0 = time.perf_counter(), time.process_time()
    res = finetune(MODEL, [(img, lab)], steps=a.steps, lr=a.lr, device="cpu", train_all=a.train_all,
                   progress=clock)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    clock("end", 1.0)
    ft = load_package(res.package_dir).card.training["finetune"]
    print(f"precision {ft['precision']}, patch {ft['patch_size']}, encoder frozen {ft['encoder_frozen']}")
    load1 = os.getloadavg()[0]

    names = parent.card.label_names()
    cases = []
    for c in held:
        image = sitk.ReadImage(str(DATA / "imagesTr" / f"{c}_0000.nii.gz"))
        label = sitk.ReadImage(str(DATA / "labelsTr" / f"{c}.nii.gz"))
        pre = parent.preprocessor([image], label)
        cases.append({"image": pre.image, "label": pre.label})
    t = time.perf_counter()
    before, per_before, after, per_after = float("nan"), {}, float("nan"), {}
    if cases:
        before, per_before = heldout_dice(parent, cases, names)
        after, per_after = heldout_dice(Predictor(load_package(res.package_dir), device="cpu"), cases, names)
    eval_s = time.perf_counter() - t

    drop = before - after
    print(f"\nfine-tune: {wall:.1f} s wall ({cpu:.1f} s CPU; load average {load1:.1f} on {os.cpu_count()} cores); "
          f"target < {TARGET_SECONDS:.0f} s: {mark(wall < TARGET_SECONDS)}")
    print(f"    {clock.summary()}")
    print(f"corrected case {case}: Dice {res.dice_before:.4f} -> {res.dice_after:.4f} "
          f"({res.dice_after - res.dice_before:+.4f}); target: improves: {mark(res.dice_after > res.dice_before)}")
    for n, d in res.per_label.items():
        print(f"    {n:14s} {d['before']:.4f} -> {d['after']:.4f}")
    if held:
        print(f"held-out ({len(held)} case(s)): mean Dice {before:.4f} -> {after:.4f} ({-drop:+.4f}); "
              f"target: drop <= {TARGET_DROP}: {mark(drop <= TARGET_DROP)}   [{eval_s:.0f} s]")
    for n in per_before:
        print(f"    {n:14s} {per_before[n]:.4f} -> {per_after.get(n, float('nan')):.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "case": case, "heldout": held, "threads": a.threads, "steps": res.steps, "lr": ft["lr"],
            "patch_size": ft["patch_size"], "encoder_frozen": ft["encoder_frozen"], "precision": ft["precision"],
            "seconds": wall, "parent_export_timed": a.cold, "cpu_seconds": cpu, "stage_seconds": clock.wall,
            "stage_cpu_seconds": clock.cpu,
            "load_average": load1, "dice_before": res.dice_before, "dice_after": res.dice_after,
            "per_label": res.per_label, "heldout_before": before, "heldout_after": after,
            "heldout_per_label": {n: {"before": per_before[n], "after": per_after.get(n)} for n in per_before},
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
