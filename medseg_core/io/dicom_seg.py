"""DICOM SEG of a result, for PACS and the treatment-planning system (``medseg segment --dicom seg``).

Written with ``highdicom`` (the field's library for DICOM SEG; TotalSegmentator and MONAI Label
use it too), never by hand: one binary segment per model label, with its name, colour
(CIELab) and coded terminology from the model card (category, type and laterality modifier),
the algorithm identified (the model's name and version, family "Artificial Intelligence"), the
source series referenced (study, series, frame of reference and each slice's SOP instance),
and new UIDs of its own. The "Low confidence" layer is its own segment, coded in the project's
"Model review" category (``99MEDSEG``), and overlaps the organs it marks, so the SEG is of type
BINARY. Frames that hold no voxel of a segment are left out, as the standard allows.

The labelmap must lie on the source series' grid: slice ``k`` of the volume is the series' file
``k`` in :func:`~medseg_core.io.dicom.dicom_series_files` order, and the rows and columns of
each frame are the volume's ``y`` and ``x``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..labels import Label
from .terminology import segment_terminology

MANUFACTURER = "SlicerMedSeg"


def require_highdicom() -> None:
    """One clear error, before any work, where highdicom is not installed."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise InputError("--dicom seg needs highdicom, which is not installed: pip install -e '.[dicom]' "
                         "(or pip install highdicom)") from None


def source_datasets(folder: Path, files: list[str]):
    """The series' headers (no pixels) as highdicom needs them, checked before any work: each slice's
    SOP class and instance UIDs (from the file meta group where an anonymiser blanked them in the
    data set, which the standard defines equal), and the study, series and frame of reference
    UIDs that a SEG must reference: where they are missing, one clear error."""
    import pydicom

    out = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        for attr, meta_attr in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(attr, "") or "") and meta is not None and str(meta.get(meta_attr, "") or ""):
                setattr(ds, attr, meta.get(meta_attr))
        for attr in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if not str(ds.get(attr, "") or ""):
                raise InputError(f"{folder}: the DICOM series has no {attr} (in {Path(f).name}; anonymised?), "
                                 f"so a DICOM SEG cannot reference it")
        out.append(ds)
    return out


def _code(triple):
    from highdicom.sr import CodedConcept

    scheme, value, meaning = triple
    return CodedConcept(value=str(value), scheme_designator=str(scheme), meaning=str(meaning))


def _description(number: int, name: str, color, terminology: dict, algorithm):
    import highdicom as hd

    desc = hd.seg.SegmentDescription(
        segment_number=number, segment_label=name,
        segmented_property_category=_code(terminology["category"]),
        segmented_property_type=_code(terminology["type"]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        anatomic_regions=[_code(terminology["anatomicRegion"])] if terminology.get("anatomicRegion") else None,
        display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in color)))
    if terminology.get("typeModifier"):
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _code(terminology["typeModifier"])]
    return desc


def write_dicom_seg(labels: sitk.Image, label_list: list[Label], sources, path: Path, model: str, version: str,
                    extra_segments=()) -> None:
    """Write ``labels`` (on the series' grid) and ``extra_segments`` (``(name, colour, mask)``;
    "Low confidence") as a DICOM SEG at ``path``, referencing the series whose headers
    :func:`source_datasets` read (``sources``, in the volume's slice order). A labelmap on another
    grid is an InputError."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__

    arr = sitk.GetArrayFromImage(labels)
    first = sources[0]
    if arr.shape != (len(sources), int(first.Rows), int(first.Columns)):
        where = getattr(first, "filename", "the series")
        raise InputError(f"{where}: the series has {len(sources)} slices of {first.Rows} x "
                         f"{first.Columns}, the result {arr.shape}: it is not on the series' grid")
    algorithm = hd.AlgorithmIdentificationSequence(name=model, family=codes.cid7162.ArtificialIntelligence,
                                                   version=version)
    layers, descriptions = [], []
    for lab in label_list:
        descriptions.append(_description(len(descriptions) + 1, lab.name, lab.color,
                                         segment_terminology(lab.name, lab.terminology), algorithm))
        layers.append(arr == lab.value)
    for name, color, mask in extra_segments:
        descriptions.append(_description(len(descriptions) + 1, name, color, segment_terminology(name), algorithm))
        layers.append(np.asarray(mask, dtype=bool))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=np.stack(layers, axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=model[:64], software_versions=f"medseg {__version__}", device_serial_number="0",
        series_description=f"{model} {version}"[:64], content_label="MEDSEG",
        content_description=f"Automatic segmentation by {model} {version}"[:64])
    seg.save_as(str(path))
