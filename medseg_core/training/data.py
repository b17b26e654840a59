"""From a raw dataset (or an existing cache) to normalised tensors ready for sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.cache import build_cache, load_case, read_index
from ..data.normalize import ct_statistics, normalize_channels, scheme_for
from ..data.preprocess_config import PreprocessConfig
from ..errors import InputError
from ..io.atomic import write_text_atomic
from .config import TrainConfig


def canonical_spacing(path: Path, orientation: str = "LPS") -> list[float]:
    """An image's spacing (x, y, z) after reorientation, read from its header only."""
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    d = np.abs(np.array(r.GetDirection()).reshape(3, 3))
    sp = np.array(r.GetSpacing())
    # canonical axis k takes the spacing of the input axis whose direction is closest to world axis k
    return [float(sp[int(np.argmax(d[k]))]) for k in range(3)]


def prepare_cache(config: TrainConfig, data_dir: str | Path | None, cache_dir: Path,
                  split_file: str | None = None, log=print) -> dict:
    """Make sure ``cache_dir`` holds every train/validation case; returns the cache index, which
    also records the dataset's labels, channels and split (so training can run from the cache
    alone, on a machine without SimpleITK or the raw data)."""
    index_path = cache_dir / "cache.json"
    if data_dir is None:
        index = read_index(cache_dir)
        if "dataset" not in index:
            raise InputError(f"{index_path}: cache has no dataset record; give --data")
        return index
    from ..data.dataset import RawDataset

    ds = RawDataset.open(data_dir, config.label_dir, config.labels_key)
    train, val = ds.split(split_file)
    spacing = config.spacing
    if spacing is None:
        spacings = np.array([canonical_spacing(ds.image_paths(c)[0]) for c in train])
        spacing = [float(v) for v in np.median(spacings, axis=0)]
    pre = PreprocessConfig(spacing=spacing, crop_to_body=config.crop_to_body, margin_mm=config.margin_mm,
                           resample_oblique=config.resample_oblique,
                           modality=ds.channels[0], normalization=[scheme_for(c) for c in ds.channels])
    build_cache(ds, train + val, pre, cache_dir, log=log)
    index = read_index(cache_dir)
    index["dataset"] = {"name": Path(data_dir).name, "path": str(Path(data_dir).resolve()),
                        "labels": ds.labels, "channels": ds.channels, "train": train, "validation": val,
                        "label_dir": ds.label_dir}
    write_text_atomic(index_path, json.dumps(index, indent=1))
    return index


def normalization_for(index: dict, cache_dir: Path, train: list[str]) -> list[dict]:
    """Per-channel parameters: CT statistics from the training cases' foreground; else z-score."""
    channels = index["dataset"]["channels"]
    norms = []
    for c, name in enumerate(channels):
        scheme = scheme_for(name)
        if scheme["scheme"] == "ct" and c == 0:
            fg = np.concatenate([load_case(cache_dir, case)["fg"] for case in train])
            scheme = ct_statistics(fg)
        elif scheme["scheme"] == "ct":
            scheme = {"scheme": "zscore"}
        norms.append(scheme)
    return norms


def load_tensors(cache_dir: Path, cases: list[str], pre_cfg: PreprocessConfig,
                 device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Normalised images (C, z, y, x) float32 and labels (z, y, x) uint8 on ``device``."""
    images, labels = [], []
    for case in cases:
        d = load_case(cache_dir, case)
        raw = d["image"].astype(np.float32)
        images.append(torch.from_numpy(normalize_channels(raw, pre_cfg.normalization, pre_cfg.modality)).to(device))
        labels.append(torch.from_numpy(d["label"]).to(device))
    return images, labels
