"""Inference benchmark of the bundled ``hn-oar-unet`` model on real CTs.

What is measured, for two cases (the full-size 512 x 512 x 134 chest CT ``lung1_ct`` and the
HNOAR case ``hn_001``, both read from ``../shared/data`` beside the repository):

1. End to end (read, preprocess, infer, resample back, write): each run is a fresh child process
   ``medseg segment CASE --model hn-oar-unet --device DEVICE``. Figures are the per-stage
   ``seconds`` of the report it writes, the wall time of the child (which also counts Python
   start-up, imports and model loading) and the child's peak RSS (from ``/usr/bin/time -v`` when
   present, else from ``os.wait4``'s rusage of that one child).
2. Sliding window only, in this process, on the preprocessed array of each case
   (``Predictor.preprocessor``): our ``sliding_window_predict`` against MONAI's
   ``sliding_window_inference`` with the same network, patch size (from the card), overlap 0.5,
   Gaussian blending (sigma = patch / 8) and window batch size (MONAI's pad value set to ours,
   the image minimum; see the comment in ``theirs``). Runs alternate ours/MONAI
   (ABBA order, after one untimed warm-up forward); the argmax agreement of the two results is
   printed. Skipped if MONAI does not import.
3. The targets for the full-size CT on 2 CPU cores: under 20 s end to end (judged on the wall
   time, which is what a user waits for) and under 3 GB (3e9 bytes) peak RSS; PASS/MISS is
   printed, nothing is asserted.

Usage::

    python benchmarks/inference.py [--device cpu] [--repeats 1] [--sw-repeats 2] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MODEL = "hn-oar-unet"
CASES = {"lung1_ct": DATA / "other-ct" / "lung1_ct.nii.gz",
         "hn_001": DATA / "HNOAR" / "imagesTr" / "hn_001_0000.nii.gz"}
FULL_SIZE_CASE = "lung1_ct"
TARGET_SECONDS = 20.0
TARGET_RSS_BYTES = 3e9
GNU_TIME = Path("/usr/bin/time")


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def medseg_command() -> list[str]:
    exe = Path(sys.executable).with_name("medseg")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "medseg_core"]


def child_env(threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
            env[key] = str(threads)
    return env


def end_to_end(path: Path, device: str, threads: int | None, batch_size: int, model: str = MODEL,
               command: list[str] | None = None, reference: Path | None = None) -> dict:
    """One fresh ``medseg segment`` process (or ``command``, given an output file as its last
    argument, printing its stage seconds as JSON): its seconds, wall seconds and peak RSS (bytes);
    with ``reference`` (a labelmap of ``medseg segment``'s labels) also the mean Dice of what it
    wrote against it, over the labels the reference holds (``dice``)."""
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as tmp:
        out, log, time_file = Path(tmp) / "out", Path(tmp) / "log.txt", Path(tmp) / "time.txt"
        if command is None:
            cmd = medseg_command() + ["segment", str(path), "--model", model, "--output", str(out),
                                      "--device", device, "--batch-size", str(batch_size)]
        else:
            out.mkdir()
            cmd = list(command) + [str(out / "labels.nii.gz")]
        if GNU_TIME.is_file():
            cmd = [str(GNU_TIME), "-v", "-o", str(time_file)] + cmd
        t = time.perf_counter()
        with open(log, "w") as log_f:
            proc = subprocess.Popen(cmd, stdout=log_f, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env(threads))
            # wait4 gives the rusage of this one child; getrusage(RUSAGE_CHILDREN) would be the
            # maximum over every child reaped so far, so a later case would inherit an earlier peak.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        rss_kib, source = usage.ru_maxrss, "os.wait4"  # Linux: KiB
        if time_file.is_file():
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
            if m:
                rss_kib, source = int(m.group(1)), "/usr/bin/time -v"
        if command is None:
            report = json.loads(next(out.glob("*_report.json")).read_text())
        else:
            report = json.loads(log.read_text().strip().splitlines()[-1])
        dice = None if reference is None or command is not None else _mean_dice(
            next(out.glob("*_labels.nii.gz")), reference)
    return {"seconds": report["seconds"], "wall_seconds": round(wall, 3),
            "peak_rss_bytes": rss_kib * 1024, "peak_rss_source": source, "dice": dice}


def _mean_dice(labels: Path, reference: Path) -> float:
    """Mean Dice over the labels ``reference`` holds (the project's :func:`dice_per_value`)."""
    import numpy as np
    import SimpleITK as sitk

    from medseg_core.metrics.overlap import dice_per_value

    a = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))
    values = [int(v) for v in np.unique(b) if v != 0]
    d = dice_per_value(a, b, values)
    return float(np.nanmean(list(d.values()) if isinstance(d, dict) else d))


