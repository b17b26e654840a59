"""L-SNet's alternating training (Xie et al. 2021): localise, then segment the region.

Each iteration makes two updates:

1. **L-Net** (its own optimiser, L-Net parameters only): a CenterNet focal loss between the
   keypoint heatmaps and Gaussians at each labelled class's box centre (quarter resolution), plus
   ``box_weight`` times the DIoU loss of the boxes decoded at those centres against the true
   boxes.
2. **Whole network** (the trainer's optimiser): the S-Net loss, focal + ``dice_weight`` * Dice
   (0.2 in the paper), on one region per item, taken from one of the three strongest keypoints
   (chosen at random); the region's box comes from the distance map there, so the S-Net's
   gradient reaches L-Net through the box and the features, multiplied by the network's
   ``grad_decay``. An item without a keypoint above the threshold (early in training) uses the
   true box of a random labelled class instead.

The trainer's learning-rate schedule drives both optimisers.
"""

from __future__ import annotations

import random

import torch

from ...losses import CenterNetFocalLoss, diou_loss, gaussian_heatmap
from ...nets.grad_scale import grad_scale
from ...nets.lsnet import STRIDE, LSNet, extract_keypoints
from ...nets.roi_align import expand_boxes, roi_crop
from .base import FocalDice, Recipe, step_on, sync_lr


