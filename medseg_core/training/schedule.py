"""The learning-rate schedule shared by training and fine-tuning."""

from __future__ import annotations


def lr_factor(step: int, fraction: float, warmup_steps: int) -> float:
    """The factor on the peak learning rate: linear warm-up over ``warmup_steps``, then polynomial
    decay (power 0.9) over the fraction of the run done.

    >>> lr_factor(0, 0.0, 4), lr_factor(3, 0.1, 4), round(lr_factor(10, 0.5, 4), 4), lr_factor(10, 1.0, 4)
    (0.25, 1.0, 0.5359, 0.0)
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, 1 - fraction) ** 0.9
