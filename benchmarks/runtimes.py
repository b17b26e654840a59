"""The default network's forward in PyTorch, OpenVINO and ONNX Runtime on the CPU, side by side.

One 64 x 96 x 128 window of a real HNOAR case (preprocessed by the predictor), the network of the
bundled ``hn-oar-unet`` (logits only), ``--rounds`` rounds in rotating order after one untimed
warm-up each; per runtime the median seconds per window, the largest logit difference from
PyTorch (float32) and the argmax agreement. Where the CPU has native bf16, PyTorch also runs under
bf16 autocast and OpenVINO with its precision hint at bf16 as well as f32 (what the engine runs
there: bf16). A runtime that does not import is reported and skipped: neither is a dependency.

Usage::

    python benchmarks/runtimes.py [--threads 2] [--rounds 5] [--batch 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_speed import cpu_features  # noqa: E402
from inference import DATA  # noqa: E402

CASE = DATA / "HNOAR" / "imagesTr" / "hn_201_0000.nii.gz"


def window(pred, batch: int) -> torch.Tensor:
    from medseg_core.io import read_image

    patch = tuple(pred.card.patch_size)
    if CASE.is_file():
        img = torch.from_numpy(pred.preprocessor([read_image(CASE)]).image)
        c = [max(0, (n - p) // 2) for n, p in zip(img.shape[1:], patch)]
        x = img[:, c[0]:c[0] + patch[0], c[1]:c[1] + patch[1], c[2]:c[2] + patch[2]]
        x = torch.nn.functional.pad(x, [0, patch[2] - x.shape[3], 0, patch[1] - x.shape[2], 0, patch[0] - x.shape[1]],
                                    value=float(img.min()))
    else:
        x = torch.randn(1, *patch)
    return x[None].expand(batch, *x.shape).contiguous()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from medseg_core.inference.predictor import Predictor
    from medseg_core.inference.runtime import export_onnx, logits_only
    from medseg_core.models import find_model

    feats = cpu_features()
    print(f"CPU: {feats['cpu']}; AVX512-BF16 {feats['avx512_bf16']}, AMX {feats['amx_bf16']}; {args.threads} threads")
    pred = Predictor(find_model("hn-oar-unet"), device="cpu")
    model = logits_only(pred.net.float().eval())
    x = window(pred, args.batch)
    with torch.inference_mode():
        ref = model(x).numpy()
    runs: dict[str, callable] = {}

    def torch_run():
        with torch.inference_mode():
            return model(x).numpy()
    runs["pytorch"] = torch_run
    native = feats["avx512_bf16"] or feats["amx_bf16"]
    if native:
        def torch_bf16():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x).float().numpy()
        runs["pytorch (bf16 autocast)"] = torch_bf16

    try:
        import openvino as ov

        core = ov.Core()
        ov_model = ov.convert_model(model, example_input=x)
        hints = [("f32", {"INFERENCE_PRECISION_HINT": "f32"})]
        if native:
            hints.append(("bf16", {"INFERENCE_PRECISION_HINT": "bf16"}))
        for tag, cfg in hints:
            compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_NUM_THREADS": args.threads, **cfg})
            runs[f"openvino {ov.__version__} ({tag})"] = (lambda c=compiled: c(x.numpy())[0])
    except Exception as exc:  # optional
        print(f"OpenVINO skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")

    try:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "net.onnx"
            export_onnx(pred.net, tuple(x.shape[1:]), path)
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        runs[f"onnxruntime {ort.__version__}"] = lambda: sess.run(None, {"x": x.numpy()})[0]
    except Exception as exc:  # optional
        print(f"ONNX Runtime skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")

    times = {k: [] for k in runs}
    diffs = {}
    for k, f in runs.items():  # warm-up, and the agreement with PyTorch
        out = f()
        diffs[k] = (float(np.abs(out - ref).max()), float((out.argmax(1) == ref.argmax(1)).mean()))
    names = list(runs)
    for r in range(args.rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["pytorch"])
    print(f"\nwindow {tuple(x.shape)}, {args.rounds} rounds, rotating order; seconds per window (median):")
    for k in names:
        m = statistics.median(times[k])
        print(f"  {k:34s} {m:7.3f} s  x{base / m:5.2f} vs PyTorch   max |logit diff| {diffs[k][0]:.2e}  "
              f"argmax agreement {100 * diffs[k][1]:.4f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
