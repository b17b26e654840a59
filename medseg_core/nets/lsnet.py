"""L-SNet: localise each target, recalibrate its region to a fixed size, segment it there.

After Xie et al., "L-SNet: from region localization to scale invariant medical image
segmentation" (2021). No code is public; the choices the paper leaves open are documented in
``docs/arch-parts/lsnet.md``. Three parts:

* **L-Net** -- a stride-4 convolutional stem and a small U-Net at quarter resolution with two
  heads: a CenterNet-style keypoint heatmap (sigmoid; one channel per foreground class or one
  shared) and an FCOS-style distance map (distances from each position to the sides of its
  object's box, positive through softplus).
* **Recalibration** -- each box (plus a relative margin) is resampled to ``roi_size`` by an
  axis-aligned affine transform (``affine_grid`` + ``grid_sample``), differentiable in the box
  (:mod:`medseg_core.nets.roi_align`).
* **S-Net** -- a small U-Net that segments each recalibrated region from the image crop and a crop
  of projected L-Net features; its logits are pasted back by the inverse transform. The gradient
  from S-Net into L-Net (through the boxes and the features) is multiplied by ``grad_decay``
  (:mod:`medseg_core.nets.grad_scale`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import factories as fx
from .grad_scale import grad_scale
from .base import SegNetwork
from .output import OutputHeads, SegOutput
from .registry import register
from .roi_align import expand_boxes, roi_crop, roi_paste
from .unet import ConvUnit, UNet, UNetBody

STRIDE = 4
#: Background logit margin outside every region: softmax gives foreground ~4.5e-5 there.
OUTSIDE_LOGIT = 10.0


# --------------------------------------------------------------------------- keypoints


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """Label the connected components of boolean masks (8-/26-connectivity), torch only.

    Every foreground voxel starts with its own label (1 + flat index); labels spread by a 3x3(x3)
    max-pool restricted to the mask until nothing changes, so each component ends with the label of
    its highest-index voxel. The number of iterations is the longest geodesic path inside a
    component -- small for the blob-like components of a thresholded heatmap at quarter resolution.

    Args:
        mask: (N, *S) boolean, S of 2 or 3 dimensions.

    Returns:
        (N, *S) long labels, 0 for background; labels are unique within each of the N maps.
    """
    nd = mask.dim() - 1
    numel = mask[0].numel()
    if numel >= 2 ** 24:
        raise ValueError("connected_components: too many voxels for exact float32 labels")
    pool = {2: F.max_pool2d, 3: F.max_pool3d}[nd]
    m = mask.unsqueeze(1).to(torch.float32)
    labels = (torch.arange(1, numel + 1, device=mask.device, dtype=torch.float32)
              .reshape(mask.shape[1:]).expand(mask.shape).unsqueeze(1)) * m
    for _ in range(numel):
        new = pool(labels, 3, stride=1, padding=1) * m
        if torch.equal(new, labels):
            break
        labels = new
    return labels.squeeze(1).to(torch.long)


def extract_keypoints(heatmap: torch.Tensor, threshold: float = 0.3, max_per_item: int = 4,
                      method: str = "components") -> list[dict]:
    """Find object centres in a sigmoid heatmap.

    ``"components"``: threshold the heatmap, label its connected components, and return each
    component's highest voxel (one keypoint per component, so plateaus and shoulders do not split
    an object; two objects whose blobs touch above the threshold merge). ``"maxpool"``: CenterNet's
    peak finding -- voxels that equal their 3x3(x3) max-pool and exceed the threshold.

    Args:
        heatmap: (B, K, *S) probabilities in [0, 1].
        threshold: minimum score.
        max_per_item: keep at most this many keypoints per batch item (strongest first, over all
            channels).
        method: ``"components"`` or ``"maxpool"``.

    Returns:
        Per batch item a dict: ``positions`` (n, nd) long voxel indices, ``scores`` (n,),
        ``channels`` (n,) long heatmap channel -- sorted by decreasing score.
    """
    heatmap = heatmap.detach()
    b, k = heatmap.shape[:2]
    spatial = heatmap.shape[2:]
    nd = len(spatial)
    flat_hm = heatmap.reshape(b * k, -1)
    numel = flat_hm.shape[1]
    if method == "maxpool":
        pool = {2: F.max_pool2d, 3: F.max_pool3d}[nd]
        peak = (heatmap == pool(heatmap, 3, stride=1, padding=1)) & (heatmap > threshold)
        maps, flat_idx = peak.reshape(b * k, -1).nonzero(as_tuple=True)
        scores = flat_hm[maps, flat_idx]
    elif method == "components":
        labels = connected_components((heatmap > threshold).reshape(b * k, *spatial)).reshape(b * k, -1)
        maps, vox = labels.nonzero(as_tuple=True)
        if maps.numel():
            key = maps * (numel + 1) + labels[maps, vox]
            _, comp = torch.unique(key, return_inverse=True)
            n_comp = int(comp.max()) + 1
            values = flat_hm[maps, vox]
            best = torch.full((n_comp,), -1.0, device=values.device, dtype=values.dtype)
            best = best.scatter_reduce(0, comp, values, reduce="amax")
            # the first voxel that reaches its component's maximum
            cand = torch.where(values == best[comp], vox, torch.full_like(vox, numel))
            flat_idx = torch.full((n_comp,), numel, device=vox.device, dtype=vox.dtype)
            flat_idx = flat_idx.scatter_reduce(0, comp, cand, reduce="amin")
            comp_map = torch.zeros(n_comp, device=vox.device, dtype=maps.dtype).scatter(0, comp, maps)
            maps, scores = comp_map, best
        else:
            flat_idx, scores = vox, flat_hm.new_zeros(0)
    else:
        raise ValueError(f"unknown keypoint method {method!r}")
    positions = torch.stack(torch.unravel_index(flat_idx, spatial), dim=-1) if flat_idx.numel() else \
        flat_idx.new_zeros((0, nd))
    result = []
    for item in range(b):
        sel = (maps // k) == item
        s, order = scores[sel].sort(descending=True)
        order = order[:max_per_item]
        result.append({"positions": positions[sel][order], "scores": s[:max_per_item],
                       "channels": (maps[sel] % k)[order]})
    return result


# --------------------------------------------------------------------------- network


@register("lsnet")
class LSNet(SegNetwork):
    """L-SNet for 2D or 3D: localise (L-Net), recalibrate, segment each region (S-Net).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes including background.
        lnet_features: channels per L-Net level at quarter resolution, finest first.
        snet_features: channels per S-Net (U-Net) level, finest first.
        heatmap_per_class: one heatmap channel per foreground class (``out_channels - 1``), else
            one shared channel.
        roi_size: S-Net input size, an int or ``spatial_dims`` ints.
        roi_margin: each side of a box is extended by this fraction of its size before
            recalibration (0.2 makes the region 1.4x the box).
        grad_decay: factor on the gradient from S-Net into L-Net (0.1 in the paper).
        max_rois: regions kept per batch item at inference (strongest keypoints).
        score_threshold: heatmap threshold for keypoints.
        keypoint_method: ``"components"`` or ``"maxpool"`` (:func:`extract_keypoints`).
        snet_feature_channels: L-Net decoder features projected to this many channels and cropped
            with the image as S-Net input (0: the image only; gradient then reaches L-Net through
            the box coordinates alone).
        norm, act: layer names for :mod:`medseg_core.nets.factories`.

    Shapes (input (B, in_channels, *S), Q = ceil(S / 4), R regions in all):
        ``logits`` (B, out_channels, *S): S-Net logits pasted back; where regions overlap their
        logits are averaged; outside every region a fixed background-wins vector
        (0 for background, -10 for the classes).
        ``heatmaps`` (B, K, *Q): sigmoid keypoint heatmaps at quarter resolution (K classes or 1);
        quarter voxel j covers input voxels [4j, 4j + 4), so an object centred at input edge
        coordinate c belongs to quarter voxel floor(c / 4) (targets go there).
        ``boxes`` (B, 2 * nd, *Q): distances in input voxels from the quarter voxel's centre
        (4j + 2) to the box sides, in the box layout: (z0, y0, x0, z1, y1, x1) in 3D, i.e.
        (front, top, left, back, bottom, right); 2D (top, left, bottom, right).
        ``rois``: per batch item a list of ``{"box", "crop_box", "score", "class"}`` (boxes as
        lists in input edge coordinates, ``class`` the label value or ``None``).
        ``extras``: ``roi_logits`` (R, out_channels, *roi_size) for the S-Net loss;
        ``roi_boxes`` (R, 2 * nd) the boxes, ``roi_crop_boxes`` the same with the margin (crop
        the label map with :func:`medseg_core.nets.roi_align.roi_crop` and these, ``mode=
        "nearest"``, for S-Net targets); ``roi_batch_index`` (R,); ``heatmap_logits``;
        ``stride`` (4).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 lnet_features: Sequence[int] = (16, 32, 64, 128),
                 snet_features: Sequence[int] = (16, 32, 64, 128), heatmap_per_class: bool = True,
                 roi_size=64, roi_margin: float = 0.2, grad_decay: float = 0.1, max_rois: int = 4,
                 score_threshold: float = 0.3, keypoint_method: str = "components",
                 snet_feature_channels: int = 8, norm: str = "instance", act: str = "leakyrelu"):
        super().__init__()
        if out_channels < 2:
            raise ValueError("out_channels counts background too; need at least 2")
        nd = spatial_dims
        self.spatial_dims = nd
        self.out_channels = out_channels
        self.roi_size = (int(roi_size),) * nd if isinstance(roi_size, int) else tuple(int(s) for s in roi_size)
        if len(self.roi_size) != nd:
            raise ValueError(f"roi_size needs {nd} entries, got {roi_size}")
        self.roi_margin = float(roi_margin)
        self.grad_decay = float(grad_decay)
        self.max_rois = int(max_rois)
        self.score_threshold = float(score_threshold)
        self.keypoint_method = keypoint_method
        self.heatmap_per_class = heatmap_per_class
        f0 = lnet_features[0]
        # L-Net
        self.stem = nn.Sequential(ConvUnit(nd, in_channels, max(f0 // 2, 1), 2, norm, act),
                                  ConvUnit(nd, max(f0 // 2, 1), f0, 2, norm, act))
        self.lnet = UNetBody(nd, f0, lnet_features, norm=norm, act=act)
        n_heat = out_channels - 1 if heatmap_per_class else 1
        self.heatmap_head = nn.Sequential(ConvUnit(nd, f0, f0, 1, norm, act), fx.conv(nd, f0, n_heat, 1))
        self.distance_head = nn.Sequential(ConvUnit(nd, f0, f0, 1, norm, act), fx.conv(nd, f0, 2 * nd, 1))
        nn.init.constant_(self.heatmap_head[-1].bias, -2.19)  # CenterNet: initial sigmoid ~0.1
        # S-Net
        self.feature_proj = (nn.Sequential(fx.conv(nd, f0, snet_feature_channels, 1), fx.act(act))
                             if snet_feature_channels > 0 else None)
        self.snet = UNet(nd, in_channels + snet_feature_channels, out_channels, features=snet_features,
                         norm=norm, act=act)

    # ------------------------------------------------------------------ parts

    def output_heads(self) -> OutputHeads:
        """Keypoint heatmaps (one per foreground class, or ``[0]``) and box distances at stride 4;
        ``forward(x, boxes=...)`` segments given boxes."""
        classes = tuple(range(1, self.out_channels)) if self.heatmap_per_class else (0,)
        return OutputHeads(heatmap_classes=classes, box_distances=True, threshold=self.score_threshold,
                           stride=STRIDE, box_prompt=True)

    def localise(self, x: torch.Tensor):
        """L-Net: (decoder features, heatmap logits, distances), all at quarter resolution."""
        feat = self.lnet(self.stem(x))
        return feat, self.heatmap_head(feat), F.softplus(self.distance_head(feat)) * STRIDE

    def decode_boxes(self, distances: torch.Tensor, keypoints: list[dict], spatial_size) -> tuple:
        """Boxes at keypoints: centre (4j + 2) minus / plus the distances there, clipped to the image.

        Returns (boxes (R, 2 nd), batch index (R,), scores (R,), channels (R,)).
        """
        nd = self.spatial_dims
        distances = distances.float()  # box coordinates in float32, also under autocast
        size = torch.as_tensor(spatial_size, dtype=distances.dtype, device=distances.device)
        boxes, bidx, scores, chans = [], [], [], []
        for item, kp in enumerate(keypoints):
            pos = kp["positions"]
            if not len(pos):
                continue
            d = distances[item][(slice(None),) + tuple(pos.T)].T  # (n, 2 nd)
            centre = (pos.to(distances.dtype) + 0.5) * STRIDE
            lo = torch.clamp(centre - d[:, :nd], min=0.0)
            hi = torch.minimum(centre + d[:, nd:], size)
            boxes.append(torch.cat([lo, hi], dim=1))
            bidx.append(torch.full((len(pos),), item, dtype=torch.long, device=distances.device))
            scores.append(kp["scores"])
            chans.append(kp["channels"])
        if not boxes:
            z = distances.new_zeros((0, 2 * nd))
            e = torch.zeros(0, dtype=torch.long, device=distances.device)
            return z, e, distances.new_zeros(0), e
        return torch.cat(boxes), torch.cat(bidx), torch.cat(scores), torch.cat(chans)

    def segment_rois(self, x: torch.Tensor, feat: torch.Tensor, crop_boxes: torch.Tensor,
                     batch_index: torch.Tensor) -> torch.Tensor:
        """S-Net on the recalibrated regions: (R, out_channels, *roi_size)."""
        crops = [roi_crop(x, crop_boxes, batch_index, self.roi_size)]
        if self.feature_proj is not None:
            f = grad_scale(self.feature_proj(feat), self.grad_decay)
            crops.append(roi_crop(f, crop_boxes / STRIDE, batch_index, self.roi_size))
        return self.snet(torch.cat(crops, dim=1)).logits

    def paste(self, roi_logits: torch.Tensor, crop_boxes: torch.Tensor, batch_index: torch.Tensor,
              batch_size: int, spatial_size) -> torch.Tensor:
        """Full-size float32 logits: regions pasted back and averaged where they overlap; background
        wins (logits ``(0, -10, ..., -10)``) wherever no region covers a voxel."""
        c = self.out_channels
        shape = (batch_size, c, *spatial_size)
        roi_logits = roi_logits.float()  # paste and accumulate in float32 (also under autocast)
        outside = torch.full((c,), -OUTSIDE_LOGIT, dtype=roi_logits.dtype, device=roi_logits.device)
        outside[0] = 0.0
        outside = outside.reshape(1, c, *([1] * len(spatial_size)))
        if roi_logits.shape[0] == 0:
            return outside.expand(shape).clone()
        ones = torch.ones_like(roi_logits[:, :1])
        pasted = roi_paste(torch.cat([roi_logits, ones], dim=1), crop_boxes, spatial_size)
        total = roi_logits.new_zeros((batch_size, c + 1, *spatial_size)).index_add(0, batch_index, pasted)
        weight = total[:, c:]
        return total[:, :c] / weight.clamp(min=1.0) + (weight == 0).to(roi_logits.dtype) * outside

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, boxes: torch.Tensor | None = None,
                box_classes: torch.Tensor | None = None) -> SegOutput:
        """Run L-Net, pick regions, segment them, paste back.

        Args:
            x: (B, in_channels, *S).
            boxes: optional (B, R, 2 * nd) boxes ``[z0, y0, x0, z1, y1, x1]`` / ``[y0, x0, y1, x1]``
                in input voxel edge coordinates (teacher forcing during training); rows with any
                ``hi <= lo`` (e.g. all zeros) are padding and skipped. Without them, regions come
                from the heatmap keypoints and the distance map (gradient-decayed into L-Net).
            box_classes: optional (B, R) label values of the given boxes (reported in ``rois``).
        """
        nd = self.spatial_dims
        b = x.shape[0]
        spatial = tuple(x.shape[2:])
        feat, heat_logits, distances = self.localise(x)
        heatmaps = torch.sigmoid(heat_logits)

        if boxes is not None:
            boxes = boxes.to(device=x.device, dtype=torch.float32)
            valid = (boxes[..., nd:] > boxes[..., :nd]).all(dim=-1)  # (B, R)
            batch_index = valid.nonzero(as_tuple=True)[0]
            roi_boxes = boxes[valid]
            scores = torch.ones(len(roi_boxes), device=x.device)
            classes = (box_classes.to(x.device)[valid].tolist() if box_classes is not None
                       else [None] * len(roi_boxes))
        else:
            keypoints = extract_keypoints(heatmaps, self.score_threshold, self.max_rois, self.keypoint_method)
            roi_boxes, batch_index, scores, chans = self.decode_boxes(distances, keypoints, spatial)
            roi_boxes = grad_scale(roi_boxes, self.grad_decay)
            classes = [int(ch) + 1 if self.heatmap_per_class else None for ch in chans.tolist()]

        crop_boxes = expand_boxes(roi_boxes, self.roi_margin)
        if len(roi_boxes):
            roi_logits = self.segment_rois(x, feat, crop_boxes, batch_index)
        else:
            roi_logits = x.new_zeros((0, self.out_channels, *self.roi_size))
        logits = self.paste(roi_logits, crop_boxes, batch_index, b, spatial)

        rois: list[list[dict]] = [[] for _ in range(b)]
        for i, item in enumerate(batch_index.tolist()):
            rois[item].append({"box": roi_boxes[i].detach().tolist(),
                               "crop_box": crop_boxes[i].detach().tolist(),
                               "score": float(scores[i]), "class": classes[i]})
        return SegOutput(logits=logits, heatmaps=heatmaps, boxes=distances, rois=rois,
                         extras={"roi_logits": roi_logits, "roi_boxes": roi_boxes,
                                 "roi_crop_boxes": crop_boxes, "roi_batch_index": batch_index,
                                 "heatmap_logits": heat_logits, "stride": STRIDE})
