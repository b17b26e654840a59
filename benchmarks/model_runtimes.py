"""One bundled model end to end with each runtime, side by side: ``medseg segment`` of a HNOAR case
in fresh processes with ``MEDSEG_RUNTIME=torch`` and ``auto`` (OpenVINO where it can run the
model: the whole network, or its trunk as for FocusNet), alternating, ``--rounds`` each; then,
where the network has a trunk (:meth:`~medseg_core.nets.base.SegNetwork.trunk`), one window of it
in PyTorch and in OpenVINO, one window at a time (median seconds of 20). The Dice of each
runtime's result against the case's reference contours is printed beside its time: the two must
agree (an export traced at a small input once made PGD-UNet fast on OpenVINO and wrong, Dice 0.01).

Prints the CPU and the path (bf16 where native, else float32; ``MEDSEG_CPU_BF16=0`` forces
float32, ``ONEDNN_MAX_CPU_ISA=AVX2`` emulates a CPU without AVX-512), every wall time, the medians
and the ratio auto / torch.

Usage::

    python benchmarks/model_runtimes.py [--model hn-oar-focusnet] [--case hn_202] [--rounds 3]
                                        [--threads 2] [--batch-size 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_speed import cpu_features  # noqa: E402
from inference import DATA, end_to_end  # noqa: E402


def trunk_seconds(model: str, threads: int, rounds: int = 20) -> dict | None:
    """Median seconds of one window of the model's trunk in PyTorch and in OpenVINO, or None."""
    import numpy as np
    import torch

    from medseg_core.inference.device import use_bf16
    from medseg_core.inference.runtime import openvino_version, trunk_windows
    from medseg_core.models import find_model

    torch.set_num_threads(threads)
    pkg = find_model(model)
    net = pkg.build("cpu")
    trunk = net.trunk()
    if trunk is None or openvino_version() is None:
        return None
    patch = tuple(pkg.card.patch_size)
    window = (len(pkg.card.channels), *patch)
    x = np.random.default_rng(0).standard_normal((1, *window)).astype(np.float32)
    bf16 = use_bf16("cpu")
    ov = trunk_windows(net, pkg.card, window, bf16)  # as many threads as PyTorch was given
    t = torch.from_numpy(x)

    def torch_run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            trunk(t)

    out = {}
    for name, run in (("torch", torch_run), ("openvino", lambda: ov(x))):
        for _ in range(3):
            run()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="hn-oar-focusnet")
    ap.add_argument("--case", default="hn_202")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    args = ap.parse_args(argv)
    feats = cpu_features()
    print(f"CPU: {feats['cpu']}; AVX2 {feats['avx2']}, AVX-512 {feats['avx512f']}, "
          f"AVX512-BF16 {feats['avx512_bf16']}, AMX {feats['amx_bf16']}; {args.threads} threads; "
          f"path: {feats['path']}")
    path = DATA / "HNOAR" / "imagesTr" / f"{args.case}_0000.nii.gz"
    if not path.is_file():
        print(f"{path}: not found (the benchmark needs ../shared/data)")
        return 1
    walls: dict[str, list[float]] = {"torch": [], "auto": []}
    dices: dict[str, list[float]] = {"torch": [], "auto": []}
    reference = DATA / "HNOAR" / "labelsTr" / f"{args.case}.nii.gz"
    saved = os.environ.get("MEDSEG_RUNTIME")
    try:
        for r in range(args.rounds):
            for runtime in (("torch", "auto") if r % 2 == 0 else ("auto", "torch")):
                os.environ["MEDSEG_RUNTIME"] = runtime
                res = end_to_end(path, "cpu", args.threads, args.batch_size, model=args.model, reference=reference)
                walls[runtime].append(res["wall_seconds"])
                dices[runtime].append(res["dice"])
                print(f"  {runtime:5s} {res['wall_seconds']:6.2f} s  Dice {res['dice']:.4f}  stages {res['seconds']}",
                      flush=True)
    finally:
        os.environ.pop("MEDSEG_RUNTIME", None) if saved is None else os.environ.update(MEDSEG_RUNTIME=saved)
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"{args.model} on {args.case}, batch {args.batch_size}, fresh processes: torch median {med['torch']:.2f} s, "
          f"auto median {med['auto']:.2f} s, ratio auto/torch {med['auto'] / med['torch']:.2f}")
    # the runtimes must agree: an export that froze a size-dependent constant once ran fast and wrong
    print(f"mean Dice against {reference.name}: torch {dices['torch'][0]:.4f}, auto {dices['auto'][0]:.4f} "
          f"(difference {dices['auto'][0] - dices['torch'][0]:+.4f})")
    trunk = trunk_seconds(args.model, args.threads)
    if trunk:
        print(f"one window of the trunk: PyTorch {trunk['torch'] * 1e3:.1f} ms, "
              f"OpenVINO {trunk['openvino'] * 1e3:.1f} ms ({trunk['torch'] / trunk['openvino']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
