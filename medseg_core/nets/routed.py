"""A fine-tuned network that answers only for the organs the user corrected.

Fine-tuning on a few corrected cases moves the whole decoder: on new patients the organs the user
accepted drifted by 0.01 to 0.03 Dice, and keeping half of the change (WiSE-FT's interpolation)
halved that but also halved what the corrections taught (``docs/results.md``, issue 17). This
network keeps the parent untouched beside the fine-tuned copy and routes each class to one of
them, as probabilities:

* a *routed* class (one the user edited in some correction of the lineage) takes the fine-tuned
  network's probability, ``p(c) = p_tuned(c)``;
* every other class, background included, shares what is left as the parent shares it:
  ``p(c) = p_parent(c) / sum_{k not routed} p_parent(k) * sum_{k not routed} p_tuned(k)``.

The result is a distribution (it sums to one); an organ the user never corrected keeps the
parent's shape wherever the corrected organs do not claim or release voxels. Logits cannot be
mixed (a softmax ignores a constant added to every class, and two networks add different ones),
so :meth:`forward` returns log-probabilities, which every consumer treats as logits.

A chain of fine-tunes stays two networks: the next generation trains :attr:`tuned` again and
routes the union of the edited classes; :attr:`base` is the original parent throughout. Both run
in full, and the package stores both: the copy's encoder, frozen by default, computes (and
stores) what the parent's does; sharing it is left for later.

Shapes:
    input (B, C, *S) -> ``SegOutput.logits`` (B, N, *S) log-probabilities; the other fields
    (confidence, heatmaps, ...) are the parent's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import SegNetwork
from .output import OutputHeads, SegOutput
from .registry import build_network, register


@register("routed")
class RoutedNetwork(SegNetwork):
    """Args:
        base: the parent network as the card names it, ``{"name": ..., "kwargs": {...}}``; the
            fine-tuned copy is the same network.
        routed: the class values (1 to the number of classes - 1) whose probabilities come from
            the fine-tuned copy.
    """

    def __init__(self, base: dict, routed: Sequence[int]):
        super().__init__()
        self.base_spec = dict(base)
        self.base = build_network(self.base_spec["name"], **self.base_spec.get("kwargs", {}))
        self.tuned = build_network(self.base_spec["name"], **self.base_spec.get("kwargs", {}))
        self.spatial_dims = getattr(self.base, "spatial_dims", None)
        self.classes = self.base_spec.get("kwargs", {}).get("out_channels")
        self.set_routed(routed)

    @classmethod
    def around(cls, parent: SegNetwork, spec: dict, routed: Sequence[int] = ()) -> "RoutedNetwork":
        """A routed network whose :attr:`base` and :attr:`tuned` both start as ``parent`` (built
        from ``spec``, the card's network), on its device and in its mode."""
        net = cls(spec, routed)
        state = parent.state_dict()
        net.base.load_state_dict(state)
        net.tuned.load_state_dict(state)
        return net.to(_device_of(parent)).train(parent.training)

    def set_routed(self, routed: Sequence[int]) -> None:
        routed = sorted({int(c) for c in routed})
        if any(c < 1 or (self.classes is not None and c >= int(self.classes)) for c in routed):
            top = f"1 to {int(self.classes) - 1}" if self.classes is not None else "1 or more"
            raise ValueError(f"routed classes must be organs ({top}), got {routed}")
        self.routed = routed

    def same_parent(self, other: torch.nn.Module) -> bool:
        """Whether :attr:`base` is ``other`` (a routed ``other``'s own :attr:`base`), weight for
        weight and bit for bit: then the windows one computed serve the other."""
        other = other.base if isinstance(other, RoutedNetwork) else other
        mine, theirs = self.base.state_dict(), other.state_dict()
        return mine.keys() == theirs.keys() and all(torch.equal(mine[k].cpu(), theirs[k].cpu()) for k in mine)

    def spec(self) -> dict:
        """This network as a card names it."""
        return {"name": "routed", "kwargs": {"base": self.base_spec, "routed": list(self.routed)}}

    def output_heads(self) -> OutputHeads:
        return self.base.output_heads()

    def encoder_modules(self) -> list[torch.nn.Module]:
        return [self.base, *self.tuned.encoder_modules()]

    def forward(self, x: torch.Tensor, **kw) -> SegOutput:
        out = self.base(x, **kw)
        if not self.routed:
            return out
        tuned = self.tuned(x, **kw)
        out.logits = route(out.logits, tuned.logits, self.routed)
        out.deep_supervision = []
        return out


def route(base_logits: torch.Tensor, tuned_logits: torch.Tensor, routed: Sequence[int]) -> torch.Tensor:
    """Log-probabilities (B, N, *S): the routed classes from ``tuned_logits``, the rest from
    ``base_logits`` renormalised over what the tuned network leaves them (see the module)."""
    n = base_logits.shape[1]
    shape = (1, n) + (1,) * (base_logits.dim() - 2)
    mask = torch.zeros(n, dtype=torch.bool, device=base_logits.device)
    mask[list(routed)] = True
    mask = mask.view(shape)
    rest = (~mask).float()
    lp_tuned = torch.log_softmax(tuned_logits.float(), 1)
    lp_base = torch.log_softmax(base_logits.float(), 1)
    left = _logsumexp_over(lp_tuned, rest)  # log of the mass the other classes share
    shared = lp_base - _logsumexp_over(lp_base, rest) + left
    return torch.where(mask, lp_tuned, shared)


def _logsumexp_over(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``log(sum(exp(x)))`` over the classes (dim 1) where ``keep`` is 1, kept (B, 1, *S).

    Written out, maximum first, rather than ``torch.logsumexp`` of a masked input: exported to
    ONNX that is ReduceLogSumExp, which OpenVINO 2026.4 computed up to 63 away from PyTorch and
    ONNX Runtime on log-probabilities of a trained network's size (``Testing/nets/test_routed.py``).
    """
    x = x - 1e4 * (1 - keep)  # the others far below: exp(x - top) is 0 there, never inf * 0
    top = x.amax(1, keepdim=True)
    return top + (x - top).exp().sum(1, keepdim=True).log()


def _device_of(net: torch.nn.Module) -> torch.device:
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
