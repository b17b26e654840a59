"""Quantise a model's network to int8 for OpenVINO on CPUs without native bf16, as a new package.

Post-training quantisation by NNCF (``pip install nncf``; only this tool needs it): the network is
exported for OpenVINO as every CPU run exports it, then calibrated on windows of the card's size
from training cases (every other window along z of the first ``--cases`` of the split's training
cases, each padded as the sliding window pads it); the instance norms, softmax and blending stay
in float32. The int8 IR (``openvino_int8.xml`` / ``.bin``) goes into a copy of the package, the
weights copied byte for byte, and the card records the files' SHA-256 and the calibration
(``inference.int8``), so ``medseg segment`` runs it wherever the CPU computes in float32
(``MEDSEG_INT8=0`` turns it off). Validate the result with ``benchmarks/int8.py``.

    python tools/quantize_int8.py --model hn-oar-unet --data ../shared/data/HNOAR --output DIR [--cases 12]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

XML, BIN = "openvino_int8.xml", "openvino_int8.bin"


def calibration_windows(card, data: Path, cases: int) -> tuple[list[np.ndarray], list[str]]:
    """(1, C, *patch) float32 windows of the first ``cases`` training cases, and the cases' names."""
    from medseg_core.data.preprocess import Preprocessor
    from medseg_core.inference.sliding_window import window_starts
    from medseg_core.io import read_channels

    names = json.loads((data / "splits.json").read_text())["train"][:cases]
    pre, patch, out = Preprocessor(card.preprocessing), list(card.patch_size), []
    for name in names:
        image = pre(read_channels(str(data / "imagesTr" / f"{name}_0000.nii.gz"), len(card.channels))).image
        pad = [max(0, p - s) for s, p in zip(image.shape[1:], patch)]
        image = np.pad(image, [(0, 0)] + [(p // 2, p - p // 2) for p in pad], constant_values=float(image.min()))
        for z in window_starts(image.shape[1], patch[0], 0.5)[::2]:
            window = image[:, z:z + patch[0], :patch[1], :patch[2]]
            out.append(np.ascontiguousarray(window[None], dtype=np.float32))
    return out, names


def main() -> int:
    import nncf
    import openvino as ov

    from medseg_core.inference.runtime import export
    from medseg_core.io.atomic import atomic_folder
    from medseg_core.models import find_model
    from medseg_core.models.package import sha256_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hn-oar-unet")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "HNOAR"))
    ap.add_argument("--cases", type=int, default=12, help="training cases to calibrate on")
    ap.add_argument("--output", required=True, help="the new package folder (must not exist)")
    a = ap.parse_args()
    pkg = find_model(a.model)
    card = pkg.card
    if card.spatial_dims != 3 or card.network.name == "routed":
        print(f"medseg: error: {card.name}: only a plain 3D network is quantised", file=sys.stderr)
        return 2
    window = (len(card.channels), *card.patch_size)
    t = time.perf_counter()
    xml = export(pkg.build("cpu").eval(), window, card.weights.sha256)
    model = ov.Core().read_model(str(xml))
    model.reshape([1, *window])
    windows, names = calibration_windows(card, Path(a.data), a.cases)
    quantised = nncf.quantize(model, nncf.Dataset(windows), subset_size=len(windows),
                              preset=nncf.QuantizationPreset.MIXED)
    seconds = time.perf_counter() - t
    output = Path(a.output)
    with atomic_folder(output) as tmp:
        for f in pkg.path.iterdir():
            if f.is_file() and f.name not in ("card.json", XML, BIN):
                shutil.copy2(f, tmp / f.name)
        ov.save_model(quantised, str(tmp / XML), compress_to_fp16=False)
        raw = json.loads((pkg.path / "card.json").read_text())
        raw["inference"]["int8"] = {
            "files": {XML: sha256_file(tmp / XML), BIN: sha256_file(tmp / BIN)},
            "calibration": f"{len(windows)} windows of {card.patch_size} from {len(names)} training cases "
                           f"({names[0]}..{names[-1]}), NNCF {nncf.__version__} post-training, mixed preset",
            "openvino": ov.__version__.split("-")[0]}
        (tmp / "card.json").write_text(json.dumps(raw, indent=1) + "\n")
    print(f"{output}: int8 network from {len(windows)} calibration windows in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
