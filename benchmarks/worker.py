"""The worker keeps a model loaded: time two identical ``segment`` requests in one worker.

Prints, per request, the wall time from sending the request to its result event and the
report's stage seconds. The first request loads the model and warms up the device; the second
should skip both. Uses a HNOAR case with ``hn-oar-unet`` when ``../shared/data`` is present,
else a phantom with ``phantom-unet``.

    python benchmarks/worker.py [--device cpu] [--requests 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HN_CASE = REPO.parent / "shared" / "data" / "HNOAR" / "imagesTr" / "hn_001_0000.nii.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--requests", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    if HN_CASE.is_file():
        image, model = HN_CASE, "hn-oar-unet"
    else:
        import SimpleITK as sitk

        from medseg_core.data.phantom import make_phantom

        image, model = tmp / "phantom.nii.gz", "phantom-unet"
        sitk.WriteImage(make_phantom(seed=1).image, str(image))
    proc = subprocess.Popen([sys.executable, "-m", "medseg_core", "worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    print(f"worker: model {model}, image {image.name}, device {a.device}")
    rows = []
    for k in range(a.requests):
        req = {"id": str(k), "command": "segment", "args": {"inputs": [str(image)], "model": model,
                                                             "output": str(tmp / f"out{k}"), "device": a.device}}
        t0 = time.perf_counter()
        proc.stdin.write(json.dumps(req) + "\n")
        proc.stdin.flush()
        for line in proc.stdout:
            event = json.loads(line)
            if event["event"] in ("result", "error"):
                break
        wall = time.perf_counter() - t0
        if event["event"] == "error":
            raise SystemExit(f"request {k} failed: {event['message']}")
        sec = event["outputs"]["reports"][0]["seconds"]
        rows.append((k + 1, wall, sec))
        print(f"request {k + 1}: {wall:6.2f} s wall; " + ", ".join(f"{s} {v:.2f}" for s, v in sec.items()))
    proc.stdin.write(json.dumps({"id": "end", "command": "shutdown"}) + "\n")
    proc.stdin.flush()
    proc.wait(timeout=30)
    first, later = rows[0][1], min(r[1] for r in rows[1:]) if len(rows) > 1 else float("nan")
    print(f"first request {first:.2f} s (loads the model: {rows[0][2]['load_model']:.2f} s), "
          f"later requests {later:.2f} s: {first - later:.2f} s saved per request")


if __name__ == "__main__":
    main()
