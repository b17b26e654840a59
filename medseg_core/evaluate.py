"""Scores a folder of predicted labelmaps against a folder of references (``medseg evaluate``).

Pairing: a reference ``CASE.nii.gz`` matches a prediction ``CASE.nii.gz``, ``CASE_labels.nii.gz`` or
``CASE_0000_labels.nii.gz``
(what ``medseg segment`` writes); ``.nii``, ``.nrrd`` and ``.mha`` are accepted too, in any mix.
Predictions without a reference are ignored. Files whose names start with "." are skipped.

Label names come from ``labels``, else from the ``dataset.json`` of ref_dir or its parent (nnU-Net
layout, ``{"labels": {"background": 0, "Liver": 1}}``), else ``label_<value>``. The labels scored are
the keys of that mapping (background excluded); without one, every non-zero value found in any
reference or prediction.

Summary: for each label, the mean of each metric over the cases whose reference holds the label,
NaN values ignored, with ``n`` that number of cases, ``n_missed`` those where the prediction lacks
the label (their HD95/HD/ASSD are +inf, so the means are too) and ``n_false_positive`` the cases
whose prediction holds a label that the reference lacks (not in the means). ``mean`` averages the
labels' means (NaN ignored). In the JSON file NaN is written as null and infinity as "inf"; the CSV
holds one row per case x label with ``nan``/``inf`` spelled out.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg_core.errors import InputError
from medseg_core.io.atomic import write_text_atomic
from medseg_core.io.naming import LABELS_SUFFIX
from medseg_core.metrics import METRIC_NAMES, compute_case_metrics

EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")
"""Labelmap file endings that are paired."""

PREDICTION_SUFFIX = LABELS_SUFFIX
GEOMETRY_TOLERANCE = 1e-4


def _case_name(path: Path) -> str | None:
    """The file name without its labelmap ending, or None for other files."""
    lower = path.name.lower()
    for ext in EXTENSIONS:
        if lower.endswith(ext) and len(lower) > len(ext):
            return path.name[: -len(ext)]
    return None


def _labelmap_files(folder: Path, role: str) -> list[tuple[str, Path]]:
    if not folder.is_dir():
        raise InputError(f"{folder}: {role} folder not found")
    found = [(_case_name(p), p) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    return [(name, p) for name, p in found if name is not None]


def pair_cases(pred_dir, ref_dir) -> list[tuple[str, Path, Path]]:
    """Pairs reference and prediction files by case name.

    Returns:
        ``[(case, pred_path, ref_path)]`` sorted by case.

    Raises:
        InputError: a missing folder, two references of one case, an ambiguous prediction, any
            reference without a prediction (all listed), or no reference at all.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    pred_files = _labelmap_files(pred_dir, "prediction")
    refs: dict[str, Path] = {}
    for case, path in _labelmap_files(ref_dir, "reference"):
        if case in refs:
            raise InputError(f"{path}: case {case!r} has two references ({refs[case].name}, {path.name})")
        refs[case] = path
    if not refs:
        raise InputError(f"{ref_dir}: no reference labelmap ({', '.join(EXTENSIONS)}) found")
    preds: dict[str, list[Path]] = {}
    for case, path in pred_files:
        preds.setdefault(case, []).append(path)

    pairs, missing = [], []
    for case in sorted(refs):
        # ``medseg segment imagesTr/CASE_0000.nii.gz`` writes CASE_0000_labels (nnU-Net naming)
        candidates = (preds.get(case, []) + preds.get(case + PREDICTION_SUFFIX, [])
                      + preds.get(case + "_0000" + PREDICTION_SUFFIX, []))
        if len(candidates) > 1:
            raise InputError(f"{pred_dir}: case {case!r} has several predictions: "
                             + ", ".join(p.name for p in candidates))
        if not candidates:
            missing.append(refs[case].name)
        else:
            pairs.append((case, candidates[0], refs[case]))
    if missing:
        raise InputError(f"{pred_dir}: no prediction for {len(missing)} reference case(s): " + ", ".join(missing))
    return pairs


def _read_labelmap(path: Path) -> sitk.Image:
    from .io.door import read_file

    image = read_file(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: not a labelmap ({image.GetNumberOfComponentsPerPixel()} components per voxel)")
    return image


def _check_same_grid(pred: sitk.Image, ref: sitk.Image, pred_path: Path, ref_path: Path) -> None:
    """Raises InputError naming the prediction file when its grid differs from the reference's."""
    def close(a, b):
        return len(a) == len(b) and np.allclose(a, b, rtol=0.0, atol=GEOMETRY_TOLERANCE)

    checks = (("size", pred.GetSize(), ref.GetSize(), pred.GetSize() == ref.GetSize()),
              ("spacing", pred.GetSpacing(), ref.GetSpacing(), close(pred.GetSpacing(), ref.GetSpacing())),
              ("origin", pred.GetOrigin(), ref.GetOrigin(), close(pred.GetOrigin(), ref.GetOrigin())),
              ("direction", pred.GetDirection(), ref.GetDirection(), close(pred.GetDirection(), ref.GetDirection())))
    for what, p, r, same in checks:
        if not same:
            fmt = lambda v: "(" + ", ".join(f"{x:g}" for x in v) + ")"  # noqa: E731
            raise InputError(f"{pred_path}: {what} {fmt(p)} differs from the reference {ref_path.name} {fmt(r)}")


def _label_array(image: sitk.Image, path: Path) -> np.ndarray:
    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.rint(array)):
            raise InputError(f"{path}: not a labelmap (non-integer voxel values)")
        array = array.astype(np.int64)
    return array


