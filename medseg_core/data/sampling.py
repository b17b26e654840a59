"""Patch sampling that finds small structures often.

With probability ``fg_fraction`` a patch is centred on a voxel of a foreground class chosen
*uniformly among classes* (not in proportion to their voxels), in a case that contains it, so a
structure of a few hundred voxels is seen as often as a large organ; otherwise the centre is
uniform in a random case. Fine-tuning adds *focus points* (where the parent model disagrees with
the user's correction): a share ``focus_fraction`` of the patches is centred on one of them,
jittered by up to a quarter patch so the edited boundary is seen at different positions in the
window. Fine-tuning may also give *soft targets* (the parent model's probabilities, to distil
on the voxels the user accepted): they are cropped with the labels and come back as a fourth
item of each batch (zero where a patch is padded). Everything runs in torch on the cases' device, so on a GPU the whole
pipeline stays on the GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_LOCATIONS = 2000


class PatchSampler:
    """Args:
        images: per case, (C, *S) float tensors (already normalised).
        labels: per case, (*S) uint8 tensors.
        num_classes: classes including background.
        patch_size: spatial patch size (2D patches from 3D cases take ``(1, y, x)``).
        fg_fraction: share of patches centred on foreground.
        annotated: per case, the foreground classes contoured in it (default: those present).
        seed: the generator's seed (give each distributed rank its own).
        focus: per case, (M, nd) voxel indices to centre patches on (fine-tuning's errors).
        focus_fraction: share of patches centred on a focus point (when any case has one).
        soft: per case, (N, *S) soft targets cropped with the labels (``sample`` then returns them).
        fg_classes: the foreground classes a foreground patch is centred on (default: every class).
    """

    def __init__(self, images: list[torch.Tensor], labels: list[torch.Tensor], num_classes: int,
                 patch_size: tuple[int, ...], fg_fraction: float = 0.67,
                 annotated: list[list[int]] | None = None, seed: int = 0,
                 focus: list[torch.Tensor] | None = None, focus_fraction: float = 0.0,
                 soft: list[torch.Tensor] | None = None, fg_classes: list[int] | None = None):
        self.images, self.labels, self.soft = images, labels, soft
        self.fg_classes = None if fg_classes is None else {int(c) for c in fg_classes}
        self.num_classes = num_classes
        self.patch = tuple(int(p) for p in patch_size)
        self.fg_fraction = fg_fraction
        self.gen = torch.Generator().manual_seed(seed)
        self.locations: list[dict[int, torch.Tensor]] = []
        for lab in labels:
            locs = {}
            for c in range(1, num_classes):
                idx = torch.nonzero(lab == c)
                if len(idx):
                    locs[c] = self._subsample(idx).cpu()
            self.locations.append(locs)
        self.cases_with = {c: [i for i, l in enumerate(self.locations) if c in l] for c in range(1, num_classes)}
        ann = annotated if annotated is not None else [sorted(l) for l in self.locations]
        self.annotated = torch.zeros(len(labels), num_classes, dtype=torch.bool)
        self.annotated[:, 0] = True
        for i, cls in enumerate(ann):
            self.annotated[i, list(cls)] = True
        self.focus = [self._subsample(idx.cpu()) for idx in (focus or [])]
        self.focus_cases = [i for i, f in enumerate(self.focus) if len(f)]
        self.focus_fraction = focus_fraction

    def _subsample(self, idx: torch.Tensor) -> torch.Tensor:
        if len(idx) > MAX_LOCATIONS:
            idx = idx[torch.randperm(len(idx), generator=self.gen)[:MAX_LOCATIONS].to(idx.device)]
        return idx

    def _randint(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.gen))

    def _centre(self) -> tuple[int, list[int]]:
        if self.focus_cases and float(torch.rand(1, generator=self.gen)) < self.focus_fraction:
            case = self.focus_cases[self._randint(len(self.focus_cases))]
            centre = self.focus[case][self._randint(len(self.focus[case]))].tolist()
            jitter = [int(torch.randint(-(p // 4), p // 4 + 1, (1,), generator=self.gen)) for p in self.patch]
            shape = self.labels[case].shape
            return case, [min(max(c + j, 0), s - 1) for c, j, s in zip(centre, jitter, shape)]
        classes = [c for c, cases in self.cases_with.items()
                   if cases and (self.fg_classes is None or c in self.fg_classes)]
        if classes and float(torch.rand(1, generator=self.gen)) < self.fg_fraction:
            c = classes[self._randint(len(classes))]
            case = self.cases_with[c][self._randint(len(self.cases_with[c]))]
            locs = self.locations[case][c]
            return case, locs[self._randint(len(locs))].tolist()
        case = self._randint(len(self.images))
        return case, [self._randint(s) for s in self.labels[case].shape]

    def crop(self, case: int, centre: list[int]) -> tuple[torch.Tensor, ...]:
        """The patch around ``centre``: image, label (and soft targets); out-of-volume parts are
        padded (image with its minimum, label with background, soft targets with zeros)."""
        img, lab = self.images[case], self.labels[case]
        shape = lab.shape
        lo = [c - p // 2 for c, p in zip(centre, self.patch)]
        src = tuple(slice(max(0, l), min(s, l + p)) for l, s, p in zip(lo, shape, self.patch))
        pad = []
        for l, s, p, sl in reversed(list(zip(lo, shape, self.patch, src))):
            before = sl.start - l
            pad += [before, p - before - (sl.stop - sl.start)]
        pi = img[(slice(None),) + src]
        pl = lab[src]
        if any(pad):
            pi = F.pad(pi, pad, value=float(img.min()))
            pl = F.pad(pl.long(), pad, value=0).to(lab.dtype)
        if self.soft is None:
            return pi, pl
        ps = self.soft[case][(slice(None),) + src]
        return pi, pl, (F.pad(ps, pad, value=0.0) if any(pad) else ps)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """(B, C, *patch) images, (B, *patch) long labels, (B, N) annotated classes, and with
        ``soft`` the (B, N, *patch) float soft targets."""
        crops, cases = [], []
        for _ in range(batch_size):
            case, centre = self._centre()
            crops.append(self.crop(case, centre))
            cases.append(case)
        x, y = torch.stack([c[0] for c in crops]), torch.stack([c[1] for c in crops]).long()
        batch = (x, y, self.annotated[cases].to(x.device))
        return batch if self.soft is None else batch + (torch.stack([c[2] for c in crops]).float(),)
