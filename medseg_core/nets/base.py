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

    ``channels_last_training``: a 3D network that computes the same, to float32 rounding, on
    channels-last input (``torch.channels_last_3d``), so fine-tuning on the CPU may run it so:
    PyTorch's 3D convolutions and their backward run faster in that layout there (a fine-tune
    step of the bundled U-Net took 0.93 s against 1.25 s, AVX2, float32). Off by default; a
    network that sets it is checked by ``Testing/nets/test_nets.py``.
    """

    channels_last_training: bool = False

    def output_heads(self) -> OutputHeads:
        """The extra outputs beside ``logits`` (default: none)."""
        return OutputHeads()

    def encoder_modules(self) -> list[nn.Module]:
        """The modules fine-tuning freezes unless told to train everything (default: none)."""
        return []
