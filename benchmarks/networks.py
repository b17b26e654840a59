"""Parameters, forward and forward+backward time and peak memory of each registered network.

Every network gets the same input (3D by default: 1 x 1 x 32 x 64 x 64 on the CPU, or
--size D H W / --batch; 2D with --dims 2), the same number of classes, in training mode for
forward+backward and eval mode for the forward alone. Memory: torch.cuda.max_memory_allocated on
CUDA; on the CPU the growth of the process's peak RSS over the run (rough, and monotone: run a
single --only NET for a clean figure). The pure deformable convolution is also timed against
torchvision's where both run (see benchmarks/deform_conv.py for more).

    python benchmarks/networks.py [--device cpu|cuda] [--dims 3] [--size 32 64 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from medseg_core.nets import available, build_network

CLASSES = 8
EXTRA = {"focusnet": {"small_organs": [1, 3, 4]}}  # SOL-Net and three SOS-Nets switched on


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, device, repeats):
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    mem = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mb()
    return sorted(times)[len(times) // 2], mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dims", type=int, default=3, choices=[2, 3])
    ap.add_argument("--size", type=int, nargs="+", help="spatial size (default 32 64 64 or 128 128)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="networks to run (default: all registered)")
    a = ap.parse_args()
    device = torch.device(a.device)
    size = tuple(a.size or ((32, 64, 64) if a.dims == 3 else (128, 128)))
    x = torch.randn(a.batch, 1, *size, device=device)
    print(f"input {tuple(x.shape)} on {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'network':10s} {'params M':>9s} {'fp16 MB':>8s} {'forward s':>10s} {'fwd+bwd s':>10s} {'peak MB':>9s}")
    for name in a.only or available():
        try:
            net = build_network(name, spatial_dims=a.dims, in_channels=1, out_channels=CLASSES,
                                **EXTRA.get(name, {})).to(device)
        except TypeError as exc:
            print(f"{name:10s} cannot be built with defaults: {exc}")
            continue
        params = sum(p.numel() for p in net.parameters())

        def forward():
            net.eval()
            with torch.inference_mode():
                net(x)

        def train_step():
            net.train()
            net.zero_grad(set_to_none=True)
            out = net(x)
            loss = out.logits.float().mean() + sum(d.float().mean() for d in out.deep_supervision)
            for extra in (out.heatmaps, out.confidence):
                if extra is not None:
                    loss = loss + extra.float().mean()
            loss.backward()

        try:
            t_f, _ = timed(forward, device, a.repeats)
            t_b, mem = timed(train_step, device, a.repeats)
        except RuntimeError as exc:  # e.g. an input too small for the network's depth
            print(f"{name:10s} {params / 1e6:9.2f} failed: {str(exc).splitlines()[0][:80]}")
            continue
        print(f"{name:10s} {params / 1e6:9.2f} {params * 2 / 1e6:8.1f} {t_f:10.3f} {t_b:10.3f} {mem:9.0f}")
    try:
        import torchvision  # noqa: F401

        print("\ndeformable convolution, pure vs torchvision: python benchmarks/deform_conv.py --device", a.device)
    except ImportError:
        print("\ntorchvision not installed: the pure deformable convolution is the only one here")


if __name__ == "__main__":
    main()