def _names_from_dataset_json(ref_dir: Path) -> dict[int, str] | None:
    """Label names from the nnU-Net ``dataset.json`` of ref_dir or its parent, if any."""
    for folder in (ref_dir, ref_dir.parent):
        path = folder / "dataset.json"
        if not path.is_file():
            continue
        try:
            labels = json.loads(path.read_text())["labels"]
            names = {int(v): str(k) for k, v in labels.items() if not isinstance(v, (list, tuple, dict))}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{path}: no usable 'labels' mapping ({exc})") from None
        return {v: n for v, n in names.items() if v != 0}
    return None


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def _summary(cases: list[dict], names: dict[int, str]) -> dict:
    per_label = {}
    for value, name in names.items():
        present = [c["metrics"][value] for c in cases if c["metrics"][value]["volume_ref_ml"] > 0]
        entry: dict = {"name": name, "n": len(present),
                       "n_missed": sum(m["volume_pred_ml"] == 0 for m in present),
                       "n_false_positive": sum(c["metrics"][value]["volume_ref_ml"] == 0
                                               and c["metrics"][value]["volume_pred_ml"] > 0 for c in cases)}
        entry.update({metric: _mean([m[metric] for m in present]) for metric in METRIC_NAMES})
        # One missed case makes a mean distance infinite: also give the median over all cases and
        # the mean over the cases where the structure was found.
        for metric in ("hd95", "assd"):
            values = [m[metric] for m in present]
            entry[f"{metric}_median"] = float(np.median(values)) if values else math.nan
            entry[f"{metric}_detected"] = _mean([v for v in values if math.isfinite(v)])
        per_label[value] = entry
    keys = list(METRIC_NAMES) + ["hd95_median", "hd95_detected", "assd_median", "assd_detected"]
    mean = {metric: _mean([e[metric] for e in per_label.values()]) for metric in keys}
    mean["n_labels"] = sum(e["n"] > 0 for e in per_label.values())
    return {"per_label": per_label, "mean": mean}


def _jsonable(obj):
    """NaN -> None, +-inf -> "inf"/"-inf", recursively; int dict keys become strings in json."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def _csv_text(cases: list[dict], names: dict[int, str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "label", "name", *METRIC_NAMES])
    for case in cases:
        for value, name in names.items():
            m = case["metrics"][value]
            writer.writerow([case["case"], value, name, *(repr(float(m[k])) for k in METRIC_NAMES)])
    return buffer.getvalue()


def evaluate_folders(pred_dir, ref_dir, labels: dict[int, str] | None = None, out_csv=None, out_json=None) -> dict:
    """Scores every reference case of ref_dir against its prediction in pred_dir.

    Args:
        pred_dir: folder of predicted labelmaps (``CASE.nii.gz`` or ``CASE_labels.nii.gz``).
        ref_dir: folder of reference labelmaps (``CASE.nii.gz``; .nii, .nrrd, .mha too).
        labels: ``{value: name}`` of the labels to score; default from dataset.json (see module).
        out_csv: if given, a CSV with one row per case x label (written atomically, replaced).
        out_json: if given, the returned result as JSON (written atomically, replaced).

    Returns:
        ``{"pred_dir", "ref_dir", "labels": {value: name}, "cases": [{"case", "pred", "ref",
        "metrics": {value: {metric: float}}}], "summary": {"per_label": {value: {"name", "n",
        "n_missed", "n_false_positive", metric: mean}}, "mean": {metric: mean, "n_labels"}}}``.
        Metrics are those of ``medseg_core.metrics.METRIC_NAMES`` (distances in mm, volumes in ml).

    Raises:
        InputError: see ``pair_cases``; an unreadable file or non-labelmap; a prediction whose grid
            (size; spacing, origin, direction within 1e-4) differs from its reference's; a bad
            dataset.json.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    pairs = pair_cases(pred_dir, ref_dir)
    names = ({int(v): str(n) for v, n in labels.items() if int(v) != 0} if labels is not None
             else _names_from_dataset_json(ref_dir))

    cases = []
    for case, pred_path, ref_path in pairs:
        ref_image, pred_image = _read_labelmap(ref_path), _read_labelmap(pred_path)
        _check_same_grid(pred_image, ref_image, pred_path, ref_path)
        ref, pred = _label_array(ref_image, ref_path), _label_array(pred_image, pred_path)
        if names is not None:
            values = sorted(names)
        else:
            values = sorted(int(v) for v in np.union1d(np.unique(ref), np.unique(pred)) if v != 0)
        spacing_zyx = ref_image.GetSpacing()[::-1]
        cases.append({"case": case, "pred": str(pred_path), "ref": str(ref_path),
                      "metrics": compute_case_metrics(pred, ref, spacing_zyx, values)})

    if names is None:  # every value seen anywhere; cases lacking it on both sides score as empty
        found = sorted({v for c in cases for v in c["metrics"]})
        names = {v: f"label_{v}" for v in found}
        absent = compute_case_metrics(np.zeros((1, 1, 1), np.uint8), np.zeros((1, 1, 1), np.uint8), (1, 1, 1), found)
        for c in cases:
            c["metrics"] = {v: c["metrics"].get(v, dict(absent[v])) for v in found}
    names = dict(sorted(names.items()))

    result = {"pred_dir": str(pred_dir), "ref_dir": str(ref_dir), "labels": names, "cases": cases,
              "summary": _summary(cases, names)}
    if out_csv is not None:
        write_text_atomic(out_csv, _csv_text(cases, names))
    if out_json is not None:
        write_text_atomic(out_json, json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n")
    return result
