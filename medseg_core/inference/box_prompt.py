"""A user's box as an L-SNet's region (after Xie et al., "L-SNet: from region localization to scale
invariant medical image segmentation"): instead of the regions its L-Net detects, the S-Net
segments the box the user drew, recalibrated to its own scale and pasted back. Also the LPS
point -> model-grid voxel map that places a box or a refine point on the model grid."""

from __future__ import annotations

import numpy as np

from ..data.preprocess import Grid


def grid_index(grid: Grid, point_mm) -> tuple[float, float, float]:
    """An LPS point's continuous (z, y, x) voxel on the model grid."""
    rot = np.reshape(grid.direction, (3, 3))
    ijk = rot.T @ (np.asarray(point_mm, dtype=float) - np.asarray(grid.origin)) / np.asarray(grid.spacing)
    return float(ijk[2]), float(ijk[1]), float(ijk[0])


def lsnet_on_box(net, card, device, image: np.ndarray, grid: Grid, roi_mm: list[float]) -> np.ndarray:
    """(N, z, y, x) class probabilities of the L-SNet ``net`` (of ``card``) on the (C, z, y, x)
    model-grid ``image`` whose region is the LPS box ``roi_mm`` ``[x0, y0, z0, x1, y1, z1]``
    (no keypoints): the S-Net segments the recalibrated box, pasted back into the volume."""
    import torch

    corners = [[x, y, z] for x in roi_mm[0::3] for y in roi_mm[1::3] for z in roi_mm[2::3]]
    idx = np.array([grid_index(grid, c) for c in corners])  # (z, y, x)
    lo = np.clip(np.floor(idx.min(0) + 0.5), 0, None)  # voxel edges
    hi = np.minimum(np.ceil(idx.max(0) + 0.5), np.array(image.shape[1:]))
    x = torch.from_numpy(image)[None].to(device)
    # the L-Net still runs over the whole input: a crop smaller than the trained window is
    # padded at its far end (box coordinates unchanged) so its deepest level keeps some extent
    spatial = list(image.shape[1:]) if card.spatial_dims == 3 else list(image.shape[2:])
    pad = [max(0, int(p) - n) for p, n in zip(card.patch_size, spatial)]
    if any(pad):
        flat = [v for d in reversed(pad) for v in (0, d)]
        x = torch.nn.functional.pad(x, flat + ([0, 0] if card.spatial_dims == 2 else []), value=float(x.min()))
    with torch.inference_mode():
        if card.spatial_dims == 3:
            box = torch.tensor([[list(lo) + list(hi)]], dtype=torch.float32, device=device)
            logits = net(x, boxes=box).logits[0][(slice(None),) + tuple(slice(0, n) for n in spatial)]
        else:  # slice by slice inside the box
            logits = torch.full((card.num_classes,) + tuple(image.shape[1:]), -10.0, device=device)
            logits[0] = 0.0
            box = torch.tensor([[[lo[1], lo[2], hi[1], hi[2]]]], dtype=torch.float32, device=device)
            for z in range(int(lo[0]), int(hi[0])):
                logits[:, z] = net(x[:, :, z], boxes=box).logits[0][:, :spatial[0], :spatial[1]]
    return torch.softmax(logits.float(), 0).cpu().numpy()
