"""The MONAI anchor pipeline that ``benchmarks/cpu_speed.py`` times against ``medseg segment``.

What a careful engineer would write with the field's libraries in an afternoon, and what issue 16
compares against: SimpleITK reads the CT and resamples it (linear) onto the default model's grid
spacing, the intensities are clipped and z-scored as the card says, MONAI's
``sliding_window_inference`` runs a 1.4 M-parameter ``DynUNet`` (filters 16, 32, 64, 128; 3^3
kernels) over 64^3 windows with overlap 0.5 and Gaussian blending, the argmax is resampled
(nearest) back onto the input grid and SimpleITK writes it. The weights are random (seeded): the
time of a network does not depend on its weights, and this is a speed anchor, not a model.

Usage (one fresh process per run, as a user would start it)::

    python benchmarks/monai_anchor.py IMAGE OUTPUT.nii.gz [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

T0 = time.perf_counter()

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402
from monai.networks.nets import DynUNet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "medseg_core" / "models" / "bundled" / "hn-oar-unet" / "card.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image")
    ap.add_argument("output")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    card = json.loads(CARD.read_text())
    pre = card["preprocessing"]
    norm = pre["normalization"][0]
    stages = {"import": time.perf_counter() - T0}

    t = time.perf_counter()
    image = sitk.ReadImage(args.image, sitk.sitkFloat32)
    spacing = [float(s) for s in pre["spacing"]]
    size = [max(1, int(round(n * s / t_))) for n, s, t_ in zip(image.GetSize(), image.GetSpacing(), spacing)]
    resampled = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                              image.GetDirection(), float(norm["clip"][0]), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(resampled)  # (z, y, x)
    arr = (np.clip(arr, *norm["clip"]) - norm["mean"]) / norm["std"]
    stages["read_resample"] = time.perf_counter() - t

    t = time.perf_counter()
    torch.manual_seed(0)
    net = DynUNet(3, 1, len(card["labels"]) + 1, kernel_size=[3] * 4, strides=[1, 2, 2, 2],
                  upsample_kernel_size=[2, 2, 2], filters=[16, 32, 64, 128]).eval()
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
        logits = sliding_window_inference(x, (64, 64, 64), 1, net, overlap=0.5, mode="gaussian")
        labels = logits.argmax(1)[0].to(torch.uint8).numpy()
    stages["network"] = time.perf_counter() - t

    t = time.perf_counter()
    lab = sitk.GetImageFromArray(labels)
    lab.CopyInformation(resampled)
    back = sitk.Resample(lab, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    tmp = Path(args.output).with_name(".tmp-" + Path(args.output).name)
    sitk.WriteImage(back, str(tmp), True)
    os.replace(tmp, args.output)
    stages["resample_write"] = time.perf_counter() - t
    stages["total"] = time.perf_counter() - T0
    print(json.dumps({"seconds": {k: round(v, 3) for k, v in stages.items()},
                      "parameters": sum(p.numel() for p in net.parameters())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
