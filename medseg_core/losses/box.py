"""Distance-IoU loss for 2D and 3D axis-aligned boxes (L-SNet's box regression).

Boxes are corner-coded, low corner then high corner, in one axis order: 2D ``(y0, x0, y1, x1)``,
3D ``(z0, y0, x0, z1, y1, x1)``. The loss is symmetric in the axes, so in 2D it equals torchvision's
``distance_box_iou_loss`` on ``(x0, y0, x1, y1)`` boxes (same ``eps`` placement).
"""

from __future__ import annotations

import torch

from ._utils import as_float, check_reduction, reduce


def diou_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor, reduction: str = "mean",
              eps: float = 1e-7) -> torch.Tensor:
    """``1 - IoU + |c_pred - c_target|^2 / diag^2`` (Zheng et al. 2020).

    ``diag`` is the diagonal of the smallest box enclosing both; ``IoU = inter / (union + eps)`` and
    ``eps`` is added to ``diag^2``, as in torchvision. Degenerate (inverted) boxes are not checked.

    Args:
        pred_boxes: (..., 2D) predicted boxes, D = 2 or 3.
        target_boxes: (..., 2D) reference boxes, same shape.
        reduction: "mean" (default), "sum" or "none" (the leading shape).
        eps: numerical guard.

    Returns:
        the reduced loss.

    Boxes [0, 2]^2 and [1, 3]^2: IoU 1/7, centre distance^2 2, enclosing diagonal^2 18:

    >>> import torch
    >>> a, b = torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 1., 3., 3.]])
    >>> round(diou_loss(a, b).item(), 5), round(1 - 1 / 7 + 2 / 18, 5)
    (0.96825, 0.96825)
    """
    check_reduction(reduction)
    if pred_boxes.shape != target_boxes.shape or pred_boxes.shape[-1] not in (4, 6):
        raise ValueError(f"expected two (..., 4) or (..., 6) box tensors, got {tuple(pred_boxes.shape)} "
                         f"and {tuple(target_boxes.shape)}")
    p, t = as_float(pred_boxes), as_float(target_boxes)
    t = t.to(p)
    d = p.shape[-1] // 2
    p_lo, p_hi, t_lo, t_hi = p[..., :d], p[..., d:], t[..., :d], t[..., d:]
    inter = (torch.minimum(p_hi, t_hi) - torch.maximum(p_lo, t_lo)).clamp_min(0).prod(-1)
    union = (p_hi - p_lo).prod(-1) + (t_hi - t_lo).prod(-1) - inter
    iou = inter / (union + eps)
    diag2 = (torch.maximum(p_hi, t_hi) - torch.minimum(p_lo, t_lo)).square().sum(-1) + eps
    centre2 = ((p_lo + p_hi) / 2 - (t_lo + t_hi) / 2).square().sum(-1)
    return reduce(1 - iou + centre2 / diag2, reduction)
