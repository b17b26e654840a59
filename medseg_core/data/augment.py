"""Cheap augmentation on batches, in torch, on whatever device the batch lives.

Intensity scale and shift, Gaussian noise, Gaussian blur, a random affine (rotation, scale and a
sub-voxel shift, resampled linearly: what re-gridding an image does to it) and mirroring along
allowed axes with label swaps (mirroring left-right must swap paired organs such as the parotids,
so it is off unless the training config names the axes and the pairs). The blur and the affine
are off by default; they teach a model that an image interpolated once more (an oblique scan
straightened, a scan resampled from another spacing) is the same anatomy. nnU-Net's defaults
(p = 0.2 for rotation and scaling, blur sigma 0.5 to 1 voxel) are the reference for their ranges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


class Augmenter:
    """Args:
        mirror_axes: spatial axes (0 = first spatial axis) that may be flipped, each with p = 0.5.
        swap: label pairs exchanged when the LAST of ``mirror_axes`` (the left-right axis in the
            canonical orientation) is flipped, e.g. ``[[3, 4]]``.
        scale, shift: standard deviations of the intensity scale (around 1) and shift.
        noise_p, noise_sd: probability and maximum standard deviation of Gaussian noise.
        blur_p, blur_sigma: probability of a Gaussian blur per patch and its sigma range (voxels).
        affine_p: probability of a random affine per patch, resampled linearly (labels: nearest).
        rotate_deg: the largest rotation about each spatial axis, in degrees (one number for all,
            or one per axis in the patch's (z, y, x) order); axes of size 1 take no part.
        zoom: the range of the isotropic scale factor (> 1 magnifies).
        shift_voxels: the largest random translation, in voxels, along each axis.
        spacing: voxel size per spatial axis, (z, y, x) like the patch, so that a rotation is a
            rotation in millimetres on anisotropic voxels; None: isotropic.
        seed: seed of the augmentation's own generator.
    """

    def __init__(self, mirror_axes: list[int] | None = None, swap: list[list[int]] | None = None,
                 scale: float = 0.1, shift: float = 0.1, noise_p: float = 0.15, noise_sd: float = 0.1,
                 blur_p: float = 0.0, blur_sigma: Sequence[float] = (0.5, 1.0), affine_p: float = 0.0,
                 rotate_deg: float | Sequence[float] = 15.0, zoom: Sequence[float] = (0.9, 1.1),
                 shift_voxels: float = 0.5, spacing: Sequence[float] | None = None, seed: int = 0):
        self.mirror_axes = list(mirror_axes or [])
        self.swap = [tuple(p) for p in (swap or [])]
        self.scale, self.shift = scale, shift
        self.noise_p, self.noise_sd = noise_p, noise_sd
        self.blur_p, self.blur_sigma = blur_p, tuple(float(s) for s in blur_sigma)
        self.affine_p, self.zoom, self.shift_voxels = affine_p, tuple(float(z) for z in zoom), shift_voxels
        self.rotate_deg = rotate_deg
        self.spacing = None if spacing is None else [float(s) for s in spacing]
        self.gen = torch.Generator().manual_seed(seed)

    @property
    def moves_voxels(self) -> bool:
        """Whether a voxel may land elsewhere (mirroring, the affine): then only labels follow it."""
        return bool(self.mirror_axes) or self.affine_p > 0

    def _rand(self, *shape) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen)

    def _uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(self._rand(1))

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, *S) float, y (B, *S) long; returns augmented copies."""
        b, nd = x.shape[0], x.ndim - 2
        shape = (b, 1) + (1,) * nd
        if self.affine_p > 0 or self.blur_p > 0:
            xs, ys = [], []
            for i in range(b):
                xi, yi = x[i:i + 1], y[i:i + 1]
                if self.affine_p > 0 and self._rand(1) < self.affine_p:
                    xi, yi = self._affine(xi, yi)
                if self.blur_p > 0 and self._rand(1) < self.blur_p:
                    xi = gaussian_blur(xi, self._uniform(*self.blur_sigma))
                xs.append(xi)
                ys.append(yi)
            x, y = torch.cat(xs), torch.cat(ys)
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

    def _affine(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One patch (1, C, *S) and its labels (1, *S) through a random rotation, zoom and shift."""
        size = list(x.shape[2:])
        nd = len(size)
        live = [n > 1 for n in size]
        limits = ([float(self.rotate_deg)] * nd if isinstance(self.rotate_deg, (int, float))
                  else [float(r) for r in self.rotate_deg])
        rot = torch.eye(nd, dtype=torch.float64)
        for axis in range(nd):
            plane = [a for a in range(nd) if a != axis] if nd == 3 else list(range(nd))
            if nd == 2 and axis > 0:
                break  # a 2D patch turns in its one plane
            if limits[axis] <= 0 or not all(live[a] for a in plane):
                continue
            angle = math.radians(self._uniform(-limits[axis], limits[axis]))
            r = torch.eye(nd, dtype=torch.float64)
            p, q = plane
            r[p, p], r[p, q], r[q, p], r[q, q] = math.cos(angle), -math.sin(angle), math.sin(angle), math.cos(angle)
            rot = rot @ r
        zoom = self._uniform(*self.zoom)
        shift = [self._uniform(-self.shift_voxels, self.shift_voxels) if live[a] else 0.0 for a in range(nd)]
        theta = affine_theta(size, self.spacing or [1.0] * nd, rot / zoom, shift, live)
        theta = theta.to(x)
        grid = F.affine_grid(theta[None], [1, 1] + size, align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        y = F.grid_sample(y[:, None].to(x.dtype), grid, mode="nearest", padding_mode="border", align_corners=False)
        return x, y[:, 0].round().to(torch.long)


def affine_theta(size: Sequence[int], spacing: Sequence[float], matrix: torch.Tensor, shift_voxels: Sequence[float],
                 live: Sequence[bool]) -> torch.Tensor:
    """The ``F.affine_grid`` matrix (nd, nd + 1) that samples output voxel positions at
    ``matrix @ p + shift`` about the patch centre, ``p`` in millimetres; axes in (z, y, x) order
    here, reversed into the (x, y, z) order ``affine_grid`` reads. Axes not ``live`` stay fixed."""
    nd = len(size)
    half = torch.tensor([n / 2.0 * s for n, s in zip(size, spacing)], dtype=torch.float64)  # mm per unit
    m = matrix.clone()
    for a in range(nd):
        if not live[a]:
            m[a, :], m[:, a] = 0.0, 0.0
            m[a, a] = 1.0
    lin = m * half[None, :] / half[:, None]  # D^-1 M D in normalised coordinates
    t = torch.tensor([2.0 * s / n for s, n in zip(shift_voxels, size)], dtype=torch.float64)
    theta = torch.cat([lin, t[:, None]], dim=1)
    rev = list(range(nd - 1, -1, -1))
    return torch.cat([theta[rev][:, rev], theta[rev][:, nd:]], dim=1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of (B, C, *S) over every spatial axis longer than one voxel."""
    radius = max(1, int(math.ceil(3 * sigma)))
    k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    nd, c = x.ndim - 2, x.shape[1]
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    for axis in range(nd):
        n = x.shape[2 + axis]
        if n <= 1:
            continue
        pad = [0, 0] * nd
        r = min(radius, n - 1)
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = r
        kk = k[radius - r: radius + r + 1]
        kk = (kk / kk.sum()).view(1, 1, *[kk.numel() if a == axis else 1 for a in range(nd)])
        x = conv(F.pad(x, pad, mode="replicate"), kk.expand(c, 1, *kk.shape[2:]), groups=c)
    return x
