"""Extra output maps of the papers' networks, made window-independent for sliding windows.

A network declares what its ``SegOutput`` carries (:class:`~medseg_core.nets.output.OutputHeads`):
a confidence logit (difficulty-aware network), small-organ centre heatmaps (FocusNet's SOL-Net)
or keypoint heatmaps with box distances (L-SNet, at quarter resolution). :class:`Heads` turns
them into full-resolution channels that can be blended across windows like the class
probabilities, and tells what each channel is:

* ``confidence``: one channel, a logit (the sigmoid is applied after blending);
* ``heatmap``: one channel per small organ (FocusNet) or per class (L-SNet), probabilities;
* ``distance``: L-SNet's 2 x nd distances to the box sides, re-expressed relative to each
  voxel's own centre (so they no longer depend on where a window starts).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Heads:
    confidence: bool = False
    heatmaps: int = 0
    distances: int = 0
    heatmap_classes: list[int] = field(default_factory=list)  # the class of each heatmap channel
    threshold: float | list[float] = 0.5  # one for every heatmap or one each (:meth:`threshold_of`)
    roi_sizes: list[list[int]] = field(default_factory=list)  # FocusNet: ROI size per organ (voxels)
    stride: int = 1
    center_prompt: bool = False  # FocusNet: forward(x, centers=...) centres the SOS-Nets
    box_prompt: bool = False  # L-SNet: forward(x, boxes=...) segments given boxes

    @property
    def count(self) -> int:
        return int(self.confidence) + self.heatmaps + self.distances

    @classmethod
    def of(cls, net) -> "Heads":
        """What ``net`` produces, as it declares it
        (:meth:`~medseg_core.nets.base.SegNetwork.output_heads`)."""
        spec = net.output_heads()
        return cls(confidence=spec.confidence, heatmaps=len(spec.heatmap_classes),
                   distances=2 * int(net.spatial_dims) if spec.box_distances else 0,
                   heatmap_classes=list(spec.heatmap_classes),
                   threshold=([float(t) for t in spec.threshold] if isinstance(spec.threshold, (tuple, list))
                              else float(spec.threshold)), roi_sizes=[list(r) for r in spec.roi_sizes],
                   stride=int(spec.stride), center_prompt=bool(spec.center_prompt),
                   box_prompt=bool(spec.box_prompt))

    def threshold_of(self, k: int) -> float:
        """The presence threshold of heatmap channel ``k``."""
        return float(self.threshold[k]) if isinstance(self.threshold, list) else float(self.threshold)

    def split(self, extra):
        """The blended extra channels ``(count, *S)`` (an array) by name: ``confidence`` (the
        sigmoid applied), ``heatmaps``, ``distances``."""
        import numpy as np

        out, i = {}, 0
        if self.confidence:
            out["confidence"] = 1.0 / (1.0 + np.exp(-extra[0]))
            i = 1
        if self.heatmaps:
            out["heatmaps"] = extra[i:i + self.heatmaps]
            i += self.heatmaps
        if self.distances:
            out["distances"] = extra[i:i + self.distances]
        return out

    def window_centers(self, centers: dict, starts, patch, spatial_dims: int):
        """(B, K, nd) long tensor: the small organs' centres in each window's voxels (-1: the
        organ's own heatmap peak), from ``centers`` {class value: (z, y, x) voxel of the whole
        image}, for windows of ``patch`` starting at ``starts``. A 2D network's window is one
        slice: every slice takes the point's in-plane position."""
        import torch

        nd, classes = spatial_dims, self.heatmap_classes
        out = torch.full((len(starts), len(classes), nd), -1, dtype=torch.long)
        for value, zyx in centers.items():
            j = classes.index(value)
            for b, start in enumerate(starts):
                local = [int(round(c)) - s for c, s in zip(zyx, start)][-nd:]
                if all(0 <= v < n for v, n in zip(local, patch[-nd:])):
                    out[b, j] = torch.tensor(local)
        return out

    def channels(self, out, size: tuple[int, ...]) -> list:
        """The extra channels of one window batch (tensors), at the window's size ``size``."""
        import torch

        extra = []
        if self.confidence:
            extra.append(out.confidence.float())
        if self.heatmaps:
            extra.append(_resize(out.heatmaps.float(), size))
        if self.distances:
            d = out.boxes.float()
            nd = len(size)
            for a, n in enumerate(size):  # each voxel takes its quarter cell's distances
                cell = torch.div(torch.arange(n, device=d.device), self.stride, rounding_mode="floor")
                d = d.index_select(a + 2, cell.clamp(max=d.shape[a + 2] - 1))
            for a, n in enumerate(size):
                v = torch.arange(n, device=d.device, dtype=d.dtype)
                delta = (v + 0.5) - (torch.div(v, self.stride, rounding_mode="floor") + 0.5) * self.stride
                shape = [1] * (nd + 2)
                shape[a + 2] = n
                delta = delta.view(shape)
                d[:, a:a + 1] = d[:, a:a + 1] + delta          # near side: lo = centre - d
                d[:, nd + a:nd + a + 1] = d[:, nd + a:nd + a + 1] - delta  # far side: hi = centre + d
            extra.append(d)
        return extra


def _resize(x, size):
    import torch.nn.functional as F

    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(x, size=size, mode=mode, align_corners=False)