def class_boxes(target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of each foreground class in each item, in voxel edge coordinates.

    Returns:
        ``boxes`` (B, N-1, 2D) ``[lo..., hi...]`` and ``present`` (B, N-1) bool.
    """
    b, nd = target.shape[0], target.ndim - 1
    boxes = torch.zeros((b, num_classes - 1, 2 * nd))
    present = torch.zeros((b, num_classes - 1), dtype=torch.bool)
    for i in range(b):
        for c in range(1, num_classes):
            idx = (target[i] == c).nonzero()
            if len(idx):
                boxes[i, c - 1, :nd] = idx.min(0).values.float().cpu()
                boxes[i, c - 1, nd:] = idx.max(0).values.float().cpu() + 1
                present[i, c - 1] = True
    return boxes, present


def lnet_parameters(net: torch.nn.Module):
    """Parameters of L-Net: stem, trunk and both heads."""
    for part in (net.stem, net.lnet, net.heatmap_head, net.distance_head):
        yield from part.parameters()


class LSNetAlternating(Recipe):
    """See the module docstring.

    Args:
        heatmap_sigma: Gaussian sigma of the keypoint targets, in quarter-resolution voxels.
        box_weight: weight of the DIoU box loss in the L-Net update.
        dice_weight: weight of Dice in the S-Net loss (0.2, the paper).
        top_k: the region comes from one of the ``top_k`` strongest keypoints (3, the paper).
        gamma: focal exponent.
        seed: of the keypoint and fallback choices.
    """

    name = "lsnet"

    def __init__(self, heatmap_sigma: float = 1.5, box_weight: float = 1.0, dice_weight: float = 0.2,
                 top_k: int = 3, gamma: float = 2.0, seed: int = 0):
        self.sigma = heatmap_sigma
        self.box_weight = box_weight
        self.top_k = top_k
        self.heat_loss = CenterNetFocalLoss(sigmoid=True)
        self.seg = FocalDice(gamma=gamma, dice_weight=dice_weight)
        self.rng = random.Random(seed)
        self.net = self.lnet_opt = None
        self.last = {}

    def attach(self, net, make_optimizer):
        if not isinstance(net, LSNet):
            raise ValueError("the lsnet recipe needs an L-SNet network")
        self.net = net
        self.lnet_opt = make_optimizer(list(lnet_parameters(net)))

    # ---------------------------------------------------------------- targets
    def _localisation_targets(self, target, n_cls, q_shape, device):
        """True boxes, their presence, their quarter-resolution centres and Gaussian heatmaps."""
        boxes, present = class_boxes(target, n_cls)
        nd = target.ndim - 1
        k = n_cls - 1 if self.net.heatmap_per_class else 1
        heat = torch.zeros((target.shape[0], k, *q_shape))
        centres = torch.div((boxes[..., :nd] + boxes[..., nd:]) / 2, STRIDE, rounding_mode="floor").long()
        centres = torch.minimum(centres, torch.tensor(q_shape) - 1)
        for i in range(target.shape[0]):
            for c in range(n_cls - 1):
                if present[i, c]:
                    ch = c if self.net.heatmap_per_class else 0
                    peak = gaussian_heatmap(q_shape, centres[i, c][None].tolist(), self.sigma)
                    heat[i, ch] = torch.maximum(heat[i, ch], peak)
        return boxes.to(device), present.to(device), centres.to(device), heat.to(device)

    # ---------------------------------------------------------------- the step
    def train_step(self, model, x, target, annotated, optimizer, autocast):
        net = self.net
        n_cls, nd = net.out_channels, net.spatial_dims
        sync_lr(optimizer, self.lnet_opt)

        # 1. L-Net: heatmap + box losses
        with autocast():
            feat, heat_logits, distances = net.localise(x)
        q_shape = tuple(heat_logits.shape[2:])
        boxes, present, centres, heat = self._localisation_targets(target, n_cls, q_shape, x.device)
        ann = annotated[:, 1:] if net.heatmap_per_class else annotated[:, 1:].any(1, keepdim=True)
        l_loss = self.heat_loss(heat_logits.float(), heat, ann)
        if present.any():
            i, c = present.nonzero(as_tuple=True)
            d = distances.float()[(i, slice(None)) + tuple(centres[i, c].T)]  # (n, 2 nd)
            mid = (centres[i, c].float() + 0.5) * STRIDE
            pred = torch.cat([mid - d[:, :nd], mid + d[:, nd:]], 1)
            box_loss = diou_loss(pred, boxes[i, c])
            l_loss = l_loss + self.box_weight * box_loss
        step_on(self.lnet_opt, l_loss, lnet_parameters(net))

        # 2. the whole network: S-Net loss on one region per item
        with autocast():
            feat, heat_logits, distances = net.localise(x)
        keypoints = extract_keypoints(torch.sigmoid(heat_logits.detach().float()), net.score_threshold, self.top_k,
                                      net.keypoint_method)
        chosen, fallback = [], []
        for item, kp in enumerate(keypoints):
            if len(kp["positions"]):
                j = self.rng.randrange(len(kp["positions"]))
                chosen.append({k: v[j:j + 1] for k, v in kp.items()})
            else:
                chosen.append({"positions": kp["positions"], "scores": kp["scores"], "channels": kp["channels"]})
                labelled = present[item].nonzero().flatten().tolist()
                if labelled:
                    fallback.append((item, boxes[item, self.rng.choice(labelled)]))
        roi_boxes, batch_index, _, _ = net.decode_boxes(distances, chosen, tuple(x.shape[2:]))
        roi_boxes = grad_scale(roi_boxes, net.grad_decay)
        if fallback:
            roi_boxes = torch.cat([roi_boxes, torch.stack([b for _, b in fallback]).to(roi_boxes)])
            batch_index = torch.cat([batch_index, torch.tensor([i for i, _ in fallback], device=x.device)])
        if not len(roi_boxes):  # nothing labelled and nothing found: only L-Net learned this step
            step_on(optimizer, None, net.parameters())  # (a step all the same, in step with the other ranks)
            self.last = {"l_loss": round(float(l_loss.detach()), 4), "regions": 0}
            return l_loss.detach()
        crop_boxes = expand_boxes(roi_boxes, net.roi_margin)
        with autocast():
            roi_logits = net.segment_rois(x, feat, crop_boxes, batch_index)
        roi_target = roi_crop(target[:, None].float(), crop_boxes.detach(), batch_index, net.roi_size,
                              mode="nearest")[:, 0].round().long()
        s_loss = self.seg(roi_logits.float(), roi_target, annotated[batch_index])
        step_on(optimizer, s_loss, net.parameters())
        self.last = {"l_loss": round(float(l_loss.detach()), 4), "s_loss": round(float(s_loss.detach()), 4),
                     "regions": int(len(roi_boxes)), "fallback": len(fallback)}
        return (l_loss + s_loss).detach()

    def loss(self, out, target, annotated):  # not used: train_step does the work
        raise NotImplementedError("the lsnet recipe trains through train_step")

    def state(self):
        return dict(self.last)

    def state_dict(self):
        return {"lnet_optimizer": self.lnet_opt.state_dict()}

    def load_state_dict(self, state):
        if "lnet_optimizer" in state:
            self.lnet_opt.load_state_dict(state["lnet_optimizer"])
