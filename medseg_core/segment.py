"""``medseg segment``: one call that serves the command line, the Slicer module's worker and tests.

For each input: ``DIR/STEM_labels.nii.gz`` (labelmap on the input grid), ``DIR/STEM.seg.nrrd``
(Slicer segmentation, with a "Low confidence" segment), ``DIR/STEM_confidence.nii.gz`` (float32
in [0, 1], 1 = confident), ``DIR/STEM_rois.json`` and ``DIR/STEM_rois.seg.nrrd`` (the small
organs' regions, for models that name small organs), ``DIR/STEM_report.json`` and, for a DICOM
series asked for them, ``DIR/STEM_seg.dcm`` (DICOM SEG, :mod:`~medseg_core.io.dicom_seg`) and
``DIR/STEM_rtstruct.dcm`` (RT Structure Set of the organs, :mod:`~medseg_core.io.rtstruct`). They are
written to temporary names and renamed together at the end, so an error or interruption leaves
nothing partial behind.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InputError
from .io.naming import output_paths, stem_of

WRITERS = 3
"""Threads writing one case's files."""


def segment_files(inputs: list[str | Path], model: str, output_dir: str | Path, device: str = "auto",
                  overwrite: bool = False, batch_size: int = 4, progress: Callable | None = None,
                  predictor=None, tta: bool = False, confidence: bool = True,
                  confidence_threshold: float = 0.5, roi_mm: list[float] | None = None,
                  read_images: Callable | None = None, runtime: str = "auto", dicom=()) -> list[dict]:
    """Segment each input with ``model``; returns one report dict per input.

    Args:
        progress: optional ``(stage, fraction, message="", eta_s=None)`` callback.
        predictor: an already loaded :class:`~medseg_core.inference.predictor.Predictor` to reuse.
        tta: average over the flips the model was trained with.
        confidence: write the confidence map and the "Low confidence" segment.
        confidence_threshold: voxels under it (in or next to the foreground) are "Low confidence".
        roi_mm: segment only inside this LPS box (x0, y0, z0, x1, y1, z1) in mm.
        read_images: ``(path, n_channels) -> images`` (default ``io.read_channels``); the worker
            passes the one that keeps recent images, so a refine after it reads nothing.
        runtime: what runs the network's windows (see :mod:`.inference.runtime`).
        dicom: DICOM objects to write too (``["seg", "rtstruct"]``); every input must then be a DICOM
            series.
    """
    from .inference.postprocess import postprocess, small_organs
    from .inference.predictor import Predictor
    from .io import read_channels
    from .io.atomic import check_output_folder, check_outputs
    from .models import find_model

    report_cb = progress or (lambda *a, **k: None)
    inputs, stems = _check_inputs(inputs)
    package = predictor.package if predictor is not None else find_model(model)
    card = package.card
    plan = {s: output_paths(Path(output_dir), s, confidence, bool(small_organs(card)), dicom) for s in stems}
    check_outputs((p for outs in plan.values() for p in outs.values()), overwrite)
    check_output_folder(output_dir)  # created only when the first case is written
    # every input is read and checked before the first is segmented: a bad one stops the run
    # before anything is written (the first is kept; the others are read again in turn)
    read = read_images or read_channels
    first = read(inputs[0], len(card.channels))
    for other in inputs[1:]:
        read(other, len(card.channels))
    sources = _dicom_sources(inputs, dicom)  # each series' headers, once its files were checked by the read
    t0 = time.perf_counter()
    report_cb("load", 0.0, f"loading {card.name}")
    pred = predictor or Predictor(package, device=device, batch_size=batch_size, progress=report_cb, runtime=runtime)
    if tta and not pred.mirror[0]:
        print(f"medseg: warning: {card.name} was trained without flips; --tta has nothing to average",
              file=sys.stderr)
    fresh_load = not getattr(pred, "load_reported", False)  # a reused predictor loaded nothing now
    pred.load_reported = True
    reports = []
    for i, (path, stem) in enumerate(zip(inputs, stems)):
        report_cb("read", i / len(inputs), f"reading {path.name}")
        t = time.perf_counter()
        images = first if i == 0 else read(path, len(card.channels))
        first = None
        seconds = {"load_model": round(pred.load_seconds, 3) if i == 0 and fresh_load else 0.0,
                   "read": time.perf_counter() - t}
        labels, conf, result, warnings = _predict(pred, images, path, tta, confidence, roi_mm)
        if result is not None:
            seconds.update(result.seconds)
        report_cb("write", 0.0, f"writing {stem}")
        t = time.perf_counter()
        case = postprocess(labels, conf, result, card, confidence_threshold)
        report = {"input": str(path), "model": card.name, "version": card.version, "device": pred.device_type,
                  "runtime": pred.runtime,
                  "labels": {str(v): n for v, n in card.label_names().items()},
                  "volumes_ml": case.summary.pop("volumes_ml"), "tta_passes": result.tta if result is not None else 0,
                  "roi_mm": roi_mm, "warnings": warnings, "outputs": {k: str(v) for k, v in plan[stem].items()},
                  **case.summary}
        if result is not None and not case.labels_found:
            msg = f"{path}: found none of {card.name}'s labels ({', '.join(card.label_names().values())})"
            print(f"medseg: warning: {msg}", file=sys.stderr)
            report["warnings"].append(msg)
        _write(case, plan[stem], card, path, report, seconds, t, sources.get(path))
        reports.append(report)
        report_cb("write", 1.0, f"{stem} done")
    report_cb("done", 1.0, f"{len(inputs)} case(s) in {time.perf_counter() - t0:.1f} s")
    return reports


