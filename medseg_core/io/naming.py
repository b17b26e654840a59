"""The one source of the engine's file names: what ``segment`` writes for an input, how an input's
stem is found, and which extensions are compound. The Slicer module keeps a copy of
``OUTPUT_SUFFIXES`` (``SlicerMedSegLib.Protocol.SEGMENT_OUTPUT_SUFFIXES``; it does not import the
engine), which a test holds equal to this one.
"""

from __future__ import annotations

from pathlib import Path

#: What ``segment`` writes for an input ``STEM``: ``DIR/STEM<suffix>`` per kind of output (the
#: kinds are the keys of the ``result`` event's outputs).
OUTPUT_SUFFIXES: dict[str, str] = {
    "labels": "_labels.nii.gz",
    "segmentation": ".seg.nrrd",
    "report": "_report.json",
    "confidence": "_confidence.nii.gz",
    "rois": "_rois.json",
    "rois_segmentation": "_rois.seg.nrrd",
    "dicom_seg": "_seg.dcm",
    "dicom_rtstruct": "_rtstruct.dcm",
}
LABELS_SUFFIX = "_labels"  # ``STEM_labels.nii.gz``: what ``evaluate`` pairs with ``STEM.nii.gz``

#: Extensions made of several dots, kept whole when naming temporary files.
COMPOUND_EXTENSIONS = (".seg.nrrd", ".seg.nii.gz", ".nii.gz", ".tar.gz", ".json.gz")

#: Extensions stripped from an input's name to find its stem.
IMAGE_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm", ".gz")


def stem_of(path: str | Path) -> str:
    """File name without its image extension(s), or the folder name of a DICOM series.

    >>> stem_of("scans/ct_0000.nii.gz"), stem_of("a.seg.nrrd"), stem_of("b.mha")
    ('ct_0000', 'a', 'b')
    """
    p = Path(path)
    name = p.name.rstrip("/") or p.resolve().name
    if p.is_dir():
        return name
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return p.stem


def output_paths(output_dir: str | Path, stem: str, confidence: bool = True, rois: bool = False,
                 dicom: tuple[str, ...] | list[str] = ()) -> dict[str, Path]:
    """The files ``segment`` writes for one input (confidence, regions and DICOM objects such as
    ``dicom=["seg", "rtstruct"]`` only when asked for).

    >>> sorted(output_paths("out", "ct", confidence=False))
    ['labels', 'report', 'segmentation']
    >>> output_paths("out", "ct", rois=True)["rois_segmentation"].as_posix()
    'out/ct_rois.seg.nrrd'
    """
    wanted = {"labels", "segmentation", "report"} | ({"confidence"} if confidence else set()) \
        | ({"rois", "rois_segmentation"} if rois else set()) | {f"dicom_{kind}" for kind in dicom}
    return {kind: Path(output_dir) / f"{stem}{suffix}" for kind, suffix in OUTPUT_SUFFIXES.items() if kind in wanted}
