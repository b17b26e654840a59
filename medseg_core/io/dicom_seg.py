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
from .dicom import MANUFACTURER, check_references, check_series_grid
from .terminology import private_scheme_item, segment_terminology



def require_highdicom() -> None:
    """One clear error, before any work, where highdicom is not installed."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise InputError("--dicom seg needs highdicom, which is not installed: pip install -e '.[dicom]' "
                         "(or pip install highdicom)") from None


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
    :func:`~medseg_core.io.dicom.source_datasets` read (``sources``, in the volume's slice order). A labelmap on another
    grid is an InputError."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__

    arr = sitk.GetArrayFromImage(labels)
    first = sources[0]
    check_series_grid(arr.shape, sources)
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
    seg.CodingSchemeIdentificationSequence = [private_scheme_item()]  # "Low confidence" is coded in 99MEDSEG
    seg.save_as(str(path))


def read_dicom_seg(path: Path, sources) -> dict[str, np.ndarray]:
    """Each segment of a DICOM SEG on the series whose headers are ``sources`` (slice ``k`` from
    ``sources[k]``): ``{segment label: bool array (k, j, i)}``, fractional segments taken at 0.5.
    A SEG of another series or frame of reference is a one-line :class:`InputError`."""
    require_highdicom()
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(str(path))
    except Exception as error:  # pydicom and highdicom raise several kinds on a damaged or other file
        raise InputError(f"{path}: cannot be read as a DICOM SEG ({str(error).splitlines()[0][:160]})") from None
    check_references(path, "the SEG", {s.SeriesInstanceUID for s in seg.get("ReferencedSeriesSequence", [])},
                     {seg.FrameOfReferenceUID} if seg.get("FrameOfReferenceUID") else set(), sources)
    uids = [s.SOPInstanceUID for s in sources]
    out = {}
    for desc in seg.SegmentSequence:
        try:
            pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[int(desc.SegmentNumber)])
        except (ValueError, KeyError, RuntimeError) as error:
            raise InputError(f"{path}: segment {desc.SegmentLabel!r} cannot be placed on the series "
                             f"({str(error).splitlines()[0][:160]})") from None
        out[str(desc.SegmentLabel)] = np.asarray(pixels[..., 0]) >= 0.5
    return out
