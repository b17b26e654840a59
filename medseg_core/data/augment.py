"""Cheap augmentation on batches, in torch, on whatever device the batch lives.

Intensity scale and shift, Gaussian noise, and mirroring along allowed axes with label swaps
(mirroring left-right must swap paired organs such as the parotids, so it is off unless the
training config names the axes and the pairs).
"""

from __future__ import annotations

import torch


class Augmenter:
    """Args:
        mirror_axes: spatial axes (0 = first spatial axis) that may be flipped, each with p = 0.5.
        swap: label pairs exchanged when the LAST of ``mirror_axes`` (the left-right axis in the
            canonical orientation) is flipped, e.g. ``[[3, 4]]``.
        scale, shift: standard deviations of the intensity scale (around 1) and shift.
        noise_p, noise_sd: probability and maximum standard deviation of Gaussian noise.
    """

    def __init__(self, mirror_axes: list[int] | None = None, swap: list[list[int]] | None = None,
                 scale: float = 0.1, shift: float = 0.1, noise_p: float = 0.15, noise_sd: float = 0.1,
                 seed: int = 0):
        self.mirror_axes = list(mirror_axes or [])
        self.swap = [tuple(p) for p in (swap or [])]
        self.scale, self.shift = scale, shift
        self.noise_p, self.noise_sd = noise_p, noise_sd
        self.gen = torch.Generator().manual_seed(seed)

    def _rand(self, *shape) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, *S) float, y (B, *S) long; returns augmented copies."""
        b, nd = x.shape[0], x.ndim - 2
        shape = (b, 1) + (1,) * nd
        scale = (1 + self.scale * torch.randn(b, generator=self.gen)).view(shape).to(x)
        shift = (self.shift * torch.randn(b, generator=self.gen)).view(shape).to(x)
        x = x * scale + shift
        noisy = (self._rand(b) < self.noise_p).view(shape).to(x)
        if noisy.any():
            sd = (self._rand(b) * self.noise_sd).view(shape).to(x)
            x = x + noisy * sd * torch.randn(x.shape, generator=self.gen).to(x)
        if self.mirror_axes:
            xs, ys = [], []
            for i in range(b):
                xi, yi = x[i], y[i]
                for k, ax in enumerate(self.mirror_axes):
                    if self._rand(1) < 0.5:
                        xi, yi = xi.flip(ax + 1), yi.flip(ax)
                        if k == len(self.mirror_axes) - 1:
                            for a, c in self.swap:
                                yi = torch.where(yi == a, c, torch.where(yi == c, a, yi))
                xs.append(xi)
                ys.append(yi)
            x, y = torch.stack(xs), torch.stack(ys)
        return x, y
