"""Where a network's windows run: OpenVINO on the CPU where it is installed, else PyTorch.

On the CPU OpenVINO ran the default network's 64 x 96 x 128 window faster than PyTorch on both
kinds of CPU (``benchmarks/runtimes.py``, docs/results.md): 1.5x in float32 on a CPU without
native bf16 (AVX2 only: many clinicians' workstations), and on a CPU with AVX512-BF16 0.12 s in
bf16 against PyTorch's 0.24 s under bf16 autocast. It computes in bf16 exactly where PyTorch would
(:func:`~.device.native_bf16_cpu`) and in float32 elsewhere; its argmax agrees with PyTorch's on
99.99 % of voxels. It is optional (``pip install openvino``): ``auto`` takes it where it is
installed, ``torch`` never, ``openvino`` insists. It runs only windows of the card's own patch size,
and only networks whose windows give class logits alone (no heads, no prompts); everything else
stays with PyTorch.

The network is exported once per weights file and OpenVINO version (ONNX, read by OpenVINO, saved
as its IR) into ``MEDSEG_HOME/cache/openvino`` (default ``~/.medseg``), staged and renamed, so
later processes read it in a few hundredths of a second and compile it in a tenth, without
importing PyTorch at all (:meth:`OpenVinoWindows.cached`). Only networks with plain logits are ever
exported, so an export in the cache also says its network has no heads. A fine-tuned (routed)
model is exported as its two networks and routed in numpy (:class:`RoutedWindows`): the fine-tune
then measures it on its corrected cases without running the parent's windows a second time.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from .routing import route_log_probs
from .sliding_window import STRETCH, gaussian_importance

RUNTIMES = ("auto", "torch", "openvino")  # the CLI's and the requests' list: commands.checks.RUNTIMES
KEEP_EXPORTS = 8
"""Exported networks kept in the cache (the most recently used; one is about 23 MB for the default
model), so fine-tuned generations do not fill the disk."""
MEMO_BYTES = 1 << 29
"""Most bytes of window outputs one :attr:`OpenVinoWindows.memo` keeps: 512 MB (the widest HNOAR
case's 8 windows take 200 MB)."""


def openvino_version() -> str | None:
    try:
        import openvino
    except Exception:  # not installed, or a broken install: PyTorch then
        return None
    return openvino.__version__.split("-")[0]


def cache_root() -> Path:
    home = os.environ.get("MEDSEG_HOME")
    return (Path(home) if home else Path.home() / ".medseg") / "cache" / "openvino"


def choose(runtime: str, device_type: str, plain_logits: bool) -> str:
    """``torch`` or ``openvino`` for ``runtime`` ("auto", "torch", "openvino"; ``MEDSEG_RUNTIME``
    overrides "auto") on a device of ``device_type`` ("cpu", "cuda", "mps"); ``plain_logits``: the
    network's windows give class logits alone."""
    runtime = (runtime or "auto").lower()
    if runtime == "auto":
        runtime = os.environ.get("MEDSEG_RUNTIME", "auto").strip().lower() or "auto"
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime {runtime}: unknown runtime ({', '.join(RUNTIMES)})")
    if runtime == "torch":
        return "torch"
    fits = device_type == "cpu" and plain_logits
    if runtime == "openvino":
        if openvino_version() is None:
            raise InputError("--runtime openvino: OpenVINO is not installed (pip install openvino)")
        if not fits:
            raise InputError("--runtime openvino: only for a CPU and a network without heads or prompts")
        return "openvino"
    return "openvino" if fits and openvino_version() is not None else "torch"


def export_folder(key: str, spatial_dims: int, part: str = "") -> Path:
    """Where the export of the weights ``key`` (their SHA-256) lives in the cache; ``part``: which
    network of a routed package ("base", "tuned")."""
    return cache_root() / f"{key[:24]}{'-' + part if part else ''}-{spatial_dims}d-ov{openvino_version()}"


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


def export_onnx(net, window: tuple[int, ...], path: Path) -> None:
    """``net``'s class logits as ONNX (opset 17), batch and spatial sizes left free; ``window`` is
    ``(C, *spatial)`` of the windows it will run. Tracing runs the network once, so it traces the
    smallest input of the same kind: per axis the largest power of two dividing every side of the
    window (the networks down-sample by two, so their total factor divides it), 32^3 for the
    default model's 64 x 96 x 128 (a fine-tune's routed pair exported in 0.5 s instead of 4.0 s,
    giving the same logits at the full window)."""
    import torch

    g = math.gcd(*[int(s) for s in window[1:]])
    example = torch.zeros((1, int(window[0]), *[min(int(s), g & -g) for s in window[1:]]))
    free = {0: "batch", **{2 + i: f"s{i}" for i in range(len(window) - 1)}}
    # float32 whatever the caller runs under: an export traced inside the predictor's bf16
    # autocast is a graph OpenVINO refuses (OpenVINO lowers the precision itself, by its hint)
    with warnings.catch_warnings(), torch.autocast("cpu", enabled=False):
        warnings.simplefilter("ignore")
        torch.onnx.export(logits_only(net).eval(), (example,), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": free}, opset_version=17, dynamo=False)


def export(net, window: tuple[int, ...], key: str, log: Callable[[str], None] | None = None, part: str = "") -> Path:
    """The cached IR of ``net`` (its ``net.xml``), exported first if the cache lacks it."""
    import openvino as ov

    def fill(tmp: Path) -> None:
        if log:
            log("exporting the network for OpenVINO (once per model; later runs read it from the cache)")
        export_onnx(net, window, tmp / "net.onnx")
        ov.save_model(ov.Core().read_model(str(tmp / "net.onnx")), str(tmp / "net.xml"), compress_to_fp16=False)
        (tmp / "net.onnx").unlink()

    return _publish(export_folder(key, len(window) - 1, part), fill)


def adopt(xml: Path, key: str, nd: int, part: str = "") -> Path:
    """The export ``xml`` (of the same network, bit for bit) filed also under ``key``'s ``part``:
    a fine-tune's parent half is its parent, exported already."""
    def fill(tmp: Path) -> None:
        for name in ("net.xml", "net.bin"):
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


def _weights_stamp(net) -> tuple[int, ...]:
    """Changes whenever a parameter or buffer of ``net`` is written in place (an optimiser step,
    ``load_state_dict``, ``copy_``): torch counts every in-place write of a tensor."""
    return tuple(t._version for t in (*net.parameters(), *net.buffers()))


def _threads() -> int | None:
    """PyTorch's thread count where it is loaded (a caller may have set it), else
    ``OMP_NUM_THREADS``, else None (OpenVINO's own choice: the physical cores, as PyTorch's)."""
    if "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


class OpenVinoWindows:
    """A network's class logits for windows of one shape, computed by OpenVINO.

    Args:
        xml: the exported network (:func:`export`, or :meth:`cached` to find it).
        window: ``(C, *spatial)`` of the windows it will be given (the card's patch).
        bf16: compute in bf16 (where the CPU does natively), else float32.
        threads: OpenVINO's thread count (default: see :func:`_threads`).
        net: the PyTorch network it was exported from, if at hand: once that network's weights
            change (a fine-tune trains it in place), :meth:`fits` is False for good and PyTorch
            runs the windows.
    """

    def __init__(self, xml: Path, window: tuple[int, ...], bf16: bool = False, threads: int | None = None, net=None):
        import openvino as ov

        self.xml = Path(xml)
        self.window = tuple(int(s) for s in window)
        self.bf16 = bool(bf16)
        self.memo: dict | None = None
        """Outputs of windows already run, by a digest of their input: read and filled by each
        call where set (``finetune`` shares the parent's with its copy's parent half)."""
        self.reused = 0  # windows taken from the memo
        self.net = self.stamp = None
        if net is not None:
            self.watch(net)
        os.utime(Path(xml).parent)  # recently used: kept by the cache's pruning
        self._core = ov.Core()
        self._config = {"INFERENCE_PRECISION_HINT": "bf16" if self.bf16 else "f32"}
        threads = threads or _threads()
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._requests: dict[tuple[int, ...], object] = {}
        self._refused: set[tuple[int, ...]] = set()  # stretched windows the export could not take
        self._request(self.window)

    @property
    def windows(self) -> list[tuple[int, ...]]:
        """The windows compiled now, each once (whatever graphs of it)."""
        return sorted({w for w, _ in self._requests})

    def _request(self, window: tuple[int, ...], weighted: bool = False):
        """The compiled network for ``window`` (C, *spatial): the card's, compiled at once, or a
        stretched one (:func:`~medseg_core.inference.sliding_window.stretched_patch`), compiled on
        its first use (0.2 s for the bundled U-Net); ``weighted``: the graph of :meth:`weighted`.
        Only the card's window and the last stretched one are kept: each holds its own activation
        buffers, and a long-lived worker meets many volumes."""
        key = (window, weighted)
        if key not in self._requests:
            for other in [k for k in self._requests if k[0] not in (self.window, window)]:
                del self._requests[other]
            model = self._core.read_model(str(self.xml))
            model.reshape([1, *window])
            if weighted:
                _weigh_probabilities(model, window[1:])
            self._requests[key] = self._core.compile_model(model, "CPU", self._config).create_infer_request()
        return self._requests[key]

    @classmethod
    def cached(cls, key: str, window: tuple[int, ...], bf16: bool = False,
               threads: int | None = None, part: str = "") -> OpenVinoWindows | None:
        """The export of the weights ``key`` already in the cache, or None: no PyTorch needed."""
        xml = export_folder(key, len(window) - 1, part) / "net.xml"
        return cls(xml, window, bf16, threads) if xml.is_file() else None

    def watch(self, net) -> None:
        """From now on :meth:`fits` only while ``net`` (the network exported) keeps its weights."""
        self.net, self.stamp = net, _weights_stamp(net)

    def fits(self, x) -> bool:
        """Whether ``x`` (an array) is a batch of this copy's windows (the card's window, or one
        stretched from it by at most ``STRETCH`` per axis) and the network, if known, still has
        the weights the copy was made from."""
        return self.takes(tuple(x.shape[1:]))

    def takes(self, window: tuple[int, ...]) -> bool:
        """:meth:`fits` for windows of ``window`` ((C, *spatial))."""
        window = tuple(int(n) for n in window)
        stretched = len(window) == len(self.window) and window[0] == self.window[0] and all(
            w <= n <= w * (1 + STRETCH) for w, n in zip(self.window[1:], window[1:]))
        if not stretched or window in self._refused:
            return False
        if self.net is not None and _weights_stamp(self.net) != self.stamp:
            return False
        try:
            self._request(window)  # compiled here, so a window the export cannot take goes to PyTorch
        except Exception:  # noqa: BLE001 - OpenVINO's shape errors have no common type
            self._refused.add(window)
            return False
        return True

    def release(self) -> None:
        """Free the compiled networks' activation buffers (200 MB for the bundled U-Net's window)
        until the next window: the steps after the sliding window (resampling onto a full-size
        CT, writing) then reuse that memory instead of growing the process."""
        for request in self._requests.values():
            request.get_compiled_model().release_memory()

    def weighted(self, window: np.ndarray) -> np.ndarray:
        """One window ``(1, C, *spatial)`` -> its ``(N, *spatial)`` class probabilities times the
        sliding window's blending weight (:func:`~.sliding_window.gaussian_importance` of its
        size), both computed in OpenVINO's graph: no logits are copied out and no softmax runs
        in numpy (on the full-size chest CT those took 1.0 s of 8.5 s, mostly the kernel handing
        over fresh memory for them). The array is OpenVINO's output buffer, overwritten by the
        next call. Only windows :meth:`takes`; no memo."""
        request = self._request(tuple(window.shape[1:]), weighted=True)
        request.infer([np.ascontiguousarray(window, dtype=np.float32)], share_inputs=True)
        return request.get_output_tensor(0).data[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(B, C, *spatial) windows -> (B, N, *spatial) float32 logits, one window at a time (each
        copied once out of OpenVINO's output buffer, which the next window reuses)."""
        out = None
        for i in range(x.shape[0]):
            window = np.ascontiguousarray(x[i:i + 1], dtype=np.float32)
            key = None if self.memo is None else (window.shape, hashlib.blake2b(window.data, digest_size=16).digest())
            y = None if key is None else self.memo.get(key)
            if y is None:
                request = self._request(window.shape[1:])
                request.infer([window], share_inputs=True)
                y = request.get_output_tensor(0).data[0]
            else:
                self.reused += 1
            if out is None:
                out = np.empty((x.shape[0], *y.shape), dtype=np.float32)
            out[i] = y
            if key is not None and key not in self.memo and (len(self.memo) + 1) * y.nbytes <= MEMO_BYTES:
                self.memo[key] = out[i].copy()
        return out


def _weigh_probabilities(model, spatial) -> None:
    """``model``'s one output, class logits, replaced in place by their softmax over the classes
    times the blending weight of a window of ``spatial`` voxels."""
    from openvino import opset13 as ops

    result = model.get_results()[0]
    probs = ops.softmax(result.input_value(0), 1)
    weight = ops.constant(gaussian_importance(tuple(int(n) for n in spatial))[None, None])
    result.input(0).replace_source_output(ops.multiply(probs, weight).output(0))
    model.validate_nodes_and_infer_types()


class RoutedWindows:
    """A routed network's windows (:class:`~medseg_core.nets.routed.RoutedNetwork`, a fine-tuned
    model): its parent and its fine-tuned copy each exported and run by OpenVINO, their logits
    routed here by the network's own formula (:func:`route_log_probs`), so the parent half's
    windows can be shared (:attr:`memo`) and each half is a plain network's export."""

    def __init__(self, base: OpenVinoWindows, tuned: OpenVinoWindows, routed):
        self.base, self.tuned, self.routed = base, tuned, [int(c) for c in routed]
        self.window = base.window

    @classmethod
    def cached(cls, key: str, window: tuple[int, ...], routed, bf16: bool = False) -> RoutedWindows | None:
        """Both halves' exports already in the cache, or None."""
        halves = [OpenVinoWindows.cached(key, window, bf16, part=part) for part in ("base", "tuned")]
        return cls(*halves, routed) if all(h is not None for h in halves) else None

    @property
    def memo(self) -> dict | None:
        return self.base.memo

    @memo.setter
    def memo(self, memo: dict | None) -> None:
        self.base.memo = memo

    def watch(self, net) -> None:
        self.base.watch(net.base)
        self.tuned.watch(net.tuned)

    def fits(self, x) -> bool:
        return self.base.fits(x) and self.tuned.fits(x)

    def release(self) -> None:
        self.base.release()
        self.tuned.release()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return route_log_probs(self.base(x), self.tuned(x), self.routed)


def windows_for(net, card, window: tuple[int, ...], bf16: bool, log: Callable[[str], None] | None = None,
                parent: OpenVinoWindows | None = None):
    """OpenVINO's windows for the PyTorch ``net`` of ``card`` (exported first where the cache
    lacks it): :class:`OpenVinoWindows`, or for a routed network :class:`RoutedWindows`, whose
    parent half is ``parent`` where given (the same network, bit for bit: its export is filed
    under this card too, for the next run)."""
    key = card.weights.sha256
    if card.network.name != "routed":
        return OpenVinoWindows(export(net, window, key, log), window, bf16=bf16, net=net)
    if parent is not None:
        adopt(parent.xml, key, len(window) - 1, "base")
    else:
        parent = OpenVinoWindows(export(net.base, window, key, log, "base"), window, bf16=bf16, net=net.base)
    tuned = OpenVinoWindows(export(net.tuned, window, key, log, "tuned"), window, bf16=bf16, net=net.tuned)
    return RoutedWindows(parent, tuned, net.routed)


def cached_windows(card, window: tuple[int, ...], bf16: bool):
    """:func:`windows_for` from the cache alone (no PyTorch), or None where an export is missing."""
    if card.network.name != "routed":
        return OpenVinoWindows.cached(card.weights.sha256, window, bf16)
    return RoutedWindows.cached(card.weights.sha256, window, card.network.kwargs.get("routed", []), bf16)
