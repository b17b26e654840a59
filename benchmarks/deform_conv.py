"""Deformable convolution benchmark: the pure-PyTorch DCNv2 against torchvision's kernel.

What is measured (random input, offsets ~ N(0, 1) pixels, mask in (0, 1), float32, O = C):

1. 2D, 4 x 64 x 64 x 64, 3x3, padding 1: forward and forward+backward seconds of the pure version
   and of ``torchvision.ops.deform_conv2d`` (skipped with a message when torchvision does not
   import), and the largest difference of their outputs.
2. 3D (pure only), 2 x 16 x 32^3, 3x3x3, padding 1: forward and forward+backward seconds, and
   the peak memory of a forward (no grad), a forward+backward, and a forward+backward with
   ``checkpoint=True``. Peak memory is ``torch.cuda.max_memory_allocated`` above the memory held
   before the step on CUDA; on a CPU the rise of the process's peak RSS (VmHWM, reset through
   /proc/self/clear_refs where Linux allows it, after glibc's malloc_trim; otherwise the figure
   only counts growth beyond earlier peaks and is marked so). The RSS figure also counts the
   allocator's own behaviour, so it is a rough guide; the CUDA figure is exact.

2D figures are the median of ``--repeats`` runs after one untimed warm-up; 3D figures the median
of ``--repeats`` runs of which the first (no warm-up: it also measures the memory) is included.
Default repeats: 1 on a CPU (about 20 s on two idle cores), 5 on CUDA.

Usage::

    python benchmarks/deform_conv.py [--device cpu|cuda] [--repeats N] [--threads N]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
dcm = importlib.import_module("medseg_core.nets.layers.deform_conv")  # the module, not the function


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device, repeats: int) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_memory(fn, device) -> str:
    """Peak memory that ``fn`` adds, as text."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return f"{(torch.cuda.max_memory_allocated(device) - base) / 2**20:8.1f} MiB (CUDA allocated)"
    gc.collect()
    try:  # give freed heap memory back to the OS so that the RSS baseline is the memory in use
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    exact = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        exact = False
    before = _rss_kib("VmHWM" if not exact else "VmRSS")
    fn()
    after = _rss_kib("VmHWM")
    if before is None or after is None:
        return "n/a (no /proc/self/status)"
    note = "peak RSS rise" if exact else "peak RSS rise beyond earlier peaks (VmHWM not resettable)"
    return f"{(after - before) / 1024:8.1f} MiB ({note})"


def make_inputs(b, c, size, k, device, requires_grad=True):
    nd = len(size)
    g = torch.Generator().manual_seed(0)
    kk = k ** nd
    x = torch.randn(b, c, *size, generator=g)
    w = torch.randn(c, c, *(k,) * nd, generator=g) / (c * kk) ** 0.5
    bias = torch.randn(c, generator=g)
    offset = torch.randn(b, nd * kk, *size, generator=g)
    mask = torch.rand(b, kk, *size, generator=g)
    tensors = [t.to(device).requires_grad_(requires_grad) for t in (x, offset, mask, w, bias)]
    return tensors


def pure(x, offset, mask, w, bias, **kw):
    return dcm.deform_conv(x, offset, mask, w, bias, 1, 1, 1, **kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=None, help="default 1 on a CPU, 5 on CUDA")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    args.repeats = args.repeats or (5 if device.type == "cuda" else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    dcm.set_torchvision_backend(False)  # we call torchvision explicitly
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f", {torch.get_num_threads()} threads") + f", median of {args.repeats}")

    # ------------------------------------------------------------------ 2D
    x, offset, mask, w, bias = make_inputs(4, 64, (64, 64), 3, device)
    inputs = (x, offset, mask, w, bias)

    def fwd(fn):
        with torch.no_grad():
            return fn(*inputs)

    def fwd_bwd(fn):
        out = fn(*inputs)
        torch.autograd.grad(out.square().sum(), inputs)

    print("\n2D deformable conv, 4 x 64 x 64 x 64, 3x3, float32")
    t_f, t_fb = timeit(lambda: fwd(pure), device, args.repeats), timeit(lambda: fwd_bwd(pure), device, args.repeats)
    print(f"  pure PyTorch   forward {t_f * 1e3:9.2f} ms   forward+backward {t_fb * 1e3:9.2f} ms")
    tv = dcm._torchvision_deform_conv2d()
    if tv is None:
        print("  torchvision    skipped: torchvision does not import (optional dependency)")
    else:
        def theirs(x, offset, mask, w, bias):
            return tv(x, offset, w, bias, stride=1, padding=1, dilation=1, mask=mask)

        v_f, v_fb = timeit(lambda: fwd(theirs), device, args.repeats), timeit(lambda: fwd_bwd(theirs), device,
                                                                                  args.repeats)
        diff = (fwd(pure) - fwd(theirs)).abs().max().item()
        print(f"  torchvision    forward {v_f * 1e3:9.2f} ms   forward+backward {v_fb * 1e3:9.2f} ms")
        print(f"  pure / torchvision time: forward {t_f / v_f:.2f}x, forward+backward {t_fb / v_fb:.2f}x; "
              f"max |difference| {diff:.2e}")
    del x, offset, mask, w, bias, inputs

    # ------------------------------------------------------------------ 3D
    x, offset, mask, w, bias = make_inputs(2, 16, (32, 32, 32), 3, device)
    inputs = (x, offset, mask, w, bias)
    print("\n3D deformable conv (pure), 2 x 16 x 32^3, 3x3x3, float32, "
          f"chunk budget {dcm.CHUNK_ELEMENTS} sampled values")
    configs = {"forward (no grad)": lambda: fwd(pure),
               "forward+backward": lambda: fwd_bwd(pure),
               "forward+backward, checkpoint=True": lambda: fwd_bwd(lambda *a: pure(*a, checkpoint=True))}
    for name, fn in configs.items():
        # The first run measures the peak memory (before any warm-up, so that freed-but-kept memory
        # does not hide it); the time is the median over all runs, the first included.
        t0 = time.perf_counter()
        mem = peak_memory(fn, device)
        times = [time.perf_counter() - t0]
        for _ in range(args.repeats - 1):
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        print(f"  {name:34s} {statistics.median(times) * 1e3:9.2f} ms   peak {mem}")
    sampled = 2 * 16 * 27 * 32 ** 3 * 4 / 2**20
    print(f"  (for scale: input {x.numel() * 4 / 2**20:.0f} MiB, output the same, all 27 sampled copies "
          f"{sampled:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
