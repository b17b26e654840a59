"""Run a model package on images: preprocess, sliding windows, back to the input grid.

Options: mirror test-time augmentation (the flips the model was trained with, swapping paired
left/right labels), a per-voxel confidence map, and a user box to segment inside.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..data.preprocess import Grid, Preprocessor, probabilities_to_labels, to_input_grid
from ..errors import InputError
from ..models import ModelPackage
from ..nets.slicewise import from_net, to_net, volume_patch
from .box_prompt import grid_index, lsnet_on_box
from .confidence import entropy_confidence
from .device import resolve_device, surely_cpu, use_bf16
from .heads import Heads
from .regions import network_regions, physical_box_to_index
from .runtime import (OpenVinoWindows, RoutedWindows, TrunkWindows, cached_windows, choose, int8_windows,
                      trunk_windows, windows_for)
from .sliding_window import downsampling, fitted_patch, sliding_window_predict, stretched_patch

FIT_MARGIN = 16
"""Voxels of padding (the image's minimum: air for CT) kept around a crop in a fitted window. On
HNOAR case hn_201 the network lost a refined organ without it (one point restored 0.02 to 0.09
Dice of the model's 0.6 to 0.85); with 16 it restored 91 % of the model's own Dice in 0.78 s, with
32 95 % in 1.7 s; on three cases 16 restored 90 %, the full trained window 94 % in 2.0 s
(docs/results.md)."""
ROI_CONTEXT_MM = 15.0  # context kept around a user box so the network sees the surroundings


@dataclass
class Prediction:
    """Attributes:
        labels: labelmap on the input grid (same origin, spacing, direction and size).
        probabilities: (N, z, y, x) float32 class probabilities on the model grid.
        grid: the model grid (map further model-grid arrays back with ``to_input_grid``).
        confidence: (z, y, x) float32 in [0, 1] on the input grid, or None.
        seconds: wall time per stage.
        tta: number of mirrored passes averaged.
    """

    labels: sitk.Image
    probabilities: np.ndarray
    grid: Grid
    confidence: np.ndarray | None = None
    seconds: dict = field(default_factory=dict)
    tta: int = 1
    reference: sitk.Image | None = None
    extras: dict = field(default_factory=dict)
    regions: list | None = None  # from the network's own heads (FocusNet heatmaps, L-SNet boxes)

    def class_probability(self, value: int, index_box=None) -> np.ndarray:
        """One class's probability on the input grid (z, y, x), or on its voxel box
        ``[i0, j0, k0, i1, j1, k1]`` only."""
        return to_input_grid(self.probabilities[value], self.grid, self.reference, default=0.0, index_box=index_box)


class Predictor:
    """Holds one loaded model; ``predict`` may be called for many images.

    On the CPU, a network that OpenVINO already exported (:mod:`.runtime`) runs without PyTorch
    being imported at all: the weights' SHA-256 is checked, the export compiled, and ``net`` built
    only if something needs PyTorch after all (a window of another size, a fine-tune).

    Args:
        package: the model package.
        device: "auto", "cpu", "cuda" or "mps".
        batch_size: windows per forward pass.
        overlap: window overlap fraction.
        progress: optional callback ``(stage, fraction, message="", eta_s=None)``.
        runtime: "auto", "torch" or "openvino": what runs the windows (see :mod:`.runtime`).
        int8: run the package's int8 network where the CPU computes in float32
            (:func:`~.runtime.int8_windows`); False for a fine-tune, whose parent's figures must be
            those the new model's parent half gives.
    """

    def __init__(self, package: ModelPackage, device: str = "auto", batch_size: int = 4,
                 overlap: float = 0.5, progress: Callable | None = None, runtime: str = "auto", int8: bool = True):
        t0 = time.perf_counter()
        self.int8 = int8
        self.package = package
        self.card = package.card
        self.preprocessor = Preprocessor(self.card.preprocessing)
        self.batch_size = batch_size
        self.overlap = overlap
        self.progress = progress or (lambda *a, **k: None)
        self._net = self._device = None
        self._openvino: OpenVinoWindows | RoutedWindows | None = None  # built on the first window of the card's size
        self._memo: dict | None = None
        self._parent_windows: OpenVinoWindows | None = None  # a routed network's parent half, shared
        self._has_trunk = False  # the network has a trunk (FocusNet), which OpenVINO runs
        self._trunk_windows: TrunkWindows | None = None
        if not self._from_export(device, runtime):
            self._device = resolve_device(device)
            self.device_type = self._device.type
            self._net = package.build(self._device)
            self.heads = Heads.of(self._net)
            # bf16 on CUDA and on CPUs that compute it natively (it halves the sliding window
            # there; on 33 HNOAR validation cases it changed the mean Dice by < 0.001, docs/results.md)
            self.amp = use_bf16(self._device)
            plain = not (self.heads.count or self.heads.center_prompt or self.heads.box_prompt)
            self._has_trunk = self._net.trunk() is not None
            self.runtime = choose(runtime, self.device_type, plain or self._has_trunk)
        self.has_confidence_head = self.heads.confidence
        self.load_seconds = time.perf_counter() - t0

    def _from_export(self, device: str, runtime: str) -> bool:
        """Set up OpenVINO from the cache's export of these weights, without PyTorch, where the
        device is the CPU and the runtime OpenVINO; False where that is not so or there is none yet."""
        if not surely_cpu(device):
            return False
        try:
            if choose(runtime, "cpu", plain_logits=True) != "openvino":
                return False
        except InputError:  # the full path says what is wrong
            return False
        self.amp = use_bf16("cpu")
        windows = self._int8_windows()  # a changed int8 file: one clear error
        try:
            windows = windows or cached_windows(self.card, self._window(), bf16=self.amp)
        except Exception:  # a damaged export: the full path exports it again or runs PyTorch
            return False
        if windows is None:
            return False
        self.package.verify_weights()  # the full path checks them as it reads them
        self._openvino, self.runtime, self.device_type = windows, "openvino", "cpu"
        self.heads = Heads()  # only networks with plain logits are exported
        return True

    @property
    def device(self):
        """The ``torch.device`` (PyTorch is loaded here where it was not yet)."""
        if self._device is None:
            self._device = resolve_device(self.device_type)
        return self._device

    @property
    def net(self):
        """The PyTorch network (built here where an export served until now)."""
        if self._net is None:
            self._net = self.package.build(self.device)
            if self._openvino is not None:  # trained in place later, it stops the export's use
                self._openvino.watch(self._net)
        return self._net

    def _window(self) -> tuple[int, ...]:
        """``(C, *spatial)`` of the network's input for one window of the card's patch."""
        patch = volume_patch(self.card.patch_size, self.card.spatial_dims)
        return (len(self.card.channels), *(patch if self.card.spatial_dims == 3 else patch[1:]))

    @property
    def mirror(self) -> tuple[list[int], list[list[int]]]:
        """The card's test-time flips: (spatial axes, label pairs swapped by the last)."""
        spec = self.card.inference
        return list(spec.mirror_axes), [list(p) for p in spec.mirror_swap]

    def _forward(self, batch: np.ndarray, centers=None) -> np.ndarray:
        """Class logits, then the heads' extra channels (see :mod:`.heads`), of a (B, C, z, y, x)
        array of windows; ``centers`` go to a network that takes them (FocusNet: (B, K, nd) voxels
        of each window, -1 where none)."""
        nd = self.card.spatial_dims  # a 2D net gets (B, C, 1, y, x) windows: it runs per slice
        x = to_net(batch, nd)
        if self.runtime == "openvino" and self._has_trunk:
            trunk = self._openvino_trunk()
            if trunk is not None and trunk.fits(x):
                return from_net(self._torch_forward(x, centers, trunk), nd)
        elif self.runtime == "openvino" and centers is None:
            windows = self._openvino_windows()
            if windows is not None and windows.fits(x):
                return from_net(windows(x), nd)
        return from_net(self._torch_forward(x, centers), nd)

    def _torch_forward(self, x: np.ndarray, centers=None, trunk: TrunkWindows | None = None) -> np.ndarray:
        """The network's outputs for windows ``x`` by PyTorch; with ``trunk`` only what follows
        the network's trunk, which OpenVINO runs."""
        import torch

        dev, net = self.device, self.net  # built outside inference mode: its weights must count their writes
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16,
                                                    enabled=self.amp and dev.type in ("cuda", "cpu")):
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
            prompts = {} if centers is None else {"centers": centers}
            if trunk is not None:
                out = net.from_trunk(t, [torch.from_numpy(p).to(dev) for p in trunk(x)], **prompts)
            else:
                out = net(t, **prompts)
            chans = [out.logits] + (self.heads.channels(out, tuple(t.shape[2:])) if self.heads.count else [])
            y = torch.cat([c.float() for c in chans], 1) if len(chans) > 1 else out.logits.float()
        return y.cpu().numpy()

    def _weighted(self, patch) -> Callable | None:
        """OpenVINO's probabilities times the blending weight for windows of ``patch``
        (:meth:`OpenVinoWindows.weighted`), where OpenVINO runs this 3D network's windows in
        float32 and keeps no memo; else None, and the logits come back. (In bf16 OpenVINO would
        compute the softmax in bf16 too.)"""
        if self.runtime != "openvino" or self.card.spatial_dims != 3 or self._has_trunk:
            return None
        windows = self._openvino_windows()
        if not isinstance(windows, OpenVinoWindows) or windows.bf16 or windows.memo is not None:
            return None
        return windows.weighted if windows.takes((len(self.card.channels), *patch), weighted=True) else None

    def remember_windows(self, memo: dict | None) -> None:
        """Keep the outputs of the windows OpenVINO runs in ``memo`` (by a digest of their input)
        and take them from there when a window comes again (a routed network's parent half only).
        The package's int8 network keeps none: no other network gives its numbers, so its windows
        are never shared (:meth:`share_windows`) and digesting and copying them would be waste."""
        self._memo = memo
        if self._openvino is not None:
            self._openvino.memo = None if getattr(self._openvino, "int8", False) else memo

    def share_windows(self, parent: Predictor) -> bool:
        """Before this predictor runs: where its network is routed and the parent half is
        ``parent``'s network, bit for bit (a fine-tune's new model and the predictor it was trained
        from), run that half by ``parent``'s OpenVINO windows, with their memo
        (:meth:`remember_windows`: the windows ``parent`` ran are not run again). True where shared."""
        from ..nets.routed import RoutedNetwork

        theirs = parent._openvino
        if (theirs is None or getattr(theirs, "int8", False)  # int8: not the parent half's own numbers
                or not isinstance(self.net, RoutedNetwork) or not self.net.same_parent(parent.net)):
            return False
        self._parent_windows = theirs.base if isinstance(theirs, RoutedWindows) else theirs
        self._memo = theirs.memo
        return True

    def _int8_windows(self, net=None) -> OpenVinoWindows | None:
        """The package's int8 network for the card's windows, where this predictor may run it."""
        return int8_windows(self.package, self._window(), self.amp, net=net) if self.int8 else None

    def _openvino_windows(self) -> OpenVinoWindows | RoutedWindows | None:
        """OpenVINO for the card's windows, built once; a network it cannot take goes back to
        PyTorch (said once in the progress messages)."""
        if self._openvino is None:
            window = self._window()
            try:
                self._openvino = self._int8_windows(self.net) or windows_for(
                    self.net, self.card, window, self.amp, log=lambda m: self.progress("infer", 0.0, m),
                    parent=self._parent_windows)
                self._openvino.memo = None if getattr(self._openvino, "int8", False) else self._memo
            except Exception as exc:  # an op OpenVINO or the exporter lacks: PyTorch runs it
                self.runtime = "torch"
                self.progress("infer", 0.0, f"OpenVINO cannot run {self.card.name} ({type(exc).__name__}); "
                                            "PyTorch runs it")
                return None
        return self._openvino

    def _openvino_trunk(self) -> TrunkWindows | None:
        """OpenVINO for the trunk of the card's windows, built once (:meth:`_openvino_windows`)."""
        if self._trunk_windows is None:
            try:
                self._trunk_windows = trunk_windows(self.net, self.card, self._window(), self.amp,
                                                    log=lambda m: self.progress("infer", 0.0, m))
            except Exception as exc:  # an op OpenVINO or the exporter lacks: PyTorch runs it all
                self.runtime = "torch"
                self.progress("infer", 0.0, f"OpenVINO cannot run {self.card.name}'s trunk ({type(exc).__name__}); "
                                            "PyTorch runs it")
        return self._trunk_windows

    def predict_array(self, image: np.ndarray, tta: bool = False, fit: bool = False,
                      centers: dict | None = None) -> tuple[np.ndarray, dict, int]:
        """(probabilities (N, z, y, x), the heads' maps by name, passes) for a (C, z, y, x) array.

        With ``tta`` the probabilities are averaged over the flips; the heads' maps come from the
        unflipped pass (flipping would also have to mirror the box distances). With ``fit`` a
        volume smaller than the window runs in a window fitted to it and ``FIT_MARGIN`` voxels of
        padding each side (see :func:`fitted_patch`), unless the network detects its own organ
        boxes (L-SNet). ``centers`` ({class value: (z, y, x) voxel})
        place a network's small-organ segmenters (FocusNet's SOS-Nets) there; no flips then.
        """
        patch = volume_patch(self.card.patch_size, self.card.spatial_dims)
        # a network that finds its organs' boxes itself (L-SNet) keeps its trained window: in a
        # fitted one its L-Net found a refine point's organ for 33 % of its Dice, in the full one 67 %
        if fit and not self.heads.distances:
            patch = fitted_patch(patch, [n + 2 * FIT_MARGIN for n in image.shape[1:]])
        elif self.card.spatial_dims == 3 and not (self.heads.count or self.heads.center_prompt
                                                  or self.heads.box_prompt) and (step := downsampling(self.card)):
            patch = stretched_patch(patch, image.shape[1:], multiple=step)  # a little longer: one window, not two
        centers = {v: c for v, c in (centers or {}).items() if self.heads.center_prompt
                   and v in self.heads.heatmap_classes}
        axes, swap = self.mirror if tta and not centers else ([], [])
        forward = self._forward
        if centers:
            def forward(batch, starts):
                points = self.heads.window_centers(centers, starts, patch, self.card.spatial_dims)
                return self._forward(batch, points.to(self.device))
        flips = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
        n, extra = self.card.num_classes, self.heads.count
        weighted = None if centers or extra else self._weighted(patch)
        total, extras = None, {}
        for i, flip in enumerate(flips):
            dims = tuple(a + 1 for a in flip)
            out = sliding_window_predict(
                np.flip(image, dims) if dims else image, forward, patch, n, overlap=self.overlap,
                batch_size=self.batch_size, num_extra=extra, with_starts=bool(centers), weighted=weighted,
                progress=lambda f, i=i: self.progress("infer", (i + f) / len(flips), f"pass {i + 1}/{len(flips)}"))
            if not dims and extra:
                extras = self.heads.split(out[n:])
            out = out[:n]
            if dims:
                out = np.flip(out, dims)
            if flip and axes[-1] in flip:
                order = list(range(out.shape[0]))
                for a, b in swap:
                    order[a], order[b] = order[b], order[a]
                out = out[order]
            total = out if total is None else total + out
        return total / len(flips), extras, len(flips)

    def predict(self, images: list[sitk.Image], tta: bool = False, confidence: bool = True,
                roi_mm: list[float] | None = None, organ_box: bool = True, fit: bool = False,
                centers_mm: dict | None = None) -> Prediction:
        """Segment one case given its channels (the first is the reference grid).

        Args:
            tta: average over the model's training flips.
            confidence: also compute the confidence map on the input grid.
            roi_mm: segment only inside this LPS box ``[x0, y0, z0, x1, y1, z1]``; outside is
                background (confidence 1).
            organ_box: ``roi_mm`` is a box around the organs (a user's ``--roi``): a network
                that segments given boxes (L-SNet) segments it directly. False: a region to look
                in (a refine point's), run like any network's crop.
            fit: a crop smaller than the trained window runs in a window fitted to it (with
                ``FIT_MARGIN`` voxels of air around) instead of one padded to the full window: a
                refine's crop, a third of the work.
            centers_mm: {class value: LPS point}: a network that segments its small organs
                around given centres (FocusNet) centres that organ's SOS-Net on the point (a
                refine point on a small organ); other networks ignore it.
        """
        reference = images[0]
        box = None
        if roi_mm is not None:
            lo, hi = physical_box_to_index(reference, roi_mm, ROI_CONTEXT_MM)
            box = physical_box_to_index(reference, roi_mm, 0.0)
            size = [h - l for l, h in zip(lo, hi)]
            if min(size) <= 0 or min(h - l for l, h in zip(*box)) <= 0:
                raise InputError(f"--roi {roi_mm}: the box does not overlap the image")
            images = [sitk.RegionOfInterest(im, size, lo) for im in images]
        seconds = {}
        t = time.perf_counter()
        self.progress("preprocess", 0.0)
        pre = self.preprocessor(images)
        seconds["preprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        if box is not None and organ_box and self.heads.box_prompt:  # L-SNet: S-Net on the box
            probs, extras, passes = lsnet_on_box(self.net, self.card, self.device, pre.image, pre.grid, roi_mm), {}, 1
        else:
            centers = {v: grid_index(pre.grid, p) for v, p in (centers_mm or {}).items()}
            probs, extras, passes = self.predict_array(pre.image, tta, fit=fit, centers=centers)
        for windows in (self._openvino, self._trunk_windows):
            if windows is not None:
                windows.release()
        head = extras.get("confidence")
        if head is not None:
            head = head[0] if head.ndim == probs.ndim else head
        seconds["infer"] = time.perf_counter() - t
        t = time.perf_counter()
        self.progress("resample", 0.0)
        lab = probabilities_to_labels(probs, pre.grid, reference)
        conf = None
        if confidence:
            model_conf = head if head is not None else entropy_confidence(probs)
            conf = to_input_grid(model_conf, pre.grid, reference, default=1.0)
        if box is not None:  # outside the user's box: background, and certain of it
            (i0, j0, k0), (i1, j1, k1) = box
            inside = np.zeros(lab.shape, dtype=bool)
            inside[k0:k1, j0:j1, i0:i1] = True
            lab[~inside] = 0
            if conf is not None:
                conf[~inside] = 1.0
        out = sitk.GetImageFromArray(lab)
        out.CopyInformation(reference)
        regions = None
        if "heatmaps" in extras:
            regions = network_regions(extras["heatmaps"], extras.get("distances"), self.heads, pre.grid, reference,
                                      self.card.label_names(), probs.argmax(0))
        seconds["resample"] = time.perf_counter() - t
        return Prediction(out, probs, pre.grid, conf, seconds, passes, reference, extras, regions)
