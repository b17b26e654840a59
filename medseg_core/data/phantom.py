"""Synthetic CT-like phantoms (image + labelmap) for tests and the demo.

A phantom is an elliptic body (fat layer around soft tissue) in air, with a liver holding a
hypodense tumour, a spinal cord in a bony canal, and two small glands left and right of the
midline. Shapes are drawn on the voxel grid in normalised index coordinates (each axis spans
[-1, 1] over the field of view), so they stay inside the volume whatever the shape, spacing or
direction; the direction is only attached as geometry. Left/right and anterior/posterior are
chosen from the direction so that, for near-axial directions, "LeftGland" lies on the patient's
left (+x in LPS) and the cord is posterior (+y in LPS).

Every random draw comes from ``seed``: sizes and positions vary by about 10-15 %, intensities by a
few HU. The intensity image is blurred (partial-volume effect) before noise is added; the
labelmap is the unblurred, noise-free truth (except ``label_noise``, which perturbs the tumour
contour only, as a second observer would).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg_core.labels import Label

PHANTOM_LABELS: tuple[Label, ...] = (
    Label(1, "Liver", (0.87, 0.49, 0.39)),
    Label(2, "SpinalCord", (0.96, 0.84, 0.19)),
    Label(3, "Tumour", (0.35, 0.80, 0.35)),
    Label(4, "LeftGland", (0.20, 0.55, 0.95)),
    Label(5, "RightGland", (0.75, 0.35, 0.90)),
)
"""The phantom's labels; values and names are fixed."""

_LIVER, _CORD, _TUMOUR, _LEFT, _RIGHT = 1, 2, 3, 4, 5


def default_direction(angle_deg: float = 10.0) -> tuple[float, ...]:
    """A non-identity direction: a rotation about z by ``angle_deg`` composed with an x flip.

    Returns:
        The 3x3 direction cosine matrix, row-major (SimpleITK's ``SetDirection`` layout); its
        determinant is -1.
    """
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return tuple((rotation @ np.diag([-1.0, 1.0, 1.0])).ravel().tolist())


@dataclass
class Phantom:
    """A synthetic case.

    Attributes:
        image: int16 Hounsfield units, shape (z, y, x) in numpy order.
        label: uint8 labelmap on the same grid (0 background, values of ``labels``).
        labels: the foreground labels (``PHANTOM_LABELS``).
    """

    image: sitk.Image
    label: sitk.Image
    labels: list[Label] = field(default_factory=lambda: list(PHANTOM_LABELS))


