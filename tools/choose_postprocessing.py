"""Choose, per organ, whether a model keeps only the largest connected component, as nnU-Net
does: segment the validation split once, score every organ with all its components and with the
largest only, and keep the largest where that raises the organ's mean Dice. Prints Dice and HD95
before and after per organ; with ``--output DIR`` writes the model with the choice in its card
(``inference.largest_component``) as a new package: the weights copied byte for byte.

    python tools/choose_postprocessing.py --model hn-oar-unet --data ../shared/data/HNOAR [--cases N]
                                          [--output DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import SimpleITK as sitk

    from medseg_core.inference.postprocess import keep_largest_components
    from medseg_core.inference.predictor import Predictor
    from medseg_core.io import read_channels
    from medseg_core.metrics import dice, hd95
    from medseg_core.models import find_model

    ap = validation_arguments(__doc__, "hn-oar-unet", "write the model with the chosen rule here")
    a = ap.parse_args()
    data, cases = Path(a.data), validation_cases(Path(a.data), a.cases)
    pkg = find_model(a.model)
    card = copy.deepcopy(pkg.card)
    card.inference.largest_component = []  # score the network's own output
    pred = Predictor(pkg, device="cpu")
    labels = [(lab.value, lab.name) for lab in card.labels]
    scores = {v: {"all": [], "largest": [], "hd_all": [], "hd_largest": []} for v, _ in labels}
    t0 = time.perf_counter()
    for i, case in enumerate(cases):
        images = read_channels(str(data / "imagesTr" / f"{case}_0000.nii.gz"), len(card.channels))
        ref_img = sitk.ReadImage(str(data / "labelsTr" / f"{case}.nii.gz"))
        ref = sitk.GetArrayFromImage(ref_img)
        out = pred.predict(images, confidence=False).labels
        largest = sitk.GetArrayFromImage(keep_largest_components(out, [v for v, _ in labels]))
        raw = sitk.GetArrayFromImage(out)
        spacing = ref_img.GetSpacing()[::-1]
        for v, _ in labels:
            if not (ref == v).any():
                continue  # not contoured in this case
            for key, arr in (("all", raw), ("largest", largest)):
                scores[v][key].append(dice(arr == v, ref == v))
                if (arr == v).any():
                    scores[v]["hd_" + key].append(hd95(arr == v, ref == v, spacing))
        print(f"{i + 1}/{len(cases)} {case} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    chosen, rows = [], []
    for v, name in labels:
        s = scores[v]
        if not s["all"]:
            continue
        before, after = float(np.mean(s["all"])), float(np.mean(s["largest"]))
        keep = after > before
        if keep:
            chosen.append(v)
        rows.append((name, len(s["all"]), before, after, _median(s["hd_all"]), _median(s["hd_largest"]), keep))
    print("| organ | cases | Dice, all components | Dice, largest | HD95 median mm, all | HD95 median mm, largest "
          "| keep the largest |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, n, before, after, hd_b, hd_a, keep in rows:
        print(f"| {name} | {n} | {before:.4f} | {after:.4f} | {hd_b:.1f} | {hd_a:.1f} | {'yes' if keep else 'no'} |")
    mean_before = np.mean([r[2] for r in rows])
    mean_after = np.mean([r[3] if r[6] else r[2] for r in rows])
    print(f"\nmean Dice {mean_before:.4f} -> {mean_after:.4f} with the largest component kept for "
          f"{', '.join(n for n, *_, k in rows if k) or 'no organ'}")
    if a.output:
        write_with_rule(pkg.path, chosen, Path(a.output))
        print(f"wrote {a.output}")
    return 0


def validation_arguments(doc: str, model: str, output_help: str) -> argparse.ArgumentParser:
    """The options the tools that choose a card's setting on the validation split share: ``--model``,
    ``--data``, ``--cases``, ``--output``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", default=model)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "HNOAR"))
    ap.add_argument("--cases", type=int, default=0, help="the first N validation cases (0: all)")
    ap.add_argument("--output", help=f"{output_help} (a new package folder)")
    return ap


def validation_cases(data: Path, first: int = 0) -> list[str]:
    """The validation cases of the nnU-Net dataset ``data`` (its ``splits.json``), the first
    ``first`` of them where that is not 0."""
    cases = json.loads((data / "splits.json").read_text())["validation"]
    return cases[:first] if first else cases


def write_with_rule(package: Path, largest: list[int], output: Path) -> None:
    """A copy of ``package`` whose card names ``largest`` (everything else byte for byte, the
    weights file too, so its SHA-256 still holds), written all or nothing."""
    card = json.loads((package / "card.json").read_text())
    if largest:
        card["inference"]["largest_component"] = [int(v) for v in largest]
    else:
        card["inference"].pop("largest_component", None)
    write_with_card(package, card, output)


def write_with_card(package: Path, card: dict, output: Path) -> None:
    """A copy of ``package`` with the card ``card`` (every other file byte for byte, the weights
    too, so their SHA-256 still holds), written all or nothing."""
    import shutil

    from medseg_core.io.atomic import atomic_folder

    with atomic_folder(output) as tmp:
        for f in package.iterdir():
            if f.is_file() and f.name != "card.json":
                shutil.copy2(f, tmp / f.name)
        (tmp / "card.json").write_text(json.dumps(card, indent=1) + "\n")


def _median(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