def compare_sliding_window(paths: dict[str, Path], device: str, repeats: int, batch_size: int) -> dict:
    """Seconds of ours vs MONAI's sliding window on each preprocessed case, and argmax agreement."""
    try:
        import monai
        from monai.inferers import sliding_window_inference
    except Exception as exc:  # optional dependency
        print(f"MONAI does not import ({type(exc).__name__}: {exc}); skipping the sliding-window comparison")
        return {}
    import numpy as np
    import torch

    from medseg_core.inference.predictor import Predictor
    from medseg_core.inference.sliding_window import sliding_window_predict
    from medseg_core.io import read_image
    from medseg_core.models import find_model

    pred = Predictor(find_model(MODEL), device=device, batch_size=batch_size)
    patch, n_classes = tuple(pred.card.patch_size), pred.card.num_classes
    windows = {"ours": 0, "monai": 0}

    def sync():
        if pred.device.type == "cuda":
            torch.cuda.synchronize()

    def forward(key, softmax):
        def f(batch):  # ours gives an array, MONAI a tensor on its device
            windows[key] += batch.shape[0]
            if softmax:
                logits = torch.from_numpy(pred._forward(batch.cpu().numpy()))
                return torch.softmax(logits, dim=1).to(batch.device)
            return pred._forward(batch)
        return f

    pred._forward(np.zeros((1, len(pred.card.channels), *patch), np.float32))  # warm-up, untimed
    print(f"\nSliding window only (MONAI {monai.__version__}; patch {patch}, overlap 0.5, gaussian, "
          f"batch {batch_size}, {repeats} repeat(s) each, ABBA order)")
    results = {}
    for name, path in paths.items():
        array = pred.preprocessor([read_image(path)]).image  # (C, z, y, x)
        image = torch.from_numpy(array)

        def ours():
            return torch.from_numpy(sliding_window_predict(array, forward("ours", False), patch, n_classes,
                                                           overlap=0.5, batch_size=batch_size))

        def theirs():
            # MONAI blends whatever the predictor returns, so it is given softmax probabilities
            # (ours applies the softmax itself). Padding: both pad an axis smaller than the patch
            # symmetrically (the extra voxel after), but MONAI fills with cval (default 0.0, i.e.
            # the normalised mean intensity) where ours fills with the image minimum (air); cval
            # is set to the minimum so both networks see the same padded input. Window starts
            # also differ: MONAI steps by int(patch * (1 - overlap)) and clamps the last window
            # to the edge, ours spreads the same number of windows evenly, so results differ
            # slightly where the windows do not coincide.
            with torch.inference_mode():
                return sliding_window_inference(image[None], patch, batch_size, forward("monai", True),
                                                overlap=0.5, mode="gaussian", sigma_scale=0.125,
                                                cval=float(image.min()), sw_device=pred.device,
                                                device="cpu")[0]

        times, outputs = {"ours": [], "monai": []}, {}
        windows.update(ours=0, monai=0)
        for r in range(repeats):
            order = (("ours", ours), ("monai", theirs))
            for key, fn in order if r % 2 == 0 else order[::-1]:
                sync()
                t = time.perf_counter()
                outputs[key] = fn()
                sync()
                times[key].append(time.perf_counter() - t)
        a, b = outputs["ours"].argmax(0), outputs["monai"].argmax(0)
        agree = float((a == b).float().mean())
        med = {k: statistics.median(v) for k, v in times.items()}
        results[name] = {
            "shape": list(image.shape), "windows": {k: v // repeats for k, v in windows.items()},
            "ours_seconds": [round(x, 3) for x in times["ours"]],
            "monai_seconds": [round(x, 3) for x in times["monai"]],
            "ours_median": round(med["ours"], 3), "monai_median": round(med["monai"], 3),
            "ratio_ours_over_monai": round(med["ours"] / med["monai"], 3), "argmax_agreement": agree,
            "max_abs_probability_difference": float((outputs["ours"] - outputs["monai"]).abs().max()),
        }
        res = results[name]
        print(f"  {name}: array {tuple(image.shape)}, windows ours {res['windows']['ours']} / MONAI "
              f"{res['windows']['monai']}\n"
              f"    ours  {', '.join(f'{x:.2f}' for x in times['ours'])} s (median {med['ours']:.2f})\n"
              f"    MONAI {', '.join(f'{x:.2f}' for x in times['monai'])} s (median {med['monai']:.2f})\n"
              f"    ours/MONAI {res['ratio_ours_over_monai']:.3f}; argmax agreement {100 * agree:.4f}% "
              f"[{mark(agree > 0.999)} >99.9%]; max |p_ours - p_MONAI| {res['max_abs_probability_difference']:.4f}")
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="device for medseg and the comparison (default cpu)")
    p.add_argument("--repeats", type=int, default=1, help="end-to-end runs per case (median reported)")
    p.add_argument("--sw-repeats", type=int, default=2, help="sliding-window runs per method and case")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (medseg's default)")
    p.add_argument("--threads", type=int, help="torch/OpenMP/ITK threads (default: library defaults)")
    p.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    if not DATA.is_dir():
        print(f"{DATA} is absent; nothing to benchmark")
        return 0
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    paths = {k: v for k, v in CASES.items() if v.is_file()}
    for k in CASES.keys() - paths.keys():
        print(f"{CASES[k]} is absent; skipping {k}")
    print(f"medseg inference benchmark: model {MODEL}, device {a.device}, torch {torch.__version__}, "
          f"threads {a.threads or torch.get_num_threads()} (CPU cores {os.cpu_count()}), "
          f"{platform.processor() or platform.machine()}")

    print(f"\nEnd to end (fresh `medseg segment` process per run, {a.repeats} run(s) per case)")
    e2e = {}
    for name, path in paths.items():
        runs = []
        for r in range(a.repeats):
            run = end_to_end(path, a.device, a.threads, a.batch_size)
            runs.append(run)
            stages = ", ".join(f"{k} {v:.2f}" for k, v in run["seconds"].items() if k != "total")
            print(f"  {name} run {r + 1}: wall {run['wall_seconds']:.2f} s, report total "
                  f"{run['seconds']['total']:.2f} s ({stages}), peak RSS "
                  f"{run['peak_rss_bytes'] / 1e9:.2f} GB [{run['peak_rss_source']}]")
        e2e[name] = {"runs": runs,
                     "wall_seconds": statistics.median(x["wall_seconds"] for x in runs),
                     "report_seconds": statistics.median(x["seconds"]["total"] for x in runs),
                     "peak_rss_bytes": statistics.median(x["peak_rss_bytes"] for x in runs)}

    sw = compare_sliding_window(paths, a.device, a.sw_repeats, a.batch_size)

    targets = {}
    if FULL_SIZE_CASE in e2e:
        f = e2e[FULL_SIZE_CASE]
        targets = {"seconds": {"target": TARGET_SECONDS, "value": f["wall_seconds"],
                               "pass": f["wall_seconds"] < TARGET_SECONDS},
                   "peak_rss_bytes": {"target": TARGET_RSS_BYTES, "value": f["peak_rss_bytes"],
                                      "pass": f["peak_rss_bytes"] < TARGET_RSS_BYTES}}

    print(f"\nSummary (medians; targets for {FULL_SIZE_CASE}: < {TARGET_SECONDS:.0f} s wall, "
          f"< {TARGET_RSS_BYTES / 1e9:.0f} GB peak RSS)")
    print(f"{'case':10s} {'wall s':>12s} {'report s':>12s} {'peak RSS GB':>13s} {'ours sw s':>10s} "
          f"{'MONAI sw s':>11s} {'ours/MONAI':>11s} {'argmax agree':>13s}")
    for name in paths:
        e, s = e2e[name], sw.get(name)
        tgt = name == FULL_SIZE_CASE
        wall = f"{e['wall_seconds']:.1f}" + (f" {mark(targets['seconds']['pass'])}" if tgt else "")
        rep = f"{e['report_seconds']:.1f}" + (f" {mark(e['report_seconds'] < TARGET_SECONDS)}" if tgt else "")
        rss = f"{e['peak_rss_bytes'] / 1e9:.2f}" + (f" {mark(targets['peak_rss_bytes']['pass'])}" if tgt else "")
        cmp = (f"{s['ours_median']:10.2f} {s['monai_median']:11.2f} {s['ratio_ours_over_monai']:11.3f} "
               f"{100 * s['argmax_agreement']:12.3f}%") if s else f"{'-':>10s} {'-':>11s} {'-':>11s} {'-':>13s}"
        print(f"{name:10s} {wall:>12s} {rep:>12s} {rss:>13s} {cmp}")

    if a.json:
        doc = {"model": MODEL, "device": a.device, "threads": a.threads or torch.get_num_threads(),
               "cpu_count": os.cpu_count(), "torch": torch.__version__, "batch_size": a.batch_size,
               "end_to_end": e2e, "sliding_window": sw, "targets": targets}
        Path(a.json).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
