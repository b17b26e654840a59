"""RT Structure Sets, out to the treatment-planning system and back as corrections.

No library both writes structure sets with codes and an identified algorithm and traces contours
that rasterise back exactly (rt-utils traces voxel centres with OpenCV, so a read-back loses
half a voxel all round, and writes neither), so the data set is built here with ``pydicom``,
module by module after the RT Structure Set IOD (PS3.3 A.19), and checked with ``dciodvfy`` in
the tests. The contours come from :mod:`~medseg_core.io.contours`.

* :func:`write_rtstruct`: one ROI per model label that holds voxels (named, coloured, coded with
  its terminology's type in the RT ROI Identification Code Sequence, generated ``AUTOMATIC`` by
  the model named in ROI Derivation Algorithm Identification), a ``CLOSED_PLANAR`` contour per
  ring on each slice, each referencing its slice's SOP instance; the study, series and frame of
  reference of the source; new UIDs; approval status ``UNAPPROVED`` until a clinician reviews it.
  Only organs: the "Low confidence" layer and the small-organ regions stay out.
* :func:`read_rtstruct`: each ROI's contours filled on the series' grid (even-odd rule, a ring
  inside another is a hole). A structure set of another series or frame of reference, one with
  no contours, or a contour off the series' slices is a one-line :class:`InputError`.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..labels import Label
from .contours import mask_to_polygons, polygons_to_mask
from .dicom import MANUFACTURER, check_references, check_series_grid
from .terminology import PRIVATE_SCHEME, private_scheme_item, segment_terminology

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
           "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
_TARGETS = ("GTV", "CTV", "ITV", "PTV")


def require_contours() -> None:
    """One clear error, before any work, where the RT Structure Set's libraries are missing."""
    for module in ("pydicom", "contourpy"):
        try:
            __import__(module)
        except ImportError:
            raise InputError(f"--dicom rtstruct needs {module}, which is not installed: pip install -e '.[dicom]'") \
                from None


