"""Issue 16's CPU benchmark: ``medseg segment`` against the MONAI anchor, alternating, and every
bundled model on a HNOAR case, on the CPU.

1. Which CPU it is (model name, AVX2 / AVX-512 / AVX512-BF16 / AMX flags) and which path the
   engine takes on it (bf16 autocast where native, else float32).
2. For the full-size chest CT (``../shared/data/other-ct/lung1_ct.nii.gz``, 512 x 512 x 134), a
   typical HNOAR case (hn_202) and the widest HNOAR validation case (hn_201): ``--repeats``
   rounds, each a fresh ``medseg segment`` child and a fresh ``benchmarks/monai_anchor.py``
   child in alternating order (ABBA); the wall time (which a user
   waits for: start-up, imports, model load, read, compute, write), peak RSS, the median of each
   and the ratio ours / anchor (the issue's target: 1/3 or less), with its other targets (full
   CT under 10 s and 2 GB, HNOAR case under 3 s) marked PASS or MISS.
3. ``--models``: each bundled HNOAR model once on the typical HNOAR case (target: under 10 s each).

Usage::

    python benchmarks/cpu_speed.py [--repeats 3] [--threads 2] [--models] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import DATA, ROOT, end_to_end, mark  # noqa: E402

HN_TYPICAL = "hn_202 (HNOAR, typical: 3 windows)"
HN_WIDEST = "hn_201 (HNOAR, the widest validation case: 4 windows stretched across x)"
CASES = {"lung1_ct (512 x 512 x 134)": DATA / "other-ct" / "lung1_ct.nii.gz",
         HN_TYPICAL: DATA / "HNOAR" / "imagesTr" / "hn_202_0000.nii.gz",
         HN_WIDEST: DATA / "HNOAR" / "imagesTr" / "hn_201_0000.nii.gz"}
TARGETS = {"lung1_ct (512 x 512 x 134)": (10.0, 2e9), HN_TYPICAL: (3.0, None),
           HN_WIDEST: (3.0, None)}
RATIO_TARGET = 1 / 3
MODELS = ["hn-oar-unet", "hn-oar-pgd", "hn-oar-lfam", "hn-oar-focusnet", "hn-oar-lsnet", "hn-oar-dan"]
MODEL_TARGET_S = 10.0


def cpu_features() -> dict:
    flags, name = set(), platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    from medseg_core.inference.device import native_bf16_cpu
    from medseg_core.inference.runtime import openvino_version

    precision = "bf16" if native_bf16_cpu() else "float32"
    ov = openvino_version()
    if ov and precision == "float32" and os.environ.get("MEDSEG_INT8", "").strip() != "0":
        from medseg_core.models import find_model

        if find_model("hn-oar").card.inference.int8:
            precision = "float32, the default model's int8 network (MEDSEG_INT8=0: its float32 one)"
    return {"cpu": name, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "path": f"OpenVINO {ov} in {precision}" if ov else f"PyTorch in {precision}"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", action="store_true", help="also time every bundled HNOAR model once")
    ap.add_argument("--cases", nargs="*", default=None, help="subset of the case names (substring match)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    feats = cpu_features()
    print(f"CPU: {feats['cpu']}; AVX2 {feats['avx2']}, AVX-512 {feats['avx512f']}, AVX512-BF16 "
          f"{feats['avx512_bf16']}, AMX {feats['amx_bf16']}; engine path: {feats['path']}; "
          f"{args.threads} threads")
    anchor = [sys.executable, str(ROOT / "benchmarks" / "monai_anchor.py")]
    results = {"cpu": feats, "threads": args.threads, "cases": {}, "models": {}}
    warm = CASES[HN_TYPICAL]
    if warm.is_file():  # the first run of a model exports it for OpenVINO once; it is not a round
        first = end_to_end(warm, "cpu", args.threads, 1)
        print(f"first run on this machine (untimed round; exports the network once where OpenVINO runs it): "
              f"{first['wall_seconds']:.2f} s")
        results["first_run"] = first
    for name, path in CASES.items():
        if args.cases and not any(c in name for c in args.cases):
            continue
        if not path.is_file():
            print(f"{name}: {path} is absent, skipped")
            continue
        runs = {"ours": [], "anchor": []}
        for r in range(args.repeats):
            order = ("ours", "anchor") if r % 2 == 0 else ("anchor", "ours")
            for who in order:
                cmd = None if who == "ours" else anchor + [str(path), "--threads", str(args.threads)]
                runs[who].append(end_to_end(path, "cpu", args.threads, 1, command=cmd))
        med = {w: statistics.median(x["wall_seconds"] for x in v) for w, v in runs.items()}
        rss = {w: max(x["peak_rss_bytes"] for x in v) for w, v in runs.items()}
        ratio = med["ours"] / med["anchor"]
        t_s, t_rss = TARGETS[name]
        print(f"\n{name}, {args.repeats} rounds, ABBA, fresh processes, wall seconds:")
        for w in runs:
            print(f"  {w:6s}: " + " ".join(f"{x['wall_seconds']:6.2f}" for x in runs[w])
                  + f"  median {med[w]:6.2f} s, peak RSS {rss[w] / 1e9:.2f} GB")
        print(f"  ours stages (last run): {runs['ours'][-1]['seconds']}")
        print(f"  anchor stages (last run): {runs['anchor'][-1]['seconds']}")
        line = f"  ratio ours/anchor {ratio:.3f} (target <= {RATIO_TARGET:.3f}: {mark(ratio <= RATIO_TARGET)}); "
        line += f"ours {med['ours']:.2f} s (target < {t_s:g} s: {mark(med['ours'] < t_s)})"
        if t_rss:
            line += f", {rss['ours'] / 1e9:.2f} GB (target < {t_rss / 1e9:g} GB: {mark(rss['ours'] < t_rss)})"
        print(line)
        results["cases"][name] = {"runs": runs, "median_wall_s": med, "peak_rss_bytes": rss, "ratio": ratio}
    if args.models:
        path = CASES[HN_TYPICAL]
        reference = path.parents[1] / "labelsTr" / path.name.replace("_0000.nii.gz", ".nii.gz")
        print(f"\nEvery bundled HNOAR model on {path.name}, one fresh process each (target < {MODEL_TARGET_S:g} s):")
        for model in MODELS:
            res = end_to_end(path, "cpu", args.threads, 1, model=model, reference=reference)
            ok = res["wall_seconds"] < MODEL_TARGET_S
            print(f"  {model:16s} {res['wall_seconds']:6.2f} s  {mark(ok)}  Dice {res['dice']:.4f}  "
                  f"stages {res['seconds']}")
            results["models"][model] = res
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
