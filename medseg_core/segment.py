"""``medseg segment``: one call that serves the command line, the Slicer module's worker and tests.

For each input ``DIR/STEM_labels.nii.gz`` (labelmap on the input grid), ``DIR/STEM.seg.nrrd``
(Slicer segmentation) and ``DIR/STEM_report.json`` are written to temporary names and renamed
together at the end, so an error or interruption leaves nothing partial behind.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InputError

EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm", ".gz")


def stem_of(path: str | Path) -> str:
    """File name without its image extension(s), or the folder name of a DICOM series."""
    p = Path(path)
    name = p.name.rstrip("/") or p.resolve().name
    if p.is_dir():
        return name
    for ext in EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return p.stem


def output_paths(output_dir: Path, stem: str) -> dict[str, Path]:
    return {"labels": output_dir / f"{stem}_labels.nii.gz", "segmentation": output_dir / f"{stem}.seg.nrrd",
            "report": output_dir / f"{stem}_report.json"}


def channel_paths(path: Path, n_channels: int) -> list[Path]:
    """The files of a multi-channel case: ``CASE_0000.ext`` names its siblings ``CASE_0001.ext``..."""
    if n_channels == 1:
        return [path]
    m = re.match(r"^(.*)_0000(\..+)$", path.name)
    if not m:
        raise InputError(f"{path}: the model takes {n_channels} channels; name the first CASE_0000.ext "
                         f"and put CASE_0001.ext ... beside it")
    return [path.with_name(f"{m.group(1)}_{c:04d}{m.group(2)}") for c in range(n_channels)]


def volumes_ml(labels: np.ndarray, spacing, names: dict[int, str]) -> dict[str, float]:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=max(names) + 1 if names else 1)
    return {name: round(float(counts[v]) * voxel_ml, 3) for v, name in names.items()}


def segment_files(inputs: list[str | Path], model: str, output_dir: str | Path, device: str = "auto",
                  overwrite: bool = False, batch_size: int = 4,
                  progress: Callable[[str, float, str], None] | None = None, predictor=None) -> list[dict]:
    """Segment each input with ``model``; returns one report dict per input.

    Args:
        progress: optional ``(stage, fraction, message)`` callback.
        predictor: an already loaded :class:`~medseg_core.inference.predictor.Predictor` to reuse.
    """
    from .inference.predictor import Predictor
    from .io import OutputSet, check_writable_dir, is_constant, read_image, write_labelmap, write_segmentation
    from .models import find_model

    report_cb = progress or (lambda stage, fraction, message="": None)
    output_dir = Path(output_dir)
    inputs = [Path(p) for p in inputs]
    for p in inputs:
        if not p.exists():
            raise InputError(f"{p}: input does not exist")
    stems = [stem_of(p) for p in inputs]
    dup = {s for s in stems if stems.count(s) > 1}
    if dup:
        raise InputError(f"{sorted(dup)[0]}: two inputs share this name; their outputs would collide")
    if not overwrite:
        for s in stems:
            for path in output_paths(output_dir, s).values():
                if path.exists():
                    raise InputError(f"{path}: output exists (use --overwrite to replace it)")
    check_writable_dir(output_dir)
    t0 = time.perf_counter()
    pred = predictor or Predictor(find_model(model), device=device, batch_size=batch_size,
                                  progress=lambda stage, f: report_cb(stage, f, ""))
    card = pred.card
    names = card.label_names()
    reports = []
    for i, (path, stem) in enumerate(zip(inputs, stems)):
        report_cb("read", i / len(inputs), f"reading {path}")
        t = time.perf_counter()
        images = [read_image(p) for p in channel_paths(path, len(card.channels))]
        for p, im in zip(channel_paths(path, len(card.channels)), images[1:]):
            if im.GetSize() != images[0].GetSize():
                raise InputError(f"{p}: channel grid {im.GetSize()} differs from {images[0].GetSize()}")
        seconds = {"load_model": round(pred.load_seconds, 3) if i == 0 and predictor is None else 0.0,
                   "read": time.perf_counter() - t}
        warnings = []
        if is_constant(images[0]):
            import SimpleITK as sitk

            msg = f"{path}: the image is constant; writing an empty segmentation"
            print(f"medseg: warning: {msg}", file=sys.stderr)
            warnings.append(msg)
            label_img = sitk.Image(images[0].GetSize(), sitk.sitkUInt8)
            label_img.CopyInformation(images[0])
        else:
            result = pred.predict(images)
            label_img = result.labels
            seconds.update(result.seconds)
        report_cb("write", 1.0, f"writing {stem}")
        t = time.perf_counter()
        import SimpleITK as sitk

        lab_arr = sitk.GetArrayViewFromImage(label_img)
        outs = output_paths(output_dir, stem)
        report = {
            "input": str(path), "model": card.name, "version": card.version, "device": str(pred.device),
            "labels": {str(v): n for v, n in names.items()},
            "volumes_ml": volumes_ml(np.asarray(lab_arr), label_img.GetSpacing(), names),
            "warnings": warnings, "outputs": {k: str(v) for k, v in outs.items()},
        }
        with OutputSet() as staged:
            write_labelmap(label_img, staged.stage(outs["labels"]))
            write_segmentation(label_img, card.labels, staged.stage(outs["segmentation"]))
            seconds["write"] = time.perf_counter() - t
            seconds["total"] = sum(v for k, v in seconds.items())
            report["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
            staged.stage(outs["report"]).write_text(json.dumps(report, indent=1) + "\n")
        reports.append(report)
    report_cb("done", 1.0, f"{len(inputs)} case(s) in {time.perf_counter() - t0:.1f} s")
    return reports
