"""Prompts that re-segment one organ: a point ("this organ is here"), a box ("this organ is inside")
or a negative point ("not this component").

The current labelmap (perhaps edited by the user) changes only for the prompted label and only
inside the prompt's region; other labels are never overwritten. A point runs the model on a crop
around it (``POINT_HALF_MM`` each way, plus the predictor's own context), grown where the organ
runs out of it, and adds the organ's connected component that holds the point (or the nearest
one) to what is there: a point never removes voxels, so a user's edits near it stay (replacing
the organ in the region instead lost 0.051 Dice on the organs the model did worst on, adding
lost 0.005). A box runs the model inside the box and the organ there becomes the model's largest
component; a negative point removes the organ's component under it without running the model.
An L-SNet segments a prompt box with its S-Net (the predictor's box path); for a point it runs
like any network. A FocusNet runs on the crop with the
SOS-Net of a small organ centred on the point (its SOL-Net still places the others).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..labels import name_key
from .regions import index_box_to_physical, largest_component, physical_box_to_index

POINT_HALF_MM = 40.0
"""Half the side of the region a point prompt may change (before the model's context)."""
GROW_STEPS = 2
"""How many times a point's region may grow where the organ reaches its edge."""
KINDS = ("point", "box", "negative")
SOS_ON_POINT = True
"""A FocusNet segments a point's small organ with that organ's SOS-Net centred on the point."""
FIT_WINDOW = True
"""Run a prompt's crop in a window fitted to it rather than padded to the trained window."""


@dataclass
class Prompt:
    """``label``: a model label's name; ``kind``: point, box or negative; ``mm``: LPS millimetres,
    three numbers (a point) or six (a box ``x0, y0, z0, x1, y1, z1``)."""

    label: str
    kind: str
    mm: list[float]


@dataclass
class RefineResult:
    """Attributes:
        labels: the refined labelmap (the input labels' geometry).
        changes: one dict per prompt: label, kind, voxels added and removed, the changed region
            (``box_index`` ``[i0, j0, k0, i1, j1, k1)`` and ``box_mm``, or None when nothing changed).
        seconds: per stage (``infer`` covers the model runs).
    """

    labels: sitk.Image
    changes: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def refine(predictor, images: list[sitk.Image], labels: sitk.Image, prompts: list[Prompt]) -> RefineResult:
    """Apply ``prompts`` in turn to ``labels`` (on ``images[0]``'s grid) with ``predictor``'s model."""
    reference = images[0]
    card = predictor.card
    values = {name_key(lab.name): lab.value for lab in card.labels}
    if labels.GetSize() != reference.GetSize():
        raise InputError(f"--labels: the labels' grid {labels.GetSize()} is not the image's {reference.GetSize()}")
    current = sitk.GetArrayFromImage(labels).astype(np.uint8 if card.num_classes < 256 else np.uint16)
    seconds = {"infer": 0.0, "edit": 0.0}
    changes = []
    for prompt in prompts:
        value = values.get(name_key(prompt.label))
        if value is None:
            raise InputError(f"--prompt {prompt.label}: not a label of {card.name} "
                             f"({', '.join(lab.name for lab in card.labels)})")
        box_mm = _region(prompt, reference)
        lo, hi = physical_box_to_index(reference, box_mm)
        t = time.perf_counter()
        if prompt.kind == "negative":
            new = None
        elif prompt.kind == "box":
            new = _predict(predictor, images, value, lo, hi, box_mm)
        else:
            new, lo, hi = _grow(predictor, images, value, prompt, lo, hi)
        seconds["infer"] += time.perf_counter() - t
        t = time.perf_counter()
        changes.append(_apply(current, value, prompt, new, lo, hi, reference))
        seconds["edit"] += time.perf_counter() - t
    out = sitk.GetImageFromArray(current)
    out.CopyInformation(labels)
    return RefineResult(out, changes, seconds)


def _predict(predictor, images, value: int, lo, hi, box_mm=None, point_mm=None) -> np.ndarray:
    """The model's mask of ``value`` in the voxel box ``[lo, hi)``, run on that box (plus context).
    A user's box (``box_mm``) is taken as a box around the organ (L-SNet's S-Net segments it); a
    point's region is only where to look, and a FocusNet centres the organ's SOS-Net on the point."""
    organ_box = box_mm is not None
    box_mm = box_mm if organ_box else index_box_to_physical(images[0], lo, hi)
    centers = {value: list(point_mm)} if point_mm is not None and SOS_ON_POINT else None
    pred = predictor.predict(images, confidence=False, roi_mm=box_mm, organ_box=organ_box, fit=FIT_WINDOW,
                             centers_mm=centers)
    return sitk.GetArrayViewFromImage(pred.labels)[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] == value


def _grow(predictor, images, value: int, prompt: Prompt, lo, hi):
    """A point's region, grown (up to ``GROW_STEPS`` times, by ``POINT_HALF_MM``) across each face
    the organ's component touches, so a long organ (spinal cord, oesophagus) is not cut at the
    region's edge; the mask and the final region."""
    reference = images[0]
    size, spacing = np.asarray(reference.GetSize()), np.asarray(reference.GetSpacing())
    lo, hi = np.asarray(lo), np.asarray(hi)
    step = np.maximum(1, np.round(POINT_HALF_MM / spacing)).astype(int)
    for attempt in range(GROW_STEPS + 1):
        new = _predict(predictor, images, value, lo.tolist(), hi.tolist(), point_mm=prompt.mm)
        comp = _component(new, _seed(reference, prompt.mm, lo), nearest=True)
        if attempt == GROW_STEPS or not comp.any():
            break
        grown_lo, grown_hi = lo.copy(), hi.copy()
        for axis in range(3):  # (i, j, k); the array is (z, y, x)
            a = 2 - axis
            if lo[axis] > 0 and comp.take(0, axis=a).any():
                grown_lo[axis] = max(0, lo[axis] - step[axis])
            if hi[axis] < size[axis] and comp.take(-1, axis=a).any():
                grown_hi[axis] = min(size[axis], hi[axis] + step[axis])
        if np.array_equal(grown_lo, lo) and np.array_equal(grown_hi, hi):
            break
        lo, hi = grown_lo, grown_hi
    return new, lo.tolist(), hi.tolist()


def _region(prompt: Prompt, reference: sitk.Image) -> list[float]:
    """The LPS box a prompt may change; a point must lie in the image, a box must overlap it."""
    if prompt.kind == "box":
        box = list(prompt.mm)
    else:
        index = reference.TransformPhysicalPointToContinuousIndex([float(v) for v in prompt.mm])
        if any(not -0.5 <= i <= n - 0.5 for i, n in zip(index, reference.GetSize())):
            raise InputError(f"--prompt {prompt.label}:{prompt.kind}: the point {list(prompt.mm)} mm lies outside "
                             f"the image")
        box = [c - POINT_HALF_MM for c in prompt.mm] + [c + POINT_HALF_MM for c in prompt.mm]
    lo, hi = physical_box_to_index(reference, box)
    if min(h - low for low, h in zip(lo, hi)) <= 0:
        raise InputError(f"--prompt {prompt.label}:box: the box {box} mm does not overlap the image")
    return box


def _apply(current: np.ndarray, value: int, prompt: Prompt, new, lo, hi, reference) -> dict:
    """Edit ``current`` in place inside the region; what changed."""
    region = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    old = current[region]
    organ = old == value
    if prompt.kind == "negative":
        seed = _seed(reference, prompt.mm, lo)
        keep = _component(organ, seed)
        added, removed = np.zeros_like(organ), keep
    else:
        free = (old == 0) | organ
        if prompt.kind == "point":  # adds only: what the user or the model drew there stays
            comp = _component(new, _seed(reference, prompt.mm, lo), nearest=True)
            added, removed = comp & free & ~organ, np.zeros_like(organ)
        else:  # a box: the organ inside is the model's
            comp = largest_component(new)
            added, removed = comp & free & ~organ, organ & ~comp
    old[removed] = 0
    old[added] = value
    changed = added | removed
    record = {"label": prompt.label, "kind": prompt.kind, "prompt_mm": list(prompt.mm),
              "voxels_added": int(added.sum()), "voxels_removed": int(removed.sum()), "box_index": None, "box_mm": None}
    if changed.any():
        idx = np.argwhere(changed)
        c_lo = idx.min(0)[::-1] + np.asarray(lo)
        c_hi = idx.max(0)[::-1] + 1 + np.asarray(lo)
        record["box_index"] = [int(v) for v in list(c_lo) + list(c_hi)]
        record["box_mm"] = index_box_to_physical(reference, c_lo, c_hi)
    return record


def _seed(reference: sitk.Image, point_mm, lo) -> tuple[int, int, int]:
    """The point's voxel in the region's (z, y, x) array."""
    i, j, k = reference.TransformPhysicalPointToIndex([float(v) for v in point_mm])
    return k - lo[2], j - lo[1], i - lo[0]


def _component(mask: np.ndarray, seed, nearest: bool = False) -> np.ndarray:
    """The connected component (26-connected) of ``mask`` holding ``seed``; with ``nearest``, the
    component nearest to it when none holds it. Empty when there is none."""
    if not mask.any():
        return np.zeros_like(mask)
    comps = _components(mask)
    seed = tuple(int(min(max(s, 0), n - 1)) for s, n in zip(seed, mask.shape))
    which = comps[seed]
    if which == 0:
        if not nearest:
            return np.zeros_like(mask)
        idx = np.argwhere(comps > 0)
        which = comps[tuple(idx[np.argmin(((idx - np.asarray(seed)) ** 2).sum(1))])]
    return comps == which


def _components(mask: np.ndarray) -> np.ndarray:
    """26-connected component labels of a boolean (z, y, x) mask."""
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))
