"""Which memory layout runs each bundled 2D model's windows faster on this CPU: a batch of eight
slices of the card's window, plain against channels-last, alternating, the median of ``--rounds``,
and the largest difference of their logits. It informs ``channels_last_inference`` (set on the
networks that win, ``nets/base.py``).

    python benchmarks/layouts.py [--rounds 4] [--threads 2]

Run it as the engine would run on the CPU in question (``MEDSEG_CPU_BF16=0`` for the float32
path; ``ONEDNN_MAX_CPU_ISA=AVX2`` to see a CPU without AVX-512).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = ["hn-oar-pgd", "hn-oar-lfam", "hn-oar-focusnet", "hn-oar-lsnet", "hn-oar-dan"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    from cpu_speed import cpu_features
    from medseg_core.models import find_model

    torch.set_num_threads(a.threads)
    print(f"CPU features: {cpu_features()}; {a.threads} threads; float32")
    print("| model | window | plain s | channels-last s | ratio | max logit difference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in MODELS:
        pkg = find_model(name)
        if pkg.card.spatial_dims != 2:
            continue
        plain = pkg.build("cpu").eval()
        last = copy.deepcopy(plain).to(memory_format=torch.channels_last)
        x = torch.randn(8, len(pkg.card.channels), *pkg.card.patch_size[-2:],
                        generator=torch.Generator().manual_seed(0))
        xl = x.contiguous(memory_format=torch.channels_last)
        times = {"plain": [], "last": []}
        with torch.inference_mode():
            for _ in range(a.rounds):
                for key, net, inp in (("plain", plain, x), ("last", last, xl)):
                    t = time.perf_counter()
                    out = net(inp).logits
                    times[key].append(time.perf_counter() - t)
                    if key == "plain":
                        ref = out
            diff = float((ref - out).abs().max())
        p, q = statistics.median(times["plain"]), statistics.median(times["last"])
        print(f"| {name} | {list(pkg.card.patch_size)} | {p:.3f} | {q:.3f} | {q / p:.2f} | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
