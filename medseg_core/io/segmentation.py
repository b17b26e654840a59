"""3D Slicer segmentation files (``.seg.nrrd``), written and read with ``slicerio``.

Layout of what ``write_segmentation`` writes:

* voxels in IJK order (x fastest, as SimpleITK stores them), geometry in the NRRD fields
  ``space: left-posterior-superior``, ``space directions`` (row *i* = direction column *i* times
  spacing *i*) and ``space origin``, so Slicer places the segmentation exactly on the image;
* the ``Reference image geometry`` conversion parameter holds the same grid in Slicer's own
  serialization (``reference_geometry``), so Slicer takes the input's grid as the segmentation's;
* every segment carries a terminology entry (``segment_terminology``): a standard code where one
  exists, else a project code, never none;
* layer 0 holds the labelmap itself: one segment per ``Label``, with the label's value, even when
  the segment is empty (Slicer keeps empty segments for editing);
* ``extra_segments`` (e.g. a "Low confidence" region that overlaps organs) go to further layers:
  the voxel array then becomes 4D (``kinds: list domain domain domain``), which is how Slicer
  stores overlapping segments. Extra segments that do not overlap each other share a layer.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import nrrd
import numpy as np
import SimpleITK as sitk
import slicerio

from medseg_core.errors import InputError
from medseg_core.io.atomic import atomic_output
from medseg_core.io.image import read_image
from medseg_core.io.terminology import ANATOMIC_CONTEXT, DICOM_MASTER_CONTEXT, default_color, segment_terminology
from medseg_core.labels import Label

log = logging.getLogger(__name__)

_UNSET_COLOR = Label(1, "x").color  # the Label default: treated as "no colour chosen"


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """Returns the 4x4 matrix from voxel index (i, j, k) to physical LPS coordinates (mm).

    Args:
        image: a 3D image.

    Returns:
        ``[[D @ diag(spacing), origin], [0, 0, 0, 1]]``.
    """
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.array(image.GetSpacing(), dtype=float)
    matrix[:3, 3] = image.GetOrigin()
    return matrix


REFERENCE_GEOMETRY = "Reference image geometry"


def reference_geometry(image: sitk.Image) -> str:
    """Slicer's serialized reference image geometry of ``image``'s grid: the IJK -> RAS matrix row
    by row, then the extent ``0;nx-1;0;ny-1;0;nz-1``, each value followed by ``;``. Written as the
    ``Reference image geometry`` conversion parameter, it makes Slicer take the input's grid as the
    segmentation's geometry (for editing and for conversions) without being told.

    >>> img = sitk.Image(4, 3, 2, sitk.sitkUInt8); img.SetSpacing((2.0, 1.0, 3.0)); img.SetOrigin((10.0, 20.0, 30.0))
    >>> reference_geometry(img)
    '-2;0;0;-10;0;-1;0;-20;0;0;3;30;0;0;0;1;0;3;0;2;0;1;'
    """
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps(image)
    numbers = [f"{v:.17g}" if v != 0 else "0" for v in ijk_to_ras.ravel()]
    numbers += [str(v) for n in image.GetSize() for v in (0, n - 1)]
    return "".join(f"{v};" for v in numbers)


def _set_geometry(image: sitk.Image, matrix: np.ndarray) -> None:
    axes = np.asarray(matrix, dtype=float)[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    spacing[spacing == 0] = 1.0
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (axes / spacing).ravel()])
    image.SetOrigin([float(v) for v in np.asarray(matrix, dtype=float)[:3, 3]])


def _full_terminology(terminology: dict) -> dict:
    """Fills the context names Slicer expects into a terminology dict (a copy)."""
    terminology = dict(terminology)
    terminology.setdefault("contextName", DICOM_MASTER_CONTEXT)
    terminology.setdefault("anatomicContextName", ANATOMIC_CONTEXT)
    return terminology


def _segment_id(name: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "Segment"
    segment_id, n = base, 1
    while segment_id in used:
        n += 1
        segment_id = f"{base}_{n}"
    used.add(segment_id)
    return segment_id


def _mask_zyx(mask, reference: sitk.Image) -> np.ndarray:
    """Returns a bool mask in numpy (z, y, x) order from an sitk image or a (z, y, x) array."""
    if isinstance(mask, sitk.Image):
        if mask.GetSize() != reference.GetSize():
            raise ValueError(f"extra segment size {mask.GetSize()} differs from the labelmap {reference.GetSize()}")
        mask = sitk.GetArrayViewFromImage(mask)
    mask = np.asarray(mask)
    expected = tuple(reversed(reference.GetSize()))
    if mask.shape != expected:
        raise ValueError(f"extra segment shape {mask.shape} differs from the labelmap (z, y, x) shape {expected}")
    return mask if mask.dtype == bool else mask != 0


def _check_labels(labels: Sequence[Label]) -> None:
    values = [label.value for label in labels]
    if any(v < 1 or v > 65535 for v in values):
        raise ValueError(f"label values must lie in 1..65535: {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"label values repeat: {values}")


def _segment(label: Label, used_ids: set[str]) -> dict:
    color = label.color if tuple(label.color) != _UNSET_COLOR else default_color(label.name, label.value)
    segment = {
        "id": _segment_id(label.name, used_ids),
        "name": label.name,
        "nameAutoGenerated": False,
        "color": [round(float(c), 6) for c in color],
        "colorAutoGenerated": False,
        "labelValue": int(label.value),
    }
    segment["terminology"] = _full_terminology(segment_terminology(label.name, label.terminology))
    return segment


def write_segmentation(label_image: sitk.Image, labels: Sequence[Label], path: str | os.PathLike,
                       extra_segments: Sequence[tuple] | None = None) -> None:
    """Writes a labelmap as a 3D Slicer segmentation file (``.seg.nrrd``), atomically.

    Each label gives one segment (even if empty) with its value, name, colour (the label's, or
    ``default_color(name, value)`` when the label keeps the default grey) and terminology (the label's, or
    ``terminology_for(name)``). Voxels whose value no label lists are left out (set to 0).

    Args:
        label_image: 3D integer labelmap (0 = background).
        labels: the labels to write as segments.
        path: output file, normally ending in ``.seg.nrrd``.
        extra_segments: optional ``(name, color, mask)`` triples, ``mask`` an sitk image of the
            labelmap's size or a numpy array in (z, y, x) order (non-zero = inside). They are
            stored in extra layers and may overlap the labels and each other.

    Raises:
        ValueError: not a 3D scalar labelmap, bad label values, or a mask of the wrong size.
        InputError: the file cannot be written.
    """
    if label_image.GetDimension() != 3 or label_image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("the labelmap must be a 3D scalar image")
    labels = list(labels)
    _check_labels(labels)
    # Everything is assembled in numpy's contiguous (z, y, x) order; the transposed view handed
    # to pynrrd is then Fortran-contiguous in (i, j, k), which it writes without a reordering copy
    # (working on the transposed view directly cost a second per full-size CT layer).
    values = np.asarray(sitk.GetArrayViewFromImage(label_image))
    listed = np.zeros(int(values.max(initial=0)) + 1, dtype=bool)
    listed[[label.value for label in labels if label.value < listed.size]] = True
    listed[0] = True
    known = listed[values]
    if not known.all():
        log.warning("%s: voxels with labels not listed are left out", path)
        values = np.where(known, values, 0)
    layers = [values]
    used_ids: set[str] = set()
    segments = [_segment(label, used_ids) for label in labels]
    for segment in segments:
        segment["layer"] = 0

    extra_layers: list[np.ndarray] = []
    for name, color, mask in extra_segments or ():
        mask = _mask_zyx(mask, label_image)
        layer = next((i for i, voxels in enumerate(extra_layers) if not voxels[mask].any()), None)
        if layer is None:  # uint8 (a full-size CT's layer is 35 MB), widened only past 255 segments
            extra_layers.append(np.zeros(mask.shape, dtype=np.uint8))
            layer = len(extra_layers) - 1
        value = int(extra_layers[layer].max()) + 1
        if value > np.iinfo(extra_layers[layer].dtype).max:
            extra_layers[layer] = extra_layers[layer].astype(np.uint16)
        extra_layers[layer][mask] = value
        segments.append({"id": _segment_id(name, used_ids), "name": name, "nameAutoGenerated": False,
                         "color": [round(float(c), 6) for c in color], "colorAutoGenerated": False,
                         "labelValue": value, "layer": layer + 1,
                         "terminology": _full_terminology(segment_terminology(name))})
    layers += extra_layers

    highest = max([int(v.max(initial=0)) for v in layers] + [label.value for label in labels] + [0])
    dtype = np.uint8 if highest < 256 else np.uint16
    if len(layers) == 1:
        voxels = layers[0].astype(dtype, copy=False).T  # (i, j, k), Fortran-contiguous
    else:
        voxels = np.stack([v.astype(dtype, copy=False) for v in layers], axis=-1).T  # (layer, i, j, k)
    shape = voxels.shape[-3:]
    full_extent = [0, shape[0] - 1, 0, shape[1] - 1, 0, shape[2] - 1]
    for segment in segments:  # full extents: some Slicer versions crop a layer to its first segment's extent
        segment["extent"] = full_extent
    segmentation = {
        "voxels": voxels,
        "ijkToLPS": ijk_to_lps(label_image),
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        # Slicer reads a conversion parameter only when "&" follows it, and slicerio puts "&" only
        # between parameters: the description carries the closing "&" (slicerio's reader drops it)
        "conversionParameters": [{"name": REFERENCE_GEOMETRY, "value": reference_geometry(label_image),
                                  "description": "Image geometry description string determining the geometry of the "
                                                 "labelmap that is created in course of conversion.&"}],
        "segments": segments,
    }
    path = Path(path)
    try:
        with atomic_output(path) as tmp:  # gzip level 9 took 2.5 s on a 512^2 x 134 CT, level 1 a fraction
            slicerio.write_segmentation(str(tmp), segmentation, compression_level=1)
    except OSError as error:
        raise InputError(f"{path}: cannot be written ({error.strerror or error})") from None


def _is_segmentation_file(path: Path) -> bool:
    if path.name.lower().endswith(".seg.nrrd"):
        return True
    if path.suffix.lower() not in (".nrrd", ".nhdr"):
        return False
    try:
        header = nrrd.read_header(str(path))
    except (nrrd.NRRDError, OSError, ValueError, UnicodeDecodeError):
        return False
    return any(re.match(r"Segment\d+_", key) for key in header)


def _labelmap_from_plain_file(path: Path) -> sitk.Image:
    image = read_image(path)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        voxels = sitk.GetArrayViewFromImage(image)
        if not np.array_equal(voxels, np.round(voxels)):
            raise InputError(f"{path}: is not a labelmap (it has non-integer voxel values)")
        image = sitk.Cast(sitk.Round(image), sitk.sitkInt32)
    return image


def read_segmentation(path: str | os.PathLike, keep=None) -> tuple[sitk.Image, list[Label]]:
    """Reads a 3D Slicer ``.seg.nrrd`` into a labelmap and its labels.

    Segments keep their label value where it is free; segments of further layers (overlapping
    ones) get the next free values, and where segments overlap the one listed later wins. Any
    other image file (``read_image`` formats) is read as a plain labelmap with no labels.

    Args:
        path: ``.seg.nrrd`` or plain labelmap file.
        keep: ``keep(name) -> bool``; segments it refuses are left out (neither painted nor
            listed), e.g. a "Low confidence" layer that would otherwise cover organs.

    Returns:
        ``(label_image, labels)``; ``labels`` is empty for a plain labelmap.

    Raises:
        InputError: missing or unreadable file (one line starting with the path).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: does not exist")
    if not _is_segmentation_file(path):
        return _labelmap_from_plain_file(path), []
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as error:  # pynrrd and slicerio raise many types
        detail = " ".join(str(error).split())[:200]
        raise InputError(f"{path}: cannot be read as a Slicer segmentation ({detail})") from None
    voxels = np.asarray(segmentation["voxels"])
    if voxels.ndim not in (3, 4):
        raise InputError(f"{path}: is a {voxels.ndim}D segmentation; 3D is needed")

    labels: list[Label] = []
    used: set[int] = set()
    masks = []
    for index, segment in enumerate(segmentation.get("segments", [])):
        if keep is not None and not keep(segment.get("name", "")):
            continue
        stored = int(segment.get("labelValue", 1))
        layer = int(segment.get("layer", 0 if voxels.ndim == 3 else index))
        layer_voxels = voxels if voxels.ndim == 3 else voxels[layer]
        value = stored if stored not in used and stored > 0 else max(used | {0}) + 1
        used.add(value)
        masks.append((layer_voxels == stored, value))
        color = tuple(float(c) for c in segment.get("color", default_color(segment.get("name", ""), value)))
        labels.append(Label(value, segment.get("name", segment.get("id", f"Segment_{value}")), color,
                            segment.get("terminology")))
    highest = max(used | {0})
    out = np.zeros(voxels.shape[-3:], dtype=np.uint8 if highest < 256 else np.uint16)
    for mask, value in masks:
        out[mask] = value

    image = sitk.GetImageFromArray(out.transpose(2, 1, 0))
    _set_geometry(image, segmentation["ijkToLPS"])
    return image, labels
