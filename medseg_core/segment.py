"""``medseg segment``: one call that serves the command line, the Slicer module's worker and tests.

For each input: ``DIR/STEM_labels.nii.gz`` (labelmap on the input grid), ``DIR/STEM.seg.nrrd``
(Slicer segmentation, with a "Low confidence" segment), ``DIR/STEM_confidence.nii.gz`` (float32
in [0, 1], 1 = confident), ``DIR/STEM_rois.json`` and ``DIR/STEM_rois.seg.nrrd`` (the small
organs' regions, for models that name small organs) and ``DIR/STEM_report.json``. They are
written to temporary names and renamed together at the end, so an error or interruption leaves
nothing partial behind.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InputError
from .io.naming import output_paths, stem_of
from .labels import Label

LOW_CONFIDENCE = "Low confidence"
CONFIDENCE_STEPS = 1024  # the stored confidence map is quantised to multiples of 1/CONFIDENCE_STEPS
LOW_CONFIDENCE_COLOR = (1.0, 0.85, 0.0)


def volumes_ml(labels: np.ndarray, spacing, names: dict[int, str]) -> dict[str, float]:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=max(names) + 1 if names else 1)
    return {name: round(float(counts[v]) * voxel_ml, 3) for v, name in names.items()}


def segment_files(inputs: list[str | Path], model: str, output_dir: str | Path, device: str = "auto",
                  overwrite: bool = False, batch_size: int = 4, progress: Callable | None = None,
                  predictor=None, tta: bool = False, confidence: bool = True,
                  confidence_threshold: float = 0.5, roi_mm: list[float] | None = None) -> list[dict]:
    """Segment each input with ``model``; returns one report dict per input.

    Args:
        progress: optional ``(stage, fraction, message="", eta_s=None)`` callback.
        predictor: an already loaded :class:`~medseg_core.inference.predictor.Predictor` to reuse.
        tta: average over the flips the model was trained with.
        confidence: write the confidence map and the "Low confidence" segment.
        confidence_threshold: voxels under it (in or next to the foreground) are "Low confidence".
        roi_mm: segment only inside this LPS box (x0, y0, z0, x1, y1, z1) in mm.
    """
    import SimpleITK as sitk

    from .inference.confidence import low_confidence_mask, mean_per_label
    from .inference.predictor import Predictor
    from .inference.regions import box_mask, component_regions
    from .io import (OutputSet, check_writable_dir, is_constant, read_channels, write_float_volume, write_labelmap,
                     write_segmentation)
    from .io.terminology import SMALL_ORGAN_REGION_CODE, project_terminology
    from .models import find_model

    report_cb = progress or (lambda *a, **k: None)
    output_dir = Path(output_dir)
    inputs = [Path(p) for p in inputs]
    for p in inputs:
        if not p.exists():
            raise InputError(f"{p}: input does not exist")
    stems = [stem_of(p) for p in inputs]
    dup = {s for s in stems if stems.count(s) > 1}
    if dup:
        raise InputError(f"{sorted(dup)[0]}: two inputs share this name; their outputs would collide")
    package = predictor.package if predictor is not None else find_model(model)
    card = package.card
    names = card.label_names()
    small = {v: n for v, n in names.items() if n in set(card.small_organs)}
    plan = {s: output_paths(output_dir, s, confidence, bool(small)) for s in stems}
    if not overwrite:
        for outs in plan.values():
            for path in outs.values():
                if path.exists():
                    raise InputError(f"{path}: output exists (use --overwrite to replace it)")
    check_writable_dir(output_dir)
    t0 = time.perf_counter()
    report_cb("load", 0.0, f"loading {card.name}")
    pred = predictor or Predictor(package, device=device, batch_size=batch_size, progress=report_cb)
    if tta and not pred.mirror[0]:
        print(f"medseg: warning: {card.name} was trained without flips; --tta has nothing to average",
              file=sys.stderr)
    fresh_load = not getattr(pred, "load_reported", False)  # a reused predictor loaded nothing now
    pred.load_reported = True
    reports = []
    for i, (path, stem) in enumerate(zip(inputs, stems)):
        report_cb("read", i / len(inputs), f"reading {path.name}")
        t = time.perf_counter()
        images = read_channels(path, len(card.channels))
        seconds = {"load_model": round(pred.load_seconds, 3) if i == 0 and fresh_load else 0.0,
                   "read": time.perf_counter() - t}
        warnings = []
        result = None
        if is_constant(images[0]):
            msg = f"{path}: the image is constant; writing an empty segmentation"
            print(f"medseg: warning: {msg}", file=sys.stderr)
            warnings.append(msg)
            label_img = sitk.Image(images[0].GetSize(), sitk.sitkUInt8)
            label_img.CopyInformation(images[0])
            conf = np.ones(images[0].GetSize()[::-1], np.float32) if confidence else None
        else:
            result = pred.predict(images, tta=tta, confidence=confidence, roi_mm=roi_mm)
            label_img, conf = result.labels, result.confidence
            seconds.update(result.seconds)
        report_cb("write", 0.0, f"writing {stem}")
        t = time.perf_counter()
        lab_arr = sitk.GetArrayViewFromImage(label_img)
        outs = plan[stem]
        report = {
            "input": str(path), "model": card.name, "version": card.version, "device": str(pred.device),
            "labels": {str(v): n for v, n in names.items()},
            "volumes_ml": volumes_ml(np.asarray(lab_arr), label_img.GetSpacing(), names),
            "tta_passes": result.tta if result is not None else 0, "roi_mm": roi_mm,
            "warnings": warnings, "outputs": {k: str(v) for k, v in outs.items()},
        }
        extra = []
        if conf is not None:
            report["confidence_threshold"] = confidence_threshold
            report["mean_confidence"] = mean_per_label(conf, np.asarray(lab_arr), names)
            low = low_confidence_mask(conf, np.asarray(lab_arr), confidence_threshold,
                                      label_img.GetSpacing()[::-1])
            report["low_confidence_ml"] = round(float(low.sum()) * float(np.prod(label_img.GetSpacing())) / 1000, 3)
            extra.append((LOW_CONFIDENCE, LOW_CONFIDENCE_COLOR, low))
        regions = []
        if small:
            if result is not None and result.regions is not None:  # FocusNet heatmaps, L-SNet boxes
                regions = [r for r in result.regions if r["label"] in small.values()]
            else:
                prob = result.class_probability if result is not None else None
                regions = component_regions(label_img, small, prob)
            report["regions"] = len(regions)
        with OutputSet() as staged:
            write_labelmap(label_img, staged.stage(outs["labels"]))
            write_segmentation(label_img, card.labels, staged.stage(outs["segmentation"]), extra_segments=extra)
            if conf is not None:
                # stored in steps of 1/1024 (error at most 0.0005): the full float mantissa made
                # gzip write 36 MB in 2 s for a full-size CT, the steps 1.3 MB in 0.2 s
                conf_img = sitk.GetImageFromArray(np.round(conf * CONFIDENCE_STEPS) / CONFIDENCE_STEPS)
                conf_img.CopyInformation(label_img)
                write_float_volume(conf_img, staged.stage(outs["confidence"]))
            if small:
                colors = {lab.value: lab.color for lab in card.labels}
                staged.stage(outs["rois"]).write_text(json.dumps(
                    {"model": card.name, "image": str(path), "small_organs": list(small.values()),
                     "coordinates": "LPS mm; box_index is [i0, j0, k0, i1, j1, k1) in the image's voxel indices",
                     "regions": regions}, indent=1) + "\n")
                # one layer: a later box wins where two overlap (a layer per box costs seconds each
                # on a full-size CT)
                boxes = np.zeros(label_img.GetSize()[::-1], dtype=np.uint8 if len(regions) < 255 else np.uint16)
                box_labels = []
                for k, r in enumerate(regions):
                    boxes[box_mask(label_img, r["box_index"])] = k + 1
                    box_labels.append(Label(k + 1, f"{r['label']} region {k + 1}",
                                            colors.get(r["value"], (0.5, 0.5, 0.5)),
                                            project_terminology(SMALL_ORGAN_REGION_CODE)))
                box_img = sitk.GetImageFromArray(boxes)
                box_img.CopyInformation(label_img)
                write_segmentation(box_img, box_labels, staged.stage(outs["rois_segmentation"]))
            seconds["write"] = time.perf_counter() - t
            seconds["total"] = sum(v for k, v in seconds.items())
            report["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
            staged.stage(outs["report"]).write_text(json.dumps(report, indent=1) + "\n")
        reports.append(report)
        report_cb("write", 1.0, f"{stem} done")
    report_cb("done", 1.0, f"{len(inputs)} case(s) in {time.perf_counter() - t0:.1f} s")
    return reports