def _ellipsoid_radius(coords, centre, radii) -> np.ndarray:
    """Normalised ellipsoidal radius: < 1 inside, shape broadcast from the (z, y, x) coords."""
    z, y, x = coords
    return np.sqrt(((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
                   + ((z - centre[2]) / radii[2]) ** 2)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Face-connected (6-neighbour) dilation by one voxel; borders are treated as background."""
    out = mask.copy()
    for axis in range(mask.ndim):
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(lo)] |= mask[tuple(hi)]
        out[tuple(hi)] |= mask[tuple(lo)]
    return out


def _perturb_tumour(label: np.ndarray, centre_idx, amount: float, rng: np.random.Generator) -> None:
    """Dilates/erodes the tumour by 1-2 voxels in random angular sectors, in place.

    Each of 16 sectors (8 azimuths x above/below the centre slice) is perturbed with probability
    ``amount``, by 2 voxels with probability ``amount`` else 1, grown or shrunk at random (face
    connectivity). Grown voxels are taken from the liver only, leaving at least one voxel of liver
    around the tumour; shrunk voxels return to the liver.
    """
    tumour = label == _TUMOUR
    if amount <= 0 or not tumour.any():
        return
    idx = np.nonzero(tumour)
    lo = [max(int(i.min()) - 3, 0) for i in idx]
    hi = [min(int(i.max()) + 4, n) for i, n in zip(idx, label.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub, t = label[box], tumour[box]

    grown = [t, _dilate(t)]
    grown.append(_dilate(grown[1]))
    shrunk = [t, ~_dilate(~t)]
    shrunk.append(~_dilate(~shrunk[1]))

    z, y, x = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    azimuth = np.arctan2(y - centre_idx[1], x - centre_idx[0])
    sector = (np.floor((azimuth + np.pi) / (2 * np.pi) * 8).astype(int) % 8) + 8 * (z > centre_idx[2])
    steps = np.zeros(16, dtype=int)
    hit = rng.random(16) < amount
    size = np.where(rng.random(16) < amount, 2, 1)
    sign = np.where(rng.random(16) < 0.5, -1, 1)
    steps[hit] = (size * sign)[hit]
    step = steps[sector]

    new = t.copy()
    for k in (1, 2):
        new = np.where(step == k, grown[k], new)
        new = np.where(step == -k, shrunk[k], new)
    new &= t | ((sub == _LIVER) & ~_dilate((sub != _LIVER) & ~t))  # keep a rim of liver
    sub[t & ~new] = _LIVER
    sub[new] = _TUMOUR


def make_phantom(shape: tuple[int, int, int] = (48, 64, 64), spacing: tuple[float, float, float] = (1.5, 1.5, 3.0),
                 seed: int = 0, direction=None, origin: tuple[float, float, float] = (-40.0, 30.0, 12.5),
                 label_noise: float = 0.0, noise_sd: float = 20.0, blur_sigma_mm: float = 1.0,
                 gland_scale: float = 1.0) -> Phantom:
    """Makes one synthetic CT-like case.

    Args:
        shape: grid size (z, y, x), numpy order.
        spacing: voxel size in mm (x, y, z), SimpleITK order.
        seed: seeds every random draw; different seeds give different anatomy and noise.
        direction: 3x3 direction cosines, row-major 9-sequence or 3x3 array; default
            ``default_direction()`` (10 degrees about z with an x flip).
        origin: physical position of voxel (0, 0, 0) in mm (x, y, z).
        label_noise: in [0, 1]; perturbs only the tumour contour (see module docstring). The image
            is the same for any ``label_noise``.
        noise_sd: standard deviation of the additive Gaussian noise, HU.
        blur_sigma_mm: Gaussian blur of the intensities before the noise (0: none), mm.
        gland_scale: scales the glands' radii (0.6 makes them about a fifth of their volume: a
            harder small-organ task). The other structures are the same for any value.

    Returns:
        A ``Phantom`` whose image (int16 HU) and label (uint8) share spacing, origin, direction.

    Raises:
        ValueError: a shape that is not 3-D or too small, a direction that is not 3x3, or
            ``label_noise`` outside [0, 1].
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes >= 8 (z, y, x), got {shape}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    if not 0.0 < gland_scale <= 2.0:
        raise ValueError(f"gland_scale must be in (0, 2], got {gland_scale}")
    direction = tuple(np.asarray(default_direction() if direction is None else direction, float).ravel().tolist())
    if len(direction) != 9:
        raise ValueError(f"direction must hold 3x3 values, got {len(direction)}")
    anatomy_rng, noise_rng, label_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    u = anatomy_rng.uniform
    # Patient left (+x LPS) and posterior (+y LPS) in normalised index coordinates.
    left = -1.0 if direction[0] < 0 else 1.0
    post = -1.0 if direction[4] < 0 else 1.0

    nz, ny, nx = shape
    coords = (((np.arange(nz, dtype=np.float32) + 0.5) / nz * 2 - 1)[:, None, None],
              ((np.arange(ny, dtype=np.float32) + 0.5) / ny * 2 - 1)[None, :, None],
              ((np.arange(nx, dtype=np.float32) + 0.5) / nx * 2 - 1)[None, None, :])
    z, y, x = coords
    hu = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)

    # Body: elliptic cylinder with a fat layer.
    body_r = (0.86 * u(0.93, 1.05), 0.68 * u(0.93, 1.05))
    body_rho = np.sqrt((x / body_r[0]) ** 2 + (y / body_r[1]) ** 2)
    body_rho = np.broadcast_to(body_rho, shape)
    hu[body_rho < 1] = u(-110, -90)
    inner = body_rho < u(0.84, 0.9)
    hu[inner] = u(15, 30)

    # Spine: bony ring around the cord, slightly curved along z.
    cord_c = (0.0, post * (0.42 + 0.04 * np.sin(np.pi * z * u(0.6, 1.2) + u(0, 2 * np.pi))))
    cord_r = 0.085 * u(0.87, 1.13)
    cord_rho = np.broadcast_to(np.sqrt(((x - cord_c[0]) / cord_r) ** 2 + ((y - cord_c[1]) / cord_r) ** 2), shape)
    hu[(cord_rho < 2.8) & inner] = u(550, 700)
    hu[(cord_rho < 1.5) & inner] = u(5, 15)  # cerebrospinal fluid around the cord

    # Liver: lobulated ellipsoid on the patient's right, clear of the spine.
    liver_c = (-left * 0.36 * u(0.9, 1.1), -post * 0.06 * u(0.5, 1.5), 0.25 * u(0.85, 1.15))
    liver_r = (0.42 * u(0.87, 1.13), 0.48 * u(0.87, 1.13), 0.55 * u(0.87, 1.13))
    liver_rho = _ellipsoid_radius(coords, liver_c, liver_r)
    lobes = 1 + 0.05 * np.sin(3 * np.arctan2(y - liver_c[1], x - liver_c[0]) + u(0, 2 * np.pi))
    liver = (liver_rho < lobes) & inner & ~(cord_rho < 3.2)
    liver_hu = u(55, 65)
    hu[liver] = liver_hu
    label[liver] = _LIVER

    # Tumour: inside the liver, 20-25 HU darker; it wins its voxels.
    tumour_c = tuple(c + r * u(-0.25, 0.25) for c, r in zip(liver_c, liver_r))
    tumour_r = tuple(0.3 * r * u(0.87, 1.13) for r in liver_r)
    # Keep a rim of liver around the tumour where the liver is clipped by the body or the spine.
    tumour = (_ellipsoid_radius(coords, tumour_c, tumour_r) < 1) & ~_dilate(~liver)
    hu[tumour] = liver_hu - u(20, 25)
    label[tumour] = _TUMOUR

    label[(cord_rho < 1) & inner] = _CORD
    hu[(cord_rho < 1) & inner] = u(30, 40)

    # Glands: symmetric about the midline, inferior to the liver.
    gland_c = (0.33 * u(0.9, 1.1), post * 0.22 * u(0.9, 1.1), -0.65 * u(0.95, 1.03))
    gland_r = np.array([0.105, 0.094, 0.104]) * u(0.9, 1.1) * gland_scale
    gland_hu = u(85, 95)
    for value, side in ((_LEFT, left), (_RIGHT, -left)):
        r = gland_r * u(0.95, 1.05, size=3)
        gland = (_ellipsoid_radius(coords, (side * gland_c[0], gland_c[1], gland_c[2]), r) < 1) & inner
        hu[gland] = gland_hu
        label[gland] = value

    if label_noise > 0:
        centre_idx = tuple((c + 1) / 2 * n - 0.5 for c, n in zip(tumour_c, (nx, ny, nz)))  # (x, y, z)
        _perturb_tumour(label, centre_idx, label_noise, label_rng)

    spacing = tuple(float(s) for s in spacing)
    origin = tuple(float(o) for o in origin)
    if blur_sigma_mm > 0:
        smooth = sitk.GetImageFromArray(hu)
        smooth.SetSpacing(spacing)
        hu = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(smooth, float(blur_sigma_mm)))
    if noise_sd > 0:
        hu = hu + noise_rng.normal(0.0, noise_sd, size=shape).astype(np.float32)
    image = sitk.GetImageFromArray(np.clip(np.rint(hu), -1024, 3071).astype(np.int16))
    label_image = sitk.GetImageFromArray(label)
    for im in (image, label_image):
        im.SetSpacing(spacing)
        im.SetOrigin(origin)
        im.SetDirection(direction)
    return Phantom(image, label_image, list(PHANTOM_LABELS))


