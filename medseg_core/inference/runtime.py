"""Where a network's windows run: OpenVINO on the CPU where it is installed, else PyTorch.

On the CPU OpenVINO ran the default network's 64 x 96 x 128 window faster than PyTorch on both
kinds of CPU (``benchmarks/runtimes.py``, docs/results.md): 1.5x in float32 on a CPU without
native bf16 (AVX2 only: many clinicians' workstations), and on a CPU with AVX512-BF16 0.12 s in
bf16 against PyTorch's 0.24 s under bf16 autocast. It computes in bf16 exactly where PyTorch would
(:func:`~.device.native_bf16_cpu`) and in float32 elsewhere; its argmax agrees with PyTorch's on
99.99 % of voxels. It is optional (``pip install openvino``): ``auto`` takes it where it is
installed, ``torch`` never, ``openvino`` insists. It runs only windows of the card's own patch size
(or one stretched a little, :func:`~.sliding_window.stretched_patch`), and only networks whose
windows give class logits alone (no heads, no prompts), or the trunk of a network that declares one
(:meth:`~medseg_core.nets.base.SegNetwork.trunk`: FocusNet's S-Net and SOL-Net,
:class:`TrunkWindows`), PyTorch then doing the rest; everything else stays with PyTorch.

The network is exported once per weights file and OpenVINO version into a cache (:mod:`.export`),
so later processes compile it in a tenth of a second without importing PyTorch at all
(:meth:`OpenVinoWindows.cached`). Where the CPU computes in float32 and the package carries an
int8 network (``card.inference.int8``, :func:`int8_windows`), that runs instead. Only networks
with plain logits are ever exported, so an export in the cache also says its network has no
heads. A fine-tuned (routed) model is exported as its two networks and routed in numpy
(:class:`RoutedWindows`): the fine-tune then measures it on its corrected cases without running
the parent's windows a second time.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from .export import (KEEP_EXPORTS, adopt, cache_root, export, export_folder, export_onnx, traced_window,  # noqa: F401 - their API
                     logits_only, openvino_version)
from .device import native_bf16_cpu
from .routing import route_log_probs
from .sliding_window import STRETCH, gaussian_importance

RUNTIMES = ("auto", "torch", "openvino")  # the CLI's and the requests' list: commands.checks.RUNTIMES
MEMO_BYTES = 1 << 29
"""Most bytes of window outputs one :attr:`OpenVinoWindows.memo` keeps: 512 MB (the widest HNOAR
case's 8 windows take 200 MB)."""


def choose(runtime: str, device_type: str, plain_logits: bool) -> str:
    """``torch`` or ``openvino`` for ``runtime`` ("auto", "torch", "openvino"; ``MEDSEG_RUNTIME``
    overrides "auto") on a device of ``device_type`` ("cpu", "cuda", "mps"); ``plain_logits``: the
    network's windows give class logits alone, or it has a trunk OpenVINO can run."""
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
            raise InputError("--runtime openvino: only for a CPU and a network without heads or prompts "
                             "or with a trunk (FocusNet)")
        return "openvino"
    return "openvino" if fits and openvino_version() is not None else "torch"


def _weights_stamp(tensors) -> tuple[int, ...]:
    """Changes whenever one of ``tensors`` (a network's parameters and buffers) is written in
    place (an optimiser step, ``load_state_dict``, ``copy_``): torch counts every in-place write."""
    return tuple(t._version for t in tensors)


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
        int8: ``xml`` is the package's int8 network (:func:`int8_windows`), not an export.
    """

    def __init__(self, xml: Path, window: tuple[int, ...], bf16: bool = False, threads: int | None = None, net=None,
                 int8: bool = False):
        import openvino as ov

        self.xml = Path(xml)
        self.window = tuple(int(s) for s in window)
        self.exact = traced_window(xml)  # the one window an export traced at its window computes right
        self.bf16 = bool(bf16) and native_bf16_cpu()  # elsewhere OpenVINO computes float32 anyway
        self.memo: dict | None = None
        """Outputs of windows already run, by a digest of their input: read and filled by each
        call where set (``finetune`` shares the parent's with its copy's parent half)."""
        self.reused = 0  # windows taken from the memo
        self.int8 = int8  # the package's int8 network (:func:`int8_windows`), not an export of the weights
        self.net = self.stamp = None
        if net is not None:
            self.watch(net)
        if Path(xml).parent.parent == cache_root():
            os.utime(Path(xml).parent)  # recently used: kept by the cache's pruning
        self._core = ov.Core()
        self._config = {"INFERENCE_PRECISION_HINT": "bf16" if self.bf16 else "f32"}
        threads = threads or _threads()
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._requests: dict[tuple[int, ...], object] = {}
        self._refused: set[tuple[int, ...]] = set()  # stretched windows the export could not take
        # nothing is compiled yet: a run compiles the graph it uses for the window it meets
        # (:meth:`takes`), where compiling the card's window here as well cost 0.2 s a process

    @property
    def windows(self) -> list[tuple[int, ...]]:
        """The windows compiled now, each once (whatever graphs of it)."""
        return sorted({w for w, _ in self._requests})

    def _request(self, window: tuple[int, ...], weighted: bool = False):
        """The compiled network for ``window`` (C, *spatial): the card's or a stretched one
        (:func:`~medseg_core.inference.sliding_window.stretched_patch`), each compiled on its
        first use (0.2 s for the bundled U-Net); ``weighted``: the graph of :meth:`weighted`.
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
        # listed once: walking FocusNet's modules for them took 5 ms, a tenth of a slice's time
        self._tensors = [*net.parameters(), *net.buffers()]
        self.net, self.stamp = net, _weights_stamp(self._tensors)

    def fits(self, x) -> bool:
        """Whether ``x`` (an array) is a batch of this copy's windows (the card's window, or one
        stretched from it by at most ``STRETCH`` per axis) and the network, if known, still has
        the weights the copy was made from."""
        return self.takes(tuple(x.shape[1:]))

    def takes(self, window: tuple[int, ...], weighted: bool = False) -> bool:
        """:meth:`fits` for windows of ``window`` ((C, *spatial)), compiling the graph for them
        (``weighted``: :meth:`weighted`'s) where it is not yet."""
        window = tuple(int(n) for n in window)
        stretched = len(window) == len(self.window) and window[0] == self.window[0] and all(
            w <= n <= w * (1 + STRETCH) for w, n in zip(self.window[1:], window[1:]))
        if not stretched or window in self._refused or (self.exact is not None and window != self.exact):
            return False
        if self.net is not None and _weights_stamp(self._tensors) != self.stamp:
            return False
        try:
            self._request(window, weighted)  # compiled here: a window the export cannot take goes to PyTorch
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


class TrunkWindows(OpenVinoWindows):
    """A network's trunk (:meth:`~medseg_core.nets.base.SegNetwork.trunk`) for windows of one
    shape, computed by OpenVINO: all its outputs, which the network's
    :meth:`~medseg_core.nets.base.SegNetwork.from_trunk` completes in PyTorch. FocusNet's 2D
    S-Net and SOL-Net ran a 96 x 128 slice in 33 ms against PyTorch's 57-72 ms (AVX2, float32,
    ``benchmarks/model_runtimes.py``; docs/results.md). No memo, no weighted graph."""

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """(B, C, *spatial) windows -> the trunk's outputs, each (B, n, *spatial) float32, one
        window at a time (OpenVINO ran eight slices one by one in 0.22 s, as a batch in 0.41 s)."""
        outs: list[np.ndarray] = []
        request = self._request(tuple(x.shape[1:]))
        for i in range(x.shape[0]):
            request.infer([np.ascontiguousarray(x[i:i + 1], dtype=np.float32)], share_inputs=True)
            ys = [t.data[0] for t in request.output_tensors]
            if not outs:
                outs = [np.empty((x.shape[0], *y.shape), dtype=np.float32) for y in ys]
            for out, y in zip(outs, ys):
                out[i] = y
        return outs


def trunk_windows(net, card, window: tuple[int, ...], bf16: bool,
                  log: Callable[[str], None] | None = None) -> TrunkWindows:
    """OpenVINO's windows of ``net``'s trunk (exported first where the cache lacks it)."""
    return TrunkWindows(export(net, window, card.weights.sha256, log, trunk=True), window, bf16=bf16, net=net)


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


def int8_windows(package, window: tuple[int, ...], bf16: bool, net=None) -> OpenVinoWindows | None:
    """OpenVINO's windows of the package's int8 network (``card.inference.int8``, its files'
    SHA-256 checked), where the CPU computes in float32 (``bf16`` False): 1.8x the float32
    network's speed with AVX2 alone, 2.7x with AVX-512 (docs/results.md). None where the card has
    none, for a routed (fine-tuned) network, in bf16, or with ``MEDSEG_INT8=0``."""
    if bf16 or package.card.network.name == "routed" or os.environ.get("MEDSEG_INT8", "").strip() == "0":
        return None
    xml = package.int8_xml()
    if xml is None:
        return None
    return OpenVinoWindows(xml, window, bf16=False, net=net, int8=True)


def cached_windows(card, window: tuple[int, ...], bf16: bool):
    """:func:`windows_for` from the cache alone (no PyTorch), or None where an export is missing."""
    if card.network.name != "routed":
        return OpenVinoWindows.cached(card.weights.sha256, window, bf16)
    return RoutedWindows.cached(card.weights.sha256, window, card.network.kwargs.get("routed", []), bf16)
