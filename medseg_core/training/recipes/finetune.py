"""``finetune``: adapting a trained model to a user's corrections.

Dice + cross-entropy aware of what each correction annotates (as ``dice_ce``), deep supervision
where the network has it, and by default the network's encoder frozen
(:meth:`~medseg_core.nets.base.SegNetwork.encoder_modules`): fewer weights move, a step costs
less, and the frozen part keeps its batch-norm statistics and dropout as trained.
"""

from __future__ import annotations

import torch

from .losses_only import DiceCE


class Finetune(DiceCE):
    name = "finetune"

    def __init__(self, freeze_encoder: bool = True, **kw):
        super().__init__(**kw)
        self.freeze_encoder = freeze_encoder
        self.frozen: list[torch.nn.Module] = []

    def attach(self, net, make_optimizer):
        self.frozen = list(net.encoder_modules()) if self.freeze_encoder else []
        for module in self.frozen:
            module.requires_grad_(False)

    def parameters(self, net):
        return [p for p in net.parameters() if p.requires_grad]

    def train_mode(self, net):
        net.train()
        for module in self.frozen:
            module.eval()

    def detach(self, net):
        for module in self.frozen:
            module.requires_grad_(True)

    def state(self):
        return {"encoder_frozen": bool(self.frozen)}
