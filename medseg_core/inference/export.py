"""The cache of networks exported for OpenVINO (:mod:`.runtime` runs them): each network's class
logits exported once per weights file and OpenVINO version (ONNX, read by OpenVINO, saved as its
IR) into ``MEDSEG_HOME/cache/openvino`` (default ``~/.medseg``), staged and renamed, so later
processes read it in a few hundredths of a second without importing PyTorch."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

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


EXPORT_FORMAT = 2
"""Part of every export's folder name: format 1 traced every network at a small input, which
froze PGD-UNet's and LFAM's size-dependent constants (their Dice on HNOAR fell to 0.01 and 0.27);
those exports are not read again."""
TRACED = "traced.json"
"""Beside an export traced at its window (a network that does not trace at any size): that window,
the only one its graph computes right (:class:`~medseg_core.inference.runtime.OpenVinoWindows`)."""


def export_folder(key: str, spatial_dims: int, part: str = "") -> Path:
    """Where the export of the weights ``key`` (their SHA-256) lives in the cache; ``part``: which
    network of a routed package ("base", "tuned")."""
    return cache_root() / (f"{key[:24]}{'-' + part if part else ''}-{spatial_dims}d-x{EXPORT_FORMAT}"
                           f"-ov{openvino_version()}")


def traced_window(xml: Path) -> tuple[int, ...] | None:
    """The one window ``(C, *spatial)`` the export ``xml`` was traced at and computes right, or
    None where it computes any size (:attr:`~medseg_core.nets.base.SegNetwork.traces_at_any_size`)."""
    f = Path(xml).parent / TRACED
    return tuple(int(n) for n in json.loads(f.read_text())["window"]) if f.is_file() else None


def _prune(root: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently used exports under ``root``."""
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".tmp-")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in folders[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def logits_only(net):
    """``net`` as a ``torch.nn.Module`` whose one output is its class logits (what is exported)."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.net = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).logits

    return LogitsOnly(net)


def traces_at_any_size(net) -> bool:
    """Whether ``net``'s traced graph computes every input size right
    (:attr:`~medseg_core.nets.base.SegNetwork.traces_at_any_size`)."""
    return bool(getattr(net, "traces_at_any_size", False))


def export_onnx(net, window: tuple[int, ...], path: Path, trunk: bool = False) -> None:
    """``net``'s class logits as ONNX (opset 17), batch and spatial sizes left free; ``window`` is
    ``(C, *spatial)`` of the windows it will run. With ``trunk``, ``net.trunk()``'s outputs
    instead (:meth:`~medseg_core.nets.base.SegNetwork.trunk`), named as it names them. Tracing
    runs the network once at the window; a network that traces at any size
    (:func:`traces_at_any_size`) is traced at the smallest input of the same kind: per axis the largest
    power of two dividing every side of the window (the networks down-sample by two, so their
    total factor divides it), 32^3 for the default model's 64 x 96 x 128 (a fine-tune's routed
    pair exported in 0.5 s instead of 4.0 s, giving the same logits at the full window)."""
    import torch

    g = math.gcd(*[int(s) for s in window[1:]])
    small = [min(int(s), g & -g) for s in window[1:]] if traces_at_any_size(net) else list(window[1:])
    example = torch.zeros((1, int(window[0]), *small))
    free = {0: "batch", **{2 + i: f"s{i}" for i in range(len(window) - 1)}}
    module = net.trunk() if trunk else logits_only(net)
    names = list(module.outputs) if trunk else ["logits"]
    # float32 whatever the caller runs under: an export traced inside the predictor's bf16
    # autocast is a graph OpenVINO refuses (OpenVINO lowers the precision itself, by its hint)
    with warnings.catch_warnings(), torch.autocast("cpu", enabled=False):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), input_names=["x"], output_names=names,
                          dynamic_axes={"x": free}, opset_version=17, dynamo=False)


def export(net, window: tuple[int, ...], key: str, log: Callable[[str], None] | None = None, part: str = "",
           trunk: bool = False) -> Path:
    """The cached IR of ``net`` (its ``net.xml``), exported first if the cache lacks it; with
    ``trunk`` of ``net.trunk()`` (filed as the part "trunk")."""
    import openvino as ov

    def fill(tmp: Path) -> None:
        if log:
            log("exporting the network for OpenVINO (once per model; later runs read it from the cache)")
        export_onnx(net, window, tmp / "net.onnx", trunk=trunk)
        ov.save_model(ov.Core().read_model(str(tmp / "net.onnx")), str(tmp / "net.xml"), compress_to_fp16=False)
        (tmp / "net.onnx").unlink()
        if not traces_at_any_size(net):
            (tmp / TRACED).write_text(json.dumps({"window": [int(n) for n in window]}))

    return _publish(export_folder(key, len(window) - 1, "trunk" if trunk else part), fill)


def adopt(xml: Path, key: str, nd: int, part: str = "") -> Path:
    """The export ``xml`` (of the same network, bit for bit) filed also under ``key``'s ``part``:
    a fine-tune's parent half is its parent, exported already."""
    def fill(tmp: Path) -> None:
        for name in ("net.xml", "net.bin", TRACED):
            if not (Path(xml).parent / name).is_file():
                continue
            try:
                os.link(Path(xml).parent / name, tmp / name)
            except OSError:  # another file system, or no hard links: a copy
                shutil.copyfile(Path(xml).parent / name, tmp / name)

    return _publish(export_folder(key, nd, part), fill)


def _publish(folder: Path, fill: Callable[[Path], None]) -> Path:
    """``folder``'s ``net.xml``, its files written first by ``fill`` into a temporary folder
    renamed into place (a reader never sees half an export) where the cache lacks them."""
    xml = folder / "net.xml"
    if xml.is_file():
        return xml
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        fill(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process got there first: theirs is the same
            if not xml.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(folder.parent, KEEP_EXPORTS)
    return xml
