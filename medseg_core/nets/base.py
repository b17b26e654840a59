"""The base of every registered network: what a network declares to the engine.

Generic code (the predictor, fine-tuning) asks a network what it produces and which part is its
encoder through these methods, instead of looking for paper-specific attribute names.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .output import OutputHeads, SegOutput


class SegNetwork(nn.Module):
    """A segmentation network: ``forward(x) -> SegOutput``, plus its declarations.

    Subclasses override :meth:`output_heads` when their output carries more than logits,
    :meth:`encoder_modules` when they have an encoder that fine-tuning may freeze, and
    :meth:`trunk` with :meth:`from_trunk` when most of their work is a fixed graph of the input
    followed by steps that depend on its values (FocusNet's crops around its heatmap peaks): a
    runtime that runs fixed graphs only (OpenVINO, :mod:`medseg_core.inference.runtime`) then runs
    the trunk and PyTorch the rest.

    ``channels_last_training``: a 3D network that computes the same, to float32 rounding, on
    channels-last input (``torch.channels_last_3d``), so fine-tuning on the CPU may run it so:
    PyTorch's 3D convolutions and their backward run faster in that layout there (a fine-tune
    step of the bundled U-Net took 0.93 s against 1.25 s, AVX2, float32). Off by default; a
    network that sets it is checked by ``Testing/nets/test_nets.py``.
    """

    channels_last_training: bool = False
    traces_at_any_size: bool = False
    """The graph traced for one input size computes every other size right (no size-dependent
    constants: CoordConv's coordinates and the deformable convolutions' sampling grids are not),
    so an export may trace it at a small input and run it at stretched windows. Off by default:
    an export is then traced at the window and runs only there (``inference/export.py``)."""

    def output_heads(self) -> OutputHeads:
        """The extra outputs beside ``logits`` (default: none)."""
        return OutputHeads()

    def encoder_modules(self) -> list[nn.Module]:
        """The modules fine-tuning freezes unless told to train everything (default: none)."""
        return []

    def trunk(self) -> nn.Module | None:
        """A module sharing this network's weights, ``x -> tuple of tensors`` (named by its
        ``outputs`` attribute), whose result :meth:`from_trunk` completes into :meth:`forward`'s;
        None (the default): no such split."""
        return None

    def from_trunk(self, x: torch.Tensor, parts: Sequence[torch.Tensor], **prompts) -> SegOutput:
        """``forward(x, **prompts)`` given ``parts``, the :meth:`trunk`'s outputs for ``x``."""
        raise NotImplementedError(f"{type(self).__name__} has no trunk")