def _grid(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(M, origin)``: a point is ``origin + M @ (i, j, k)``, LPS mm (DICOM's patient frame)."""
    m = np.reshape(image.GetDirection(), (3, 3)) @ np.diag(image.GetSpacing())
    return m, np.asarray(image.GetOrigin(), dtype=np.float64)


CONTOUR_DATA = 0x30060050
CHARACTER_SET = "ISO_IR 192"  # UTF-8: names are copied from the source


def _set_contour_data(item, xyz: np.ndarray) -> None:
    """Contour Data as the encoded text it is (DS, ``x\\y\\z\\...``, mm to 1 um): pydicom would make and
    check an object per number, three quarters of the time of writing a full-size CT's contours."""
    from pydicom.charset import default_encoding
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    text = "\\".join(map("{:.3f}".format, xyz.ravel().tolist())).encode("ascii")
    text += b" " * (len(text) % 2)  # even length
    item[CONTOUR_DATA] = RawDataElement(Tag(CONTOUR_DATA), "DS", len(text), text, 0, False, True, True, False)
    # as if read in the encoding pydicom gives an item built in memory, so that it writes the text as it is
    item.set_original_encoding(False, True, default_encoding)


def _contour_data(item) -> np.ndarray:
    """Contour Data as an ``(N, 3)`` array, parsed by numpy from the encoded text when pydicom has
    not converted it yet (a few hundred thousand numbers in a full-size CT's structure set)."""
    raw = item.get_item(CONTOUR_DATA)
    if raw is None:
        return np.zeros((0, 3))
    value = raw.value
    if isinstance(value, (bytes, bytearray)):
        values = np.array(value.decode("ascii").strip(" \0").split("\\"), dtype=np.float64)
    else:  # already converted (a data set built in memory)
        values = np.asarray(item.ContourData, dtype=np.float64)
    return values.reshape(-1, 3)


def _code_item(triple):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator, item.CodeValue, item.CodeMeaning = (str(t) for t in triple)
    return item


def _seq(*items):
    from pydicom.sequence import Sequence

    return Sequence(list(items))


def _header(first, model: str, version: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from .. import __version__

    now = datetime.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = CHARACTER_SET
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for attr in _COPIED:  # patient and general study modules (type 2: present, empty where unknown)
        setattr(ds, attr, first.get(attr, "") or "")
    ds.Modality = "RTSTRUCT"  # RT series module
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = int(first.get("SeriesNumber", 0) or 0) + 901
    ds.SeriesDescription = f"{model} {version}"[:64]
    ds.SeriesDate, ds.SeriesTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.OperatorsName = ""
    ds.Manufacturer, ds.ManufacturerModelName = MANUFACTURER, model[:64]  # general equipment module
    ds.SoftwareVersions, ds.DeviceSerialNumber = f"medseg {__version__}", "0"
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID  # frame of reference module
    ds.PositionReferenceIndicator = ""
    ds.StructureSetLabel = "MEDSEG"  # structure set module
    ds.StructureSetName = f"{model}"[:64]
    ds.StructureSetDescription = f"Automatic contours by {model} {version}; review before use"
    ds.InstanceNumber = 1
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ApprovalStatus = "UNAPPROVED"  # approval module: a clinician reviews automatic contours
    return ds


def _referenced_frame(sources):
    from pydicom.dataset import Dataset

    images = []
    for s in sources:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = s.SOPClassUID, s.SOPInstanceUID
        images.append(ref)
    series = Dataset()
    series.SeriesInstanceUID, series.ContourImageSequence = sources[0].SeriesInstanceUID, _seq(*images)
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Study Component Management (retired; as TPSs expect)
    study.ReferencedSOPInstanceUID = sources[0].StudyInstanceUID
    study.RTReferencedSeriesSequence = _seq(series)
    frame = Dataset()
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = sources[0].FrameOfReferenceUID, _seq(study)
    return frame


def write_rtstruct(labels: sitk.Image, label_list: list[Label], sources, path: Path, model: str,
                   version: str) -> list[str]:
    """Write the organs of ``labels`` (on the series' grid) as an RT Structure Set at ``path``,
    referencing the series whose headers :func:`~medseg_core.io.dicom.source_datasets` read
    (``sources``, in the volume's slice order). Returns the names of the ROIs written (an organ the
    model did not find has none)."""
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    arr = sitk.GetArrayViewFromImage(labels)
    first = sources[0]
    check_series_grid(arr.shape, sources)
    m, origin = _grid(labels)
    ds = _header(first, model, version)
    ds.ReferencedFrameOfReferenceSequence = _seq(_referenced_frame(sources))
    rois, contours, observations, written = [], [], [], []
    family = codes.cid7162.ArtificialIntelligence
    for lab in label_list:
        mask = arr == lab.value
        slices = np.flatnonzero(mask.any(axis=(1, 2)))
        if not len(slices):
            continue
        number = len(written) + 1
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, first.FrameOfReferenceUID, lab.name
        roi.ROIGenerationAlgorithm, roi.ROIGenerationDescription = "AUTOMATIC", f"{model} {version}"[:64]
        algorithm = Dataset()
        algorithm.AlgorithmFamilyCodeSequence = _seq(_code_item((family.scheme_designator, family.value,
                                                                 family.meaning)))
        algorithm.AlgorithmName, algorithm.AlgorithmVersion = model[:64], str(version)[:64]
        roi.ROIDerivationAlgorithmIdentificationSequence = _seq(algorithm)
        items = []
        for k in slices:
            for ring in mask_to_polygons(mask[k]):
                ijk = np.column_stack([ring, np.full(len(ring), float(k))])
                xyz = ijk @ m.T + origin
                c = Dataset()
                image = Dataset()
                image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = sources[k].SOPClassUID, \
                    sources[k].SOPInstanceUID
                c.ContourImageSequence = _seq(image)
                c.ContourGeometricType, c.NumberOfContourPoints = "CLOSED_PLANAR", len(ring)
                c.ContourNumber = len(items) + 1
                _set_contour_data(c, xyz)
                items.append(c)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = [int(round(255 * c)) for c in lab.color]
        roi_contour.ContourSequence = _seq(*items)
        roi_contour.ReferencedROINumber = number
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = number, number
        obs.RTROIInterpretedType = next((t for t in _TARGETS if lab.name.upper().startswith(t)), "ORGAN")
        obs.ROIInterpreter = ""
        obs.RTROIIdentificationCodeSequence = _seq(_code_item(segment_terminology(lab.name, lab.terminology)["type"]))
        rois.append(roi), contours.append(roi_contour), observations.append(obs), written.append(lab.name)
    ds.StructureSetROISequence = _seq(*rois)
    ds.ROIContourSequence = _seq(*contours)
    ds.RTROIObservationsSequence = _seq(*observations)
    if any(o.RTROIIdentificationCodeSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME for o in observations):
        ds.CodingSchemeIdentificationSequence = _seq(private_scheme_item())
    ds.save_as(str(path), enforce_file_format=True)
    return written


def _referenced_series(ds) -> set[str]:
    return {series.SeriesInstanceUID for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
            for study in frame.get("RTReferencedStudySequence", [])
            for series in study.get("RTReferencedSeriesSequence", []) if "SeriesInstanceUID" in series}


def read_rtstruct(path: Path, sources, reference: sitk.Image) -> dict[str, np.ndarray]:
    """Each ROI's contours filled on ``reference`` (the series' grid, slice ``k`` from
    ``sources[k]``): ``{ROI name: bool array (k, j, i)}``, for the ROIs that hold contours (a
    structure a template listed and nobody drew is not there)."""
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises several kinds on a damaged file
        raise InputError(f"{path}: cannot be read as DICOM ({error})") from None
    if ds.get("Modality") != "RTSTRUCT" or "ROIContourSequence" not in ds:
        raise InputError(f"{path}: is not an RT Structure Set (modality {ds.get('Modality', 'none')})")
    try:
        out = _filled(path, ds, sources, reference)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as error:  # a damaged or cut file
        raise InputError(f"{path}: the structure set is damaged or incomplete ({str(error).splitlines()[0][:120]})") \
            from None
    if not out:
        raise InputError(f"{path}: the structure set holds no contours")
    return out


def _filled(path: Path, ds, sources, reference: sitk.Image) -> dict[str, np.ndarray]:
    check_references(path, "the structure set", _referenced_series(ds),
                     {f.FrameOfReferenceUID for f in ds.get("ReferencedFrameOfReferenceSequence", [])}, sources)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    m, origin = _grid(reference)
    to_index = np.linalg.inv(m)
    depth, shape = reference.GetSize()[2], reference.GetSize()[1::-1]
    instances = {s.SOPInstanceUID for s in sources}
    out: dict[str, np.ndarray] = {}
    for roi in ds.ROIContourSequence:
        name = names.get(int(roi.ReferencedROINumber), f"ROI {roi.ReferencedROINumber}")
        rings: dict[int, list[np.ndarray]] = {}
        for c in roi.get("ContourSequence", []):
            if c.get("ContourGeometricType") != "CLOSED_PLANAR":
                continue  # points and open lines have no inside
            for image in c.get("ContourImageSequence", []):
                if image.ReferencedSOPInstanceUID not in instances:
                    raise InputError(f"{path}: a contour of {name!r} refers to an image that is not in the series")
            xyz = _contour_data(c)
            ijk = (xyz - origin) @ to_index.T
            k = int(round(float(ijk[0, 2])))
            if not (0 <= k < depth) or np.abs(ijk[:, 2] - k).max() > 0.05:
                raise InputError(f"{path}: a contour of {name!r} at {xyz[0, 2]:.2f} mm lies off the series' slices")
            rings.setdefault(k, []).append(ijk[:, :2])
        if rings:
            mask = np.zeros((depth, *shape), dtype=bool)
            for k, polys in rings.items():
                mask[k] = polygons_to_mask(polys, shape)
            out[name] = out[name] | mask if name in out else mask
    return out
