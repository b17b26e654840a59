"""A cache of cases preprocessed up to (not including) intensity normalisation.

Training reads each case once from the raw dataset, reorients, crops and resamples it
(:class:`~medseg_core.data.preprocess.Preprocessor`), and keeps the result as ``CASE.npz`` with
``image`` (C, z, y, x; int16 when the values are integers, else float32), ``label`` (z, y, x)
uint8 and ``fg`` (a sample of foreground intensities, for the CT statistics). ``cache.json``
records the preprocessing it was made with; a cache made with other settings is rebuilt.
Training itself needs only numpy and torch, so a cache can be carried to a machine without
SimpleITK.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError, read_json
from ..io.atomic import atomic_output, write_text_atomic

FG_SAMPLES = 20000


def _key(pre: dict) -> dict:
    return {k: pre.get(k) for k in ("spacing", "orientation", "crop_to_body", "margin_mm", "modality")}


def build_cache(dataset, cases: list[str], pre_cfg, cache_dir: str | Path, log=print) -> Path:
    """Preprocess ``cases`` of a :class:`RawDataset` into ``cache_dir`` (incremental)."""
    import SimpleITK as sitk

    from ..io import read_image
    from .preprocess import Preprocessor

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    index_path = cache_dir / "cache.json"
    index = read_json(index_path, "cache index") if index_path.is_file() else {}
    if index.get("preprocessing") != _key(pre_cfg.to_dict()):
        index = {"preprocessing": _key(pre_cfg.to_dict()), "cases": {}}
    prep = Preprocessor(pre_cfg)
    rng = np.random.default_rng(0)
    todo = [c for c in cases if c not in index["cases"] or not (cache_dir / f"{c}.npz").is_file()]
    dataset.check_cases(todo)  # every case checked before the first is cached
    for i, case in enumerate(todo):
        images = [read_image(p) for p in dataset.image_paths(case)]
        lpath = dataset.label_path(case)
        if not lpath.is_file():
            raise InputError(f"{lpath}: label file missing for case {case}")
        label = read_image(lpath)
        imgs, lab = prep.geometric(images, label)
        raw = np.stack([sitk.GetArrayFromImage(im) for im in imgs])
        lab_arr = sitk.GetArrayFromImage(lab).astype(np.uint8)
        # Integer inputs (CT in HU) stay integers: resampled values are rounded (at most 0.5 HU
        # off), which keeps the cache about four times smaller than float32.
        integral = all(np.issubdtype(sitk.GetArrayViewFromImage(im).dtype, np.integer) for im in images)
        if integral and raw.min() >= -32768 and raw.max() <= 32767:
            raw = np.round(raw).astype(np.int16)
        else:
            raw = raw.astype(np.float32)
        fg = raw[0][lab_arr > 0]
        if fg.size > FG_SAMPLES:
            fg = rng.choice(fg, FG_SAMPLES, replace=False)
        with atomic_output(cache_dir / f"{case}.npz") as tmp:
            np.savez_compressed(tmp, image=raw, label=lab_arr, fg=fg.astype(np.float32))
        index["cases"][case] = {
            "shape": list(lab_arr.shape),
            "spacing": list(imgs[0].GetSpacing()),
            "classes": [int(v) for v in np.unique(lab_arr) if v > 0],
        }
        if (i + 1) % 20 == 0 or i + 1 == len(todo):
            log(f"cached {i + 1}/{len(todo)} cases")
            _write_index(index_path, index)
    _write_index(index_path, index)
    return cache_dir


def _write_index(path: Path, index: dict) -> None:
    write_text_atomic(path, json.dumps(index, indent=1))


def read_index(cache_dir: str | Path) -> dict:
    path = Path(cache_dir) / "cache.json"
    if not path.is_file():
        raise InputError(f"{path}: no preprocessed cache there")
    return read_json(path, "cache index")


def load_case(cache_dir: str | Path, case: str) -> dict[str, np.ndarray]:
    with np.load(Path(cache_dir) / f"{case}.npz") as z:
        return {k: z[k] for k in z.files}
