"""The base of every registered network: what a network declares to the engine.

Generic code (the predictor, fine-tuning) asks a network what it produces and which part is its
encoder through these methods, instead of looking for paper-specific attribute names.
"""

from __future__ import annotations

from torch import nn

from .output import OutputHeads


class SegNetwork(nn.Module):
    """A segmentation network: ``forward(x) -> SegOutput``, plus two declarations.

    Subclasses override :meth:`output_heads` when their output carries more than logits and
    :meth:`encoder_modules` when they have an encoder that fine-tuning may freeze.
    """

    def output_heads(self) -> OutputHeads:
        """The extra outputs beside ``logits`` (default: none)."""
        return OutputHeads()

    def encoder_modules(self) -> list[nn.Module]:
        """The modules fine-tuning freezes unless told to train everything (default: none)."""
        return []