def write_phantom_dataset(folder, n_cases: int, seed: int = 0, **kwargs) -> Path:
    """Writes an nnU-Net v2 raw dataset of phantoms.

    Layout: ``dataset.json``, ``imagesTr/phantom_000_0000.nii.gz``, ``labelsTr/phantom_000.nii.gz``
    and ``splits.json`` (``{"train": [...], "validation": [...]}``, about 80/20, shuffled with the
    seed; no validation case when ``n_cases`` is 1). Existing files of the same names are replaced.

    Args:
        folder: the dataset folder (created if needed).
        n_cases: number of cases, >= 1.
        seed: case ``i`` uses a seed derived from ``(seed, i)``.
        **kwargs: passed to ``make_phantom`` (shape, spacing, label_noise, ...).

    Returns:
        The dataset folder.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    folder = Path(folder)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    cases = [f"phantom_{i:03d}" for i in range(n_cases)]
    for i, case in enumerate(cases):
        case_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        ph = make_phantom(seed=case_seed, **kwargs)
        sitk.WriteImage(ph.image, str(folder / "imagesTr" / f"{case}_0000.nii.gz"), useCompression=True)
        sitk.WriteImage(ph.label, str(folder / "labelsTr" / f"{case}.nii.gz"), useCompression=True)

    labels = {"background": 0, **{lab.name: lab.value for lab in PHANTOM_LABELS}}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": n_cases,
               "file_ending": ".nii.gz", "name": "Phantom",
               "description": "Synthetic CT-like phantoms from medseg_core.data.phantom"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")

    order = np.random.default_rng(seed).permutation(n_cases)
    n_val = 0 if n_cases < 2 else max(1, round(0.2 * n_cases))
    val = sorted(cases[i] for i in order[:n_val])
    splits = {"train": [c for c in cases if c not in val], "validation": val}
    (folder / "splits.json").write_text(json.dumps(splits, indent=2) + "\n")
    return folder
