"""Standard codes (DICOM / SNOMED-CT) and default colours for common segment names.

3D Slicer stores a segment's meaning as a "terminology entry": a category, a type, an optional
type modifier (laterality) and an optional anatomic region, each a ``[scheme, code, meaning]``
triple. ``terminology_for`` returns such an entry as the dict that ``slicerio`` reads and writes.

Sources of the codes:

* 3D Slicer's ``SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json`` (Slicer repository,
  ``Modules/Loadable/Terminologies/Resources``): category "Anatomical Structure" (SCT 123037004)
  and "Morphologically Altered Structure" (SCT 49755003); types Spinal cord, Esophagus, Larynx,
  Mandible, Liver, Spleen, Kidney, Lung, Heart, Bladder, Prostate, Mass; laterality modifiers
  Right (SCT 24028007) and Left (SCT 7771000); the recommended display colours of these types.
* Brain stem (SCT 119238007), Parotid gland (SCT 45289007) and Salivary gland (SCT 385294005,
  the phantom's "glands") are not in that list but in Slicer's other bundled list,
  ``SegmentationCategoryTypeModifier-DICOM-Master.term.json``, with their Right/Left modifiers.
  Their colours are our choice (Slicer's midbrain and salivary gland colours).
* Radiotherapy targets GTV (SCT 228791009), CTV (SCT 228792002) and PTV (SCT 228793007) come from
  DICOM CID 9534 "Radiotherapy Target", with category "RT Target" (DCM 130041) from DICOM
  CID 9580 "RT Segmentation Property Category". Slicer's bundled lists do not hold them, so they
  are listed in the project's own context (below); names with a dose level ("PTV70") take them too.
* What no standard codes, the project codes in its own context, "Segmentation category and type -
  SlicerMedSeg" (coding scheme ``99MEDSEG``, a private designator as DICOM PS3.16 8.2 allows):
  category "Model review" with "Low confidence", "Small-organ region" and "Model label" (a label
  whose name no list knows). The Slicer module ships this context as
  ``Resources/Terminology/SegmentationCategoryTypeModifier-SlicerMedSeg.term.json`` and loads it,
  so Slicer resolves every segment the engine writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medseg_core.labels import name_key

SLICER_ANATOMY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_MASTER_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
MEDSEG_CONTEXT = "Segmentation category and type - SlicerMedSeg"

ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED_STRUCTURE = ("SCT", "49755003", "Morphologically Altered Structure")
RT_TARGET = ("DCM", "130041", "RT Target")
MODEL_REVIEW = ("99MEDSEG", "100", "Model review")
LOW_CONFIDENCE_CODE = ("99MEDSEG", "101", "Low confidence")
SMALL_ORGAN_REGION_CODE = ("99MEDSEG", "102", "Small-organ region")
MODEL_LABEL_CODE = ("99MEDSEG", "103", "Model label")
PRIVATE_SCHEME = "99MEDSEG"


def private_scheme_item():
    """The Coding Scheme Identification Sequence item that declares ``99MEDSEG`` in a DICOM object
    using it (PS3.3 C.12.1.1.2)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator, item.CodingSchemeName = PRIVATE_SCHEME, "SlicerMedSeg model review codes"
    item.CodingSchemeResponsibleOrganization = "SlicerMedSeg"
    return item
RIGHT = ("SCT", "24028007", "Right")
LEFT = ("SCT", "7771000", "Left")


@dataclass(frozen=True)
class _Entry:
    context: str
    category: tuple[str, str, str]
    type: tuple[str, str, str]
    rgb255: tuple[int, int, int]
    paired: bool = False  # has right/left sides
    aliases: tuple[str, ...] = ()


_S, _D, _M = SLICER_ANATOMY_CONTEXT, DICOM_MASTER_CONTEXT, MEDSEG_CONTEXT
_AS, _MAS = ANATOMICAL_STRUCTURE, MORPHOLOGICALLY_ALTERED_STRUCTURE

_ENTRIES: dict[str, _Entry] = {
    "Brainstem": _Entry(_D, _AS, ("SCT", "119238007", "Brain stem"), (145, 92, 109), aliases=("Brain stem",)),
    "SpinalCord": _Entry(_S, _AS, ("SCT", "2748008", "Spinal cord"), (244, 214, 49)),
    "Parotid": _Entry(_D, _AS, ("SCT", "45289007", "Parotid gland"), (70, 163, 117), paired=True,
                      aliases=("Parotid gland", "Parotids")),
    "SalivaryGland": _Entry(_D, _AS, ("SCT", "385294005", "Salivary gland"), (111, 184, 210), paired=True,
                            aliases=("Gland", "Glands", "Salivary glands")),
    "Esophagus": _Entry(_S, _AS, ("SCT", "32849002", "Esophagus"), (211, 171, 143), aliases=("Oesophagus",)),
    "Larynx": _Entry(_S, _AS, ("SCT", "4596009", "Larynx"), (150, 208, 243)),
    "Mandible": _Entry(_S, _AS, ("SCT", "91609006", "Mandible"), (222, 198, 101), aliases=("Bone_Mandible",)),
    "Liver": _Entry(_S, _AS, ("SCT", "10200004", "Liver"), (221, 130, 101)),
    "Spleen": _Entry(_S, _AS, ("SCT", "78961009", "Spleen"), (157, 108, 162)),
    "Kidney": _Entry(_S, _AS, ("SCT", "64033007", "Kidney"), (185, 102, 83), paired=True, aliases=("Kidneys",)),
    "Lung": _Entry(_S, _AS, ("SCT", "39607008", "Lung"), (197, 165, 145), paired=True, aliases=("Lungs",)),
    "Heart": _Entry(_S, _AS, ("SCT", "80891009", "Heart"), (206, 110, 84)),
    "Bladder": _Entry(_S, _AS, ("SCT", "89837001", "Bladder"), (222, 154, 132), aliases=("Urinary bladder",)),
    "Prostate": _Entry(_S, _AS, ("SCT", "41216001", "Prostate"), (230, 158, 140), aliases=("Prostate gland",)),
    "Mass": _Entry(_S, _MAS, ("SCT", "4147007", "Mass"), (144, 238, 144), aliases=("Tumor", "Tumour")),
    "GTV": _Entry(_M, RT_TARGET, ("SCT", "228791009", "GTV"), (255, 0, 0), aliases=("Gross tumor volume",)),
    "CTV": _Entry(_M, RT_TARGET, ("SCT", "228792002", "CTV"), (255, 140, 0), aliases=("Clinical target volume",)),
    "PTV": _Entry(_M, RT_TARGET, ("SCT", "228793007", "PTV"), (0, 170, 255), aliases=("Planning target volume",)),
    "Low confidence": _Entry(_M, MODEL_REVIEW, LOW_CONFIDENCE_CODE, (255, 217, 0)),
}

