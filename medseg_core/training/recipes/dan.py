"""The difficulty-aware network's adversarial confidence learning (Nie et al.; notes in
``../shared/notes``).

Each iteration alternates two updates:

1. **Confidence network** (its own optimiser): ``BCE(conf(x, one-hot truth) -> 1) +
   BCE(conf(x, prediction) -> 0)`` with the prediction detached: it learns to tell the
   network's output from the truth, voxel by voxel.
2. **Segmentation network** (the trainer's optimiser): organ-attention Dice (FDice) +
   confidence-weighted cross-entropy (FCE, weights ``(1 - M)^beta`` from the confidence map M,
   detached) + the adversarial term ``adversarial_weight * BCE(conf(x, prediction) -> 1)``,
   whose gradient flows through the prediction into the segmentation network only.

Un-annotated classes (organs not contoured in a case) are handled as in the other recipes; in
the one-hot truth they count as background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...losses import ConfidenceWeightedCE, OrganAttentionDiceLoss, adversarial_loss, confidence_bce
from ...nets.dan import DAN
from .base import Recipe, step_on, sync_lr


class DANAdversarial(Recipe):
    """See the module docstring.

    Args:
        adversarial_weight: weight of the adversarial term (0.005, the paper).
        fce_beta: exponent of the FCE weights.
        fdice_r: exponent of the organ-attention Dice weights.
        fce_weight: weight of FCE against FDice.
    """

    name = "dan"

    def __init__(self, adversarial_weight: float = 0.005, fce_beta: float = 2.0, fdice_r: float = 2.0,
                 fce_weight: float = 1.0):
        self.adversarial_weight = adversarial_weight
        self.fce = ConfidenceWeightedCE(beta=fce_beta)
        self.fce_weight = fce_weight
        self.fdice_r = fdice_r
        self.fdice = None
        self.net = self.conf_opt = None
        self.last = {}

    def attach(self, net, make_optimizer):
        if not isinstance(net, DAN):
            raise ValueError("the dan recipe needs a DAN network")
        self.net = net
        self.conf_opt = make_optimizer(list(net.confidence_net.parameters()))
        self.fdice = OrganAttentionDiceLoss(num_classes=net.seg_net.head.out_channels, r=self.fdice_r)

    def parameters(self, net):
        return net.seg_net.parameters()

    def train_step(self, model, x, target, annotated, optimizer, autocast):
        net = self.net
        sync_lr(optimizer, self.conf_opt)
        with autocast():
            logits = net.seg_net(x).logits
        logits = logits.float()
        n_cls = logits.shape[1]
        self.fdice.to(logits.device)
        probs = torch.softmax(logits, 1)
        truth = F.one_hot(target.long(), n_cls).movedim(-1, 1).to(probs)

        # 1. the confidence network tells truth from prediction
        with autocast():
            c_true = net.confidence(x, truth)
            c_pred = net.confidence(x, probs.detach())
        c_loss = confidence_bce(c_true.float(), c_pred.float())
        step_on(self.conf_opt, c_loss, net.confidence_net.parameters())

        # 2. the segmentation network: FDice + FCE + adversarial term
        with autocast():
            c_adv = net.confidence(x, probs)
        confidence = torch.sigmoid(c_adv.detach().float())
        seg_loss = (self.fdice(logits, target, annotated)
                    + self.fce_weight * self.fce(logits, target, confidence, annotated))
        adv = adversarial_loss(c_adv.float(), self.adversarial_weight)
        step_on(optimizer, seg_loss + adv, net.seg_net.parameters())
        self.last = {"confidence_loss": round(float(c_loss.detach()), 4),
                     "seg_loss": round(float(seg_loss.detach()), 4), "adversarial": round(float(adv.detach()), 5),
                     "mean_confidence": round(float(confidence.mean()), 4)}
        return (seg_loss + adv).detach()

    def loss(self, out, target, annotated):  # not used: train_step does the work
        raise NotImplementedError("the dan recipe trains through train_step")

    def state(self):
        return dict(self.last)

    def state_dict(self):
        return {"confidence_optimizer": self.conf_opt.state_dict(),
                "fdice": {k: v.cpu() for k, v in self.fdice.state_dict().items()}}

    def load_state_dict(self, state):
        if "confidence_optimizer" in state:
            self.conf_opt.load_state_dict(state["confidence_optimizer"])
        if "fdice" in state:
            self.fdice.load_state_dict(state["fdice"])
