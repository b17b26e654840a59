"""How fast a refine answers: cold (a fresh ``medseg refine`` process) against warm (the
``medseg worker`` the Slicer module keeps, model loaded and image cached), on HNOAR validation
cases, with the share of each stage. Every refine erases one organ from the model's result and
places one point at the reference's centroid. Needs ../shared/data/HNOAR.

    python benchmarks/refine_speed.py [--cases 2] [--model hn-oar] [--repeats 1]

Warm times are measured from writing the request to reading its result line, as the module
sees them; the stage shares come from the engine's own ``STEM_refine.json`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "HNOAR"
STAGES = ("read", "infer", "edit", "write")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
                return f"{line.split(':', 1)[1].strip()} ({'bf16' if bf16 else 'no bf16'})"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def prompts_for(case: str, work: Path, model: str) -> list[tuple[str, dict]]:
    """(labels file with the organ erased, the prompt) per organ of the model's result."""
    import SimpleITK as sitk

    from medseg_core.segment import segment_files

    image = DATA / "imagesTr" / f"{case}_0000.nii.gz"
    report = segment_files([image], model, work / case, device="cpu", confidence=False)[0]
    result = sitk.ReadImage(report["outputs"]["labels"])
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "labelsTr" / f"{case}.nii.gz")))
    model_arr = sitk.GetArrayFromImage(result)
    out = []
    for lab in report_labels(model):
        if not (ref == lab.value).any():
            continue
        erased = model_arr.copy()
        erased[erased == lab.value] = 0
        path = work / f"{case}_{lab.value}.nii.gz"
        img = sitk.GetImageFromArray(erased)
        img.CopyInformation(result)
        sitk.WriteImage(img, str(path))
        point = result.TransformContinuousIndexToPhysicalPoint(np.argwhere(ref == lab.value).mean(0)[::-1].tolist())
        out.append((str(path), {"label": lab.name, "point": list(point)}))
    return out


def report_labels(model: str):
    from medseg_core.models import find_model

    return find_model(model).card.labels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--model", default="hn-oar")
    ap.add_argument("--repeats", type=int, default=1, help="warm refines per prompt")
    a = ap.parse_args()
    if not (DATA / "splits.json").is_file():
        print(f"skipped: {DATA} is absent")
        return 0
    cases = json.loads((DATA / "splits.json").read_text())["validation"][: a.cases]
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    print(f"CPU: {cpu_name()}, {threads} threads; model {a.model}")
    work = Path(tempfile.mkdtemp(prefix="medseg-refine-speed-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        jobs = [(case, *p) for case in cases for p in prompts_for(case, work, a.model)]
        # cold: one fresh process per refine (the first job of each case)
        cold = []
        for case in cases:
            _, labels, prompt = next(j for j in jobs if j[0] == case)
            image = DATA / "imagesTr" / f"{case}_0000.nii.gz"
            p = prompt["point"]
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "medseg_core", "refine", str(image), "--model", a.model, "--labels",
                            labels, "--output", str(work / "cold"), "--overwrite", "--device", "cpu",
                            "--prompt", f"{prompt['label']}:point:{p[0]},{p[1]},{p[2]}"], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            cold.append(time.perf_counter() - t)
        # warm: one worker, as the module keeps it
        worker = subprocess.Popen([sys.executable, "-m", "medseg_core", "worker"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)
        first, warm, shares = {}, [], {s: [] for s in STAGES}
        rid = 0
        for case, labels, prompt in jobs:
            image = str(DATA / "imagesTr" / f"{case}_0000.nii.gz")
            for _ in range(a.repeats + (1 if case not in first else 0)):
                rid += 1
                req = {"id": str(rid), "command": "refine",
                       "args": {"input": image, "model": a.model, "labels": labels, "output": str(work / "warm"),
                                "overwrite": True, "device": "cpu", "prompts": [prompt]}}
                t = time.perf_counter()
                worker.stdin.write(json.dumps(req) + "\n")
                worker.stdin.flush()
                while True:
                    event = json.loads(worker.stdout.readline())
                    if event["event"] in ("result", "error"):
                        break
                seconds = time.perf_counter() - t
                if event["event"] == "error":
                    raise SystemExit(f"refine failed: {event['message']}")
                if case not in first:
                    first[case] = seconds  # the model (first case only) and the image are loaded here
                    continue
                warm.append(seconds)
                rec = event["outputs"]["seconds"]
                for s in STAGES:
                    shares[s].append(rec.get(s, 0.0) / max(seconds, 1e-9))
        worker.stdin.write(json.dumps({"id": "end", "command": "shutdown"}) + "\n")
        worker.stdin.flush()
        worker.wait(timeout=30)
        print(f"cold (a fresh medseg refine process): {', '.join(f'{c:.1f}' for c in cold)} s")
        print(f"worker, first refine of a case (model and image loaded): "
              f"{', '.join(f'{v:.2f}' for v in first.values())} s")
        print(f"warm: median {np.median(warm):.2f} s, max {max(warm):.2f} s over {len(warm)} refines; "
              f"{sum(w < 1.0 for w in warm)} of them under 1 s")
        other = 1.0 - sum(np.mean(v) for v in shares.values())
        print("share of a warm refine: " + ", ".join(f"{s} {np.mean(v):.0%}" for s, v in shares.items())
              + f", protocol and labels file {other:.0%}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