def _check_inputs(inputs) -> tuple[list[Path], list[str]]:
    """The inputs as paths, each existing, and their output stems, each distinct."""
    inputs = [Path(p) for p in inputs]
    for p in inputs:
        if not p.exists():
            raise InputError(f"{p}: input does not exist")
    stems = [stem_of(p) for p in inputs]
    dup = {s for s in stems if stems.count(s) > 1}
    if dup:
        raise InputError(f"{sorted(dup)[0]}: two inputs share this name; their outputs would collide")
    return inputs, stems


def _predict(pred, images, path: Path, tta: bool, confidence: bool, roi_mm):
    """(labels, confidence or None, the Prediction or None, warnings) for one case; a constant image
    is background everywhere, without running the network."""
    import SimpleITK as sitk

    from .io import is_constant

    if not is_constant(images[0]):
        try:
            result = pred.predict(images, tta=tta, confidence=confidence, roi_mm=roi_mm)
        except InputError as exc:  # the model grid's checks do not know the file's name
            text = str(exc)
            raise InputError(text if text.startswith(str(path)) else f"{path}: {text}") from None
        return result.labels, result.confidence, result, []
    msg = f"{path}: the image is constant; writing an empty segmentation"
    print(f"medseg: warning: {msg}", file=sys.stderr)
    labels = sitk.Image(images[0].GetSize(), sitk.sitkUInt8)
    labels.CopyInformation(images[0])
    conf = np.ones(images[0].GetSize()[::-1], np.float32) if confidence else None
    return labels, conf, None, [msg]


def _dicom_sources(inputs: list[Path], dicom) -> dict:
    """For ``--dicom``: each input's series headers, read once before any work, after the read that
    checked the series (a file input, or a series a SEG cannot reference, stops the run here)."""
    if not dicom:
        return {}
    from .io.dicom import dicom_series_files, source_datasets
    from .io.dicom_seg import require_highdicom
    from .io.rtstruct import require_contours

    if "seg" in dicom:
        require_highdicom()
    if "rtstruct" in dicom:
        require_contours()
    out = {}
    for p in inputs:
        if not p.is_dir():
            raise InputError(f"{p}: --dicom {','.join(dicom)} needs a DICOM series folder as input, not a file")
        out[p] = source_datasets(p, dicom_series_files(p, check=False))
    return out


def _write(case, outs: dict, card, path: Path, report: dict, seconds: dict, t_write: float, sources=None) -> None:
    """Every output of one case, staged and renamed together (the report last, with the timings);
    the output folder is made here, and removed again if this first write fails."""
    from .io import OutputSet, write_labelmap, write_segmentation
    from .io.atomic import output_folder

    with output_folder(outs["labels"].parent) as make_folder, OutputSet() as staged:
        make_folder()
        # the files are written side by side: ITK's writers and zlib let go of the GIL (on a
        # full-size CT the four took 1.4 s one after another); the pool is left, so every write
        # has ended, before the set is committed or aborted
        with ThreadPoolExecutor(WRITERS) as pool:
            jobs = []
            if case.confidence is not None:  # the longest first
                jobs.append(pool.submit(_write_confidence, case, staged.stage(outs["confidence"])))
            jobs += [pool.submit(write_segmentation, case.labels, card.labels, staged.stage(outs["segmentation"]),
                                 extra_segments=case.extra_segments),
                     pool.submit(write_labelmap, case.labels, staged.stage(outs["labels"]))]
            if case.regions is not None:
                jobs.append(pool.submit(_write_regions, case, card, path, staged.stage(outs["rois"]),
                                        staged.stage(outs["rois_segmentation"])))
            if "dicom_seg" in outs:
                from .io.dicom_seg import write_dicom_seg

                write_dicom_seg(case.labels, card.labels, sources, staged.stage(outs["dicom_seg"]), card.name,
                                card.version, case.extra_segments)
            if "dicom_rtstruct" in outs:
                from .io.rtstruct import write_rtstruct

                write_rtstruct(case.labels, card.labels, sources, staged.stage(outs["dicom_rtstruct"]), card.name,
                               card.version)
            for job in jobs:
                job.result()
        seconds["write"] = time.perf_counter() - t_write
        seconds["total"] = sum(seconds.values())
        report["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
        staged.stage(outs["report"]).write_text(json.dumps(report, indent=1) + "\n")


def _write_confidence(case, staged: Path) -> None:
    from .inference.postprocess import quantised_confidence
    from .io import write_float_volume

    write_float_volume(quantised_confidence(case.confidence, case.labels), staged)


def _write_regions(case, card, path: Path, staged_json: Path, staged_segmentation: Path) -> None:
    """The small organs' regions: as JSON, and as a segmentation of boxes."""
    from .inference.postprocess import region_layer, small_organs
    from .io import write_segmentation

    staged_json.write_text(json.dumps(
        {"model": card.name, "image": str(path), "small_organs": list(small_organs(card).values()),
         "coordinates": "LPS mm; box_index is [i0, j0, k0, i1, j1, k1) in the image's voxel indices",
         "regions": case.regions}, indent=1) + "\n")
    boxes, box_labels = region_layer(case.regions, case.labels, card)
    write_segmentation(boxes, box_labels, staged_segmentation)
