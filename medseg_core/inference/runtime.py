"""Where a network's windows run: PyTorch, or OpenVINO on CPUs without native bf16.

On a CPU without native bf16 (AVX2 only: many clinicians' workstations) OpenVINO ran the default
network's 64 x 96 x 128 window 1.5x faster than PyTorch in float32 (1.8x under load), with the
same argmax on 99.999 % of voxels (``benchmarks/runtimes.py``, docs/results.md). It is optional
(``pip install openvino``): ``auto`` takes it where it helps and it is installed, ``torch`` never,
``openvino`` insists. OpenVINO runs float32 (its precision hint is pinned so a CPU with bf16 gives
the same result), only windows of the card's own patch size, and only networks whose windows give
class logits alone (no heads, no prompts); everything else stays with PyTorch.

The network is exported once per weights file and OpenVINO version (ONNX, read by OpenVINO, saved
as its IR) into ``MEDSEG_HOME/cache/openvino`` (default ``~/.medseg``), staged and renamed, so
later processes read it in a few hundredths of a second and compile it in a few tenths.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import InputError

RUNTIMES = ("auto", "torch", "openvino")  # the CLI's and the requests' list: commands.checks.RUNTIMES
KEEP_EXPORTS = 8
"""Exported networks kept in the cache (the most recently used; one is about 23 MB for the default
model), so fine-tuned generations do not fill the disk."""


def openvino_version() -> str | None:
    try:
        import openvino
    except Exception:  # not installed, or a broken install: PyTorch then
        return None
    return openvino.__version__.split("-")[0]


def cache_root() -> Path:
    home = os.environ.get("MEDSEG_HOME")
    return (Path(home) if home else Path.home() / ".medseg") / "cache" / "openvino"


def choose(runtime: str, device: torch.device, amp: bool, plain_logits: bool) -> str:
    """``torch`` or ``openvino`` for ``runtime`` ("auto", "torch", "openvino"; ``MEDSEG_RUNTIME``
    overrides "auto") on ``device``; ``amp``: bf16 autocast is on; ``plain_logits``: the network's
    windows give class logits alone."""
    runtime = (runtime or "auto").lower()
    if runtime == "auto":
        runtime = os.environ.get("MEDSEG_RUNTIME", "auto").strip().lower() or "auto"
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime {runtime}: unknown runtime ({', '.join(RUNTIMES)})")
    if runtime == "torch":
        return "torch"
    fits = device.type == "cpu" and plain_logits
    if runtime == "openvino":
        if openvino_version() is None:
            raise InputError("--runtime openvino: OpenVINO is not installed (pip install openvino)")
        if not fits:
            raise InputError("--runtime openvino: only for a CPU and a network without heads or prompts")
        return "openvino"
    return "openvino" if fits and not amp and openvino_version() is not None else "torch"


def _prune(root: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently used exports under ``root``."""
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".tmp-")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in folders[keep:]:
        shutil.rmtree(old, ignore_errors=True)


class LogitsOnly(torch.nn.Module):
    """The network with its class logits as the one output (what is exported)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).logits


def export_onnx(net: torch.nn.Module, window: tuple[int, ...], path: Path) -> None:
    """``net``'s class logits as ONNX (opset 17), batch and spatial sizes left free; ``window`` is
    ``(C, *spatial)`` of the example traced."""
    example = torch.zeros((1, *window))
    free = {0: "batch", **{2 + i: f"s{i}" for i in range(len(window) - 1)}}
    # float32 whatever the caller runs under: an export traced inside the predictor's bf16
    # autocast (a CPU with native bf16 and --runtime openvino) is a graph OpenVINO refuses
    with warnings.catch_warnings(), torch.autocast("cpu", enabled=False):
        warnings.simplefilter("ignore")
        torch.onnx.export(LogitsOnly(net).eval(), (example,), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": free}, opset_version=17, dynamo=False)


def _weights_stamp(net: torch.nn.Module) -> tuple[int, ...]:
    """Changes whenever a parameter or buffer of ``net`` is written in place (an optimiser step,
    ``load_state_dict``, ``copy_``): torch counts every in-place write of a tensor."""
    return tuple(t._version for t in (*net.parameters(), *net.buffers()))


class OpenVinoWindows:
    """A network's class logits for windows of one shape, computed by OpenVINO in float32. The copy
    holds the weights it was exported with: once the network's own weights change (a fine-tune
    trains it in place), :meth:`fits` is False for good and PyTorch runs the windows.

    Args:
        net: the network (eval mode, float32, on the CPU).
        window: ``(C, *spatial)`` of the windows it will be given (the card's patch).
        key: names the exported copy in the cache (the weights' SHA-256).
        threads: OpenVINO's thread count (default: PyTorch's).
        log: told when the network is exported (the one slow step, once per model).
    """

    def __init__(self, net: torch.nn.Module, window: tuple[int, ...], key: str, threads: int | None = None,
                 log: Callable[[str], None] | None = None):
        import openvino as ov

        self.window = tuple(int(s) for s in window)
        self.net, self.stamp = net, _weights_stamp(net)
        xml = self._exported(net, key, log or (lambda m: None))
        core = ov.Core()
        model = core.read_model(str(xml))
        model.reshape([1, *self.window])
        config = {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()), "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def _exported(self, net: torch.nn.Module, key: str, log) -> Path:
        import openvino as ov

        folder = cache_root() / f"{key[:24]}-{len(self.window) - 1}d-ov{openvino_version()}"
        xml = folder / "net.xml"
        if xml.is_file():
            os.utime(folder)  # recently used: kept by the pruning below
            return xml
        log("exporting the network for OpenVINO (once per model; later runs read it from the cache)")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        try:
            export_onnx(net, self.window, tmp / "net.onnx")
            ov.save_model(ov.Core().read_model(str(tmp / "net.onnx")), str(tmp / "net.xml"), compress_to_fp16=False)
            (tmp / "net.onnx").unlink()
            try:
                tmp.rename(folder)
            except OSError:  # another process got there first: theirs is the same
                if not xml.is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(folder.parent, KEEP_EXPORTS)
        return xml

    def fits(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is a CPU batch of this copy's windows and the network still has the
        weights the copy was made from."""
        return x.device.type == "cpu" and tuple(x.shape[1:]) == self.window and _weights_stamp(self.net) == self.stamp

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) windows -> (B, N, *spatial) float32 logits, one window at a time."""
        outs = []
        for i in range(x.shape[0]):
            item = np.ascontiguousarray(x[i:i + 1].float().numpy())
            outs.append(torch.from_numpy(np.array(self.request.infer([item])[0])))
        return torch.cat(outs)
