"""``segment``: the request, its checks, and the run (with each rank's share under ``torchrun``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import checks


@dataclass
class SegmentRequest:
    """What ``medseg segment`` and the worker's ``segment`` request take; checked when built.

    Attributes:
        inputs: image files or DICOM series folders.
        model: model name or package folder.
        output: output folder.
        device: ``auto``, ``cpu``, ``cuda`` (or ``gpu``) or ``mps``.
        overwrite: replace existing outputs.
        batch_size: sliding windows per forward pass (at least 1).
        tta: average over the flips the model was trained with.
        confidence: write the confidence map and the "Low confidence" segment.
        confidence_threshold: in [0, 1]; voxels under it join "Low confidence".
        roi: segment only inside this LPS box, six numbers (or their ``x0,...,z1`` text), mm.
        runtime: what runs the network's windows: ``auto``, ``torch`` or ``openvino``.
        dicom: DICOM objects written beside the other outputs for a DICOM series input:
            ``["seg"]`` (``STEM_seg.dcm``), ``["rtstruct"]`` (``STEM_rtstruct.dcm``), both, or their
            comma-separated text.
    """

    inputs: list
    model: str
    output: str
    device: str = "auto"
    overwrite: bool = False
    batch_size: int = 4
    tta: bool = False
    confidence: bool = True
    confidence_threshold: float = 0.5
    roi: list | str | None = None
    runtime: str = "auto"
    dicom: list | str = ()

    def __post_init__(self):
        self.inputs = checks.paths("INPUT", self.inputs)
        self.model = checks.text("--model", self.model)
        self.output = checks.path("--output", self.output)
        self.device = checks.device("--device", self.device)
        self.overwrite = checks.flag("--overwrite", self.overwrite)
        self.batch_size = checks.count("--batch-size", self.batch_size)
        self.tta = checks.flag("--tta", self.tta)
        self.confidence = checks.flag("--no-confidence", self.confidence)
        self.confidence_threshold = checks.fraction("--confidence-threshold", self.confidence_threshold)
        self.roi = None if self.roi is None else checks.roi("--roi", self.roi)
        self.runtime = checks.runtime("--runtime", self.runtime)
        self.dicom = checks.dicom_outputs("--dicom", list(self.dicom) if isinstance(self.dicom, tuple) else self.dicom)

    @classmethod
    def from_dict(cls, args) -> SegmentRequest:
        """From a worker request's ``args`` (unknown or missing keys are refused)."""
        return checks.request_from_dict(cls, "segment", args)


def run_segment(request: SegmentRequest, progress: Callable | None = None, predictor=None,
                read_images=None) -> list[dict]:
    """Segment the request's inputs; one report dict per input. Under ``torchrun`` each rank takes
    its share of the inputs (and its own GPU): a rank without a share returns an empty list.
    ``read_images`` as in :func:`~medseg_core.segment.segment_files`."""
    from ..segment import segment_files
    from ..training import distributed as dd

    inputs, info = request.inputs, dd.from_env()
    if info.enabled:
        inputs = dd.shard(inputs, info)
        if request.device in ("auto", "cuda", "gpu"):
            import torch

            if torch.cuda.is_available():
                torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
        if not inputs:
            return []
    return segment_files(inputs, request.model, request.output, device=request.device, overwrite=request.overwrite,
                         batch_size=request.batch_size, progress=progress, predictor=predictor, tta=request.tta,
                         confidence=request.confidence, confidence_threshold=request.confidence_threshold,
                         roi_mm=request.roi, read_images=read_images, runtime=request.runtime,
                         dicom=request.dicom)
