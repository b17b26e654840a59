"""Corrected segmentations as fine-tuning targets: a user's labelmap or ``.seg.nrrd`` in the model's
label values, on the image's grid.

* ``.seg.nrrd`` segments are matched to the model's labels by name (:func:`~medseg_core.labels.name_key`:
  case-insensitive, spaces and underscores ignored). A model label without a segment is *not
  annotated* in that case; a segment that is present but empty is annotated (the user affirms the
  structure is absent).
* a plain labelmap's values are the model's values; the labels it holds are the annotated ones.
* an RT Structure Set or a DICOM SEG from the planning system corrects the DICOM series it refers
  to (the image must be that series' folder): its structures are matched to the model's labels by
  :func:`~medseg_core.io.roi_names.match_rois` (TG-263 names and the usual synonyms; planning-risk
  volumes, margins and helpers never), the others (the body, the targets, ...) are left out. A
  structure a template listed but nobody drew (no contours) is not annotated. Where two matched
  structures overlap, the smaller one keeps the voxels (clinical contours of neighbours often
  overlap by a voxel; the small organ would otherwise lose a large part of itself).
* a label on another grid than the image (Slicer saves cropped segmentations) is resampled onto the
  image grid, nearest neighbour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..labels import name_key
from .segmentation import read_segmentation


def _label_names(card) -> str:
    return ", ".join(lab.name for lab in card.labels)


def same_grid(a, b) -> bool:
    """Same size, and spacing, origin and direction equal within a thousandth of a voxel; ``a`` and
    ``b`` are images or anything with their four getters (an ``ImageFileReader`` after
    ``ReadImageInformation``)."""
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        return False
    tol = 1e-3 * min(a.GetSpacing())
    return (np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-4, atol=1e-6)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))


def is_dicom_object(path: Path) -> bool:
    """A single DICOM file (an RT Structure Set, a SEG), by its preamble's ``DICM``."""
    try:
        with open(path, "rb") as f:
            return Path(path).is_file() and f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _read_dicom_correction(path: Path, image, reference, card):
    import pydicom

    from .dicom import dicom_series_files, source_datasets
    from .roi_names import match_rois

    if image is None or not Path(image).is_dir():
        raise InputError(f"{path}: a DICOM structure set or SEG corrects a DICOM series: give the series' folder as "
                         f"the image{f', not {image}' if image is not None else ''}")
    sources = source_datasets(Path(image), dicom_series_files(Path(image), check=False))  # read: checked
    try:  # the modality only: the object itself is read once, by its reader
        modality = pydicom.dcmread(path, specific_tags=["Modality"]).get("Modality", "")
    except Exception as error:  # pydicom raises several kinds on a damaged file
        raise InputError(f"{path}: cannot be read as DICOM ({str(error).splitlines()[0][:160]})") from None
    if modality == "RTSTRUCT":
        from .rtstruct import read_rtstruct

        masks = read_rtstruct(path, sources, reference)
    elif modality == "SEG":
        from .dicom_seg import read_dicom_seg

        masks = read_dicom_seg(path, sources)
    else:
        raise InputError(f"{path}: is a DICOM {modality or 'file'}, not an RT Structure Set or a DICOM SEG")
    matched = match_rois(masks, card.labels)
    if not matched:
        raise InputError(f"{path}: none of its structures ({', '.join(sorted(masks))[:200]}) is a label of model "
                         f"{card.name} ({_label_names(card)})")
    values = {lab.value for lab in card.labels}
    out = np.zeros(masks[next(iter(matched))].shape, dtype=np.uint8 if max(values) < 256 else np.uint16)
    for name in sorted(matched, key=lambda n: -int(masks[n].sum())):  # the smaller structure keeps an overlap
        out[masks[name]] = matched[name]
    lab = sitk.GetImageFromArray(out)
    lab.CopyInformation(reference)
    return lab, sorted(set(matched.values()))


def read_correction(path: str | Path, reference, card, strict: bool = True, image: str | Path | None = None):
    """A corrected label as a labelmap of the model's values on ``reference``'s grid.

    ``strict`` (fine-tuning): a segment whose name is not a model label, and a label holding none
    of the model's labels, are errors. An RT Structure Set or DICOM SEG needs ``image``, the
    series' folder it refers to (``reference`` read from it). Otherwise (a refine's current labels) such segments, the
    "Low confidence" layer among them, are left out and an empty label is fine.

    Returns:
        ``(label image (uint8/uint16, the reference's geometry), annotated model values)``.

    Raises:
        InputError: unknown segment name or value, a label that does not overlap the image, or one
            that holds none of the model's labels.
    """
    path = Path(path)
    if is_dicom_object(path):
        return _read_dicom_correction(path, image, reference, card)
    by_name = {name_key(lab.name): lab.value for lab in card.labels}
    img, segments = read_segmentation(path, keep=None if strict else (lambda name: name_key(name) in by_name))
    arr = sitk.GetArrayFromImage(img)
    model_values = {lab.value for lab in card.labels}
    dtype = np.uint8 if max(model_values | {0}) < 256 else np.uint16
    if segments:
        lut = np.zeros(int(max(int(arr.max()), max(s.value for s in segments))) + 1, dtype=dtype)
        annotated = set()
        for seg in segments:
            value = by_name.get(name_key(seg.name))
            if value is None:
                raise InputError(f"{path}: segment {seg.name!r} is not a label of model {card.name} "
                                 f"(its labels: {_label_names(card)}); rename or remove the segment")
            lut[seg.value] = value
            annotated.add(value)
        out = lut[arr]
    else:
        values = set(int(v) for v in np.unique(arr)) - {0}
        unknown = sorted(values - model_values)
        if unknown:
            known = ", ".join(f"{lab.value} {lab.name}" for lab in card.labels)
            hint = "; is it an image rather than a labelmap?" if len(values) > 255 else ""
            raise InputError(f"{path}: label value(s) {unknown[:5]} are not labels of model {card.name} "
                             f"(its values: {known}){hint}")
        out = arr.astype(dtype)
        annotated = values
    if not annotated and strict:
        raise InputError(f"{path}: holds none of model {card.name}'s labels ({_label_names(card)})")
    lab = sitk.GetImageFromArray(out)
    lab.CopyInformation(img)
    if same_grid(lab, reference):
        lab.CopyInformation(reference)
    else:  # e.g. Slicer saved the segmentation cropped to its extent
        had = bool(out.any())
        lab = sitk.Resample(lab, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, lab.GetPixelID())
        if had and not sitk.GetArrayViewFromImage(lab).any():
            raise InputError(f"{path}: the segmentation does not overlap the image it corrects")
    return lab, sorted(annotated)
