"""``refine``: re-segment prompted organs of an existing result; the request, its checks, the run."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError
from . import checks


@dataclass
class RefineRequest:
    """What ``medseg refine`` and the worker's ``refine`` request take; checked when built.

    Attributes:
        input: the image (file or DICOM series folder).
        model: model name or package folder.
        labels: the current labels on the image's grid (a labelmap or ``.seg.nrrd``).
        output: output folder.
        prompts: one or more of ``LABEL:point:x,y,z``, ``LABEL:box:x0,y0,z0,x1,y1,z1`` and
            ``LABEL:negative:x,y,z`` (text), or ``{"label": L, "point" | "box" | "negative": [...]}``
            (the worker's form); LPS millimetres, as ``--roi``.
        overwrite: replace existing outputs.
        device: ``auto``, ``cpu``, ``cuda`` (or ``gpu``) or ``mps``.
    """

    input: str
    model: str
    labels: str
    output: str
    prompts: list
    overwrite: bool = False
    device: str = "auto"

    def __post_init__(self):
        from ..inference.refine import Prompt

        self.input = checks.path("INPUT", self.input)
        self.model = checks.text("--model", self.model)
        self.labels = checks.path("--labels", self.labels)
        self.output = checks.path("--output", self.output)
        self.overwrite = checks.flag("--overwrite", self.overwrite)
        self.device = checks.device("--device", self.device)
        if isinstance(self.prompts, (str, dict)) or not isinstance(self.prompts, (list, tuple)) or not self.prompts:
            raise InputError(f"--prompt: give at least one prompt, got {self.prompts!r}")
        self.prompts = [p if isinstance(p, Prompt) else prompt(p) for p in self.prompts]

    @classmethod
    def from_dict(cls, args) -> RefineRequest:
        """From a worker request's ``args`` (unknown or missing keys are refused)."""
        return checks.request_from_dict(cls, "refine", args)


def prompt(value):
    """One prompt from ``LABEL:KIND:NUMBERS`` or ``{"label": L, KIND: [numbers]}``."""
    from ..inference.refine import KINDS, Prompt

    shown = value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, str):
        parts = value.rsplit(":", 2)
        if len(parts) != 3:
            raise InputError(f"--prompt {shown}: expected LABEL:point:x,y,z, LABEL:box:x0,y0,z0,x1,y1,z1 "
                             f"or LABEL:negative:x,y,z")
        label, kind, numbers = parts[0], parts[1], parts[2].split(",")
    elif isinstance(value, dict) and "label" in value and len(value) == 2:
        label = value["label"]
        kind = next(k for k in value if k != "label")
        numbers = value[kind]
    else:
        raise InputError(f"--prompt {shown}: expected {{\"label\": ..., \"point\" | \"box\" | \"negative\": [...]}}")
    label = checks.text("--prompt", label)
    if kind not in KINDS:
        raise InputError(f"--prompt {shown}: the kind must be one of {', '.join(KINDS)}, not {kind!r}")
    want = 6 if kind == "box" else 3
    if isinstance(numbers, (str, bytes)) or not isinstance(numbers, (list, tuple)) or len(numbers) != want:
        raise InputError(f"--prompt {shown}: a {kind} takes {want} numbers (LPS mm)")
    mm = [checks.number("--prompt", v) for v in numbers]
    if kind == "box" and not all(a < b for a, b in zip(mm[:3], mm[3:])):
        raise InputError(f"--prompt {shown}: the box is inside out or empty (need x0 < x1, y0 < y1, z0 < z1)")
    return Prompt(label, kind, mm)


def refine_outputs(output: str | Path, stem: str) -> dict[str, Path]:
    """What ``refine`` writes: ``STEM_labels.nii.gz``, ``STEM.seg.nrrd`` and ``STEM_refine.json``."""
    from ..io.naming import output_paths

    paths = output_paths(output, stem, confidence=False)
    return {"labels": paths["labels"], "segmentation": paths["segmentation"],
            "refine": Path(output) / f"{stem}_refine.json"}


def run_refine(request: RefineRequest, progress: Callable | None = None, predictor=None, read_images=None) -> dict:
    """Refine and write the outputs (staged, renamed together); the refine record, with its outputs.

    ``read_images(path, n_channels)`` reads the image (default ``io.read_channels``); the worker
    passes one that keeps recent images, so a second prompt on the same case reads nothing."""
    from ..inference.predictor import Predictor
    from ..inference.refine import refine
    from ..io import OutputSet, read_channels, write_labelmap, write_segmentation
    from ..io.atomic import check_outputs, output_folder
    from ..io.corrections import read_correction
    from ..io.naming import stem_of
    from ..models import find_model

    report = progress or (lambda *a, **k: None)
    t0 = time.perf_counter()
    package = predictor.package if predictor is not None else find_model(request.model)
    outs = refine_outputs(request.output, stem_of(request.input))
    check_outputs(outs.values(), request.overwrite)
    with output_folder(request.output) as make_folder:
        report("read", 0.0, f"reading {Path(request.input).name}")
        images = (read_images or read_channels)(request.input, len(package.card.channels))
        # by segment name, without the "Low confidence" layer; a cropped .seg.nrrd goes onto the grid
        labels, _ = read_correction(request.labels, images[0], package.card, strict=False)
        seconds = {"read": time.perf_counter() - t0}
        pred = predictor or Predictor(package, device=request.device)
        seconds["load_model"] = 0.0 if predictor is not None else pred.load_seconds
        report("refine", 0.0, f"{len(request.prompts)} prompt(s)")
        result = refine(pred, images, labels, request.prompts)
        seconds.update(result.seconds)
        record = {"input": request.input, "labels": request.labels, "model": package.card.name,
                  "version": package.card.version, "changes": result.changes,
                  "coordinates": "LPS mm; box_index is [i0, j0, k0, i1, j1, k1) in the image's voxel indices",
                  "outputs": {k: str(v) for k, v in outs.items()}}
        make_folder()
        t = time.perf_counter()
        with OutputSet() as staged:
            write_labelmap(result.labels, staged.stage(outs["labels"]))
            write_segmentation(result.labels, package.card.labels, staged.stage(outs["segmentation"]))
            seconds["write"] = time.perf_counter() - t
            seconds["total"] = time.perf_counter() - t0
            record["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
            staged.stage(outs["refine"]).write_text(json.dumps(record, indent=1) + "\n")
    report("done", 1.0, f"refined in {time.perf_counter() - t0:.2f} s")
    return record