#: Fallback colours (RGB 0..255), from 3D Slicer's generic anatomy colours, picked by index.
PALETTE_255: tuple[tuple[int, int, int], ...] = (
    (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
    (221, 130, 101), (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0),
    (255, 250, 220), (230, 220, 70), (200, 200, 235), (250, 250, 210), (244, 214, 49),
    (0, 151, 206), (183, 156, 220), (183, 214, 211), (152, 189, 207), (178, 212, 242),
    (68, 172, 100), (111, 197, 131),
)

_SIDE_WORDS = {RIGHT: ("right", "rt", "r"), LEFT: ("left", "lt", "l")}


def _build_index() -> dict[str, tuple[_Entry, tuple[str, str, str] | None]]:
    index: dict[str, tuple[_Entry, tuple[str, str, str] | None]] = {}
    for key, entry in _ENTRIES.items():
        for base in map(name_key, (key, *entry.aliases)):
            index[base] = (entry, None)
            if entry.paired:
                for side, words in _SIDE_WORDS.items():
                    for word in words:
                        index[word + base] = (entry, side)
                        index[base + word] = (entry, side)
    return index


_INDEX = _build_index()


_DOSE_LEVEL = re.compile(r"^(gtv|ctv|ptv)\d+$")  # "PTV70": a target at a dose level


def _lookup(name: str) -> tuple[_Entry, tuple[str, str, str] | None] | None:
    key = name_key(name)
    if key not in _INDEX and (dose := _DOSE_LEVEL.match(key)):
        key = dose.group(1)
    return _INDEX.get(key)


def terminology_for(name: str) -> dict | None:
    """Returns the Slicer terminology entry for a segment name, or None if the name is unknown.

    Matching ignores case, spaces, underscores and punctuation, and understands sides of paired
    organs: "Right Parotid", "RightParotid", "parotid_r" and "Parotid Right" all give the
    parotid gland with the modifier Right.

    Args:
        name: segment name.

    Returns:
        A new dict in ``slicerio`` layout: ``contextName``, ``category``, ``type`` (each
        ``[scheme, code, meaning]``), ``typeModifier`` for a side, and ``anatomicContextName``.
    """
    found = _lookup(name)
    if found is None:
        return None
    entry, side = found
    terminology = {"contextName": entry.context, "category": list(entry.category), "type": list(entry.type)}
    if side is not None:
        terminology["typeModifier"] = list(side)
    terminology["anatomicContextName"] = ANATOMIC_CONTEXT
    return terminology


def project_terminology(type_code: tuple[str, str, str] = MODEL_LABEL_CODE) -> dict:
    """An entry of the project's own context (category "Model review"), for what no standard codes:
    ``LOW_CONFIDENCE_CODE``, ``SMALL_ORGAN_REGION_CODE`` or ``MODEL_LABEL_CODE``.

    >>> project_terminology(SMALL_ORGAN_REGION_CODE)["type"]
    ['99MEDSEG', '102', 'Small-organ region']
    """
    return {"contextName": MEDSEG_CONTEXT, "category": list(MODEL_REVIEW), "type": list(type_code),
            "anatomicContextName": ANATOMIC_CONTEXT}


def segment_terminology(name: str, terminology: dict | None = None) -> dict:
    """The entry a written segment carries: ``terminology`` if given, else the standard one for its
    name, else the project's "Model label" (so Slicer never falls back to a generic "Tissue").

    >>> segment_terminology("PTV70")["type"][2], segment_terminology("Chiasm-ish")["type"][2]
    ('PTV', 'Model label')
    """
    return dict(terminology) if terminology else (terminology_for(name) or project_terminology(MODEL_LABEL_CODE))


def default_color(name: str, index: int) -> tuple[float, float, float]:
    """Returns the usual display colour of a structure, else a fixed palette colour.

    Args:
        name: segment name (looked up like ``terminology_for``).
        index: any integer (e.g. the label value) picking the fallback colour, wrapping around.

    Returns:
        RGB in [0, 1].
    """
    found = _lookup(name)
    rgb = found[0].rgb255 if found else PALETTE_255[index % len(PALETTE_255)]
    return tuple(round(c / 255.0, 6) for c in rgb)
