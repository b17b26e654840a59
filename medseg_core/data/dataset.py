"""Datasets in nnU-Net v2 raw layout.

``dataset.json`` (``channel_names``, ``labels``, ``file_ending``), ``imagesTr/CASE_XXXX.ext`` (one
file per channel XXXX), ``labelsTr/CASE.ext``, and an optional split file: ``splits.json`` as
``{"train": [...], "validation": [...]}`` or nnU-Net's ``splits_final.json`` (a list of folds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, read_json


def _mm(spacing) -> str:
    return " x ".join(f"{s:.3g}" for s in spacing)


@dataclass
class RawDataset:
    root: Path
    channels: list[str]
    labels: dict[str, int]
    file_ending: str
    cases: list[str]
    label_dir: str = "labelsTr"

    @classmethod
    def open(cls, root: str | Path, label_dir: str = "labelsTr", labels_key: str = "labels") -> "RawDataset":
        root = Path(root)
        meta_path = root / "dataset.json"
        meta = read_json(meta_path, "nnU-Net's dataset.json")
        try:
            channels = [meta["channel_names"][k] for k in sorted(meta["channel_names"], key=int)]
            labels = {str(k): int(v) for k, v in meta[labels_key].items()}
        except (KeyError, ValueError) as exc:
            raise InputError(f"{meta_path}: missing or bad field {exc}") from None
        ending = meta.get("file_ending", ".nii.gz")
        img_dir = root / "imagesTr"
        if not img_dir.is_dir():
            raise InputError(f"{img_dir}: not found")
        suffix = "_0000" + ending
        cases = sorted(p.name[: -len(suffix)] for p in img_dir.iterdir() if p.name.endswith(suffix))
        if not cases:
            raise InputError(f"{img_dir}: no images named CASE_0000{ending}")
        return cls(root, channels, labels, ending, cases, label_dir)

    def check_cases(self, cases: list[str]) -> None:
        """Every case complete and coherent before any is used: each channel and the label exist,
        share one grid, and the label holds only ``dataset.json``'s values and some foreground.
        Raises a one-line InputError naming the case and the file."""
        import numpy as np
        import SimpleITK as sitk

        from ..io.corrections import same_grid
        from ..io.image import read_image

        known = set(self.labels.values())
        for case in cases:
            paths = self.image_paths(case)
            for p in paths:
                if not p.is_file():
                    raise InputError(f"{p}: image of case {case} is missing")
            label_path = self.label_path(case)
            if not label_path.is_file():
                raise InputError(f"{label_path}: label file missing for case {case}")
            label = read_image(label_path)
            for p in paths:
                reader = sitk.ImageFileReader()
                reader.SetFileName(str(p))
                try:
                    reader.ReadImageInformation()
                except RuntimeError as error:
                    from ..io.door import sitk_error_detail

                    raise InputError(f"{p}: image of case {case} cannot be read ({sitk_error_detail(error)})") from None
                if not same_grid(reader, label):  # a reader answers the grid questions as an image does
                    raise InputError(f"{label_path}: the label of case {case} is not on its image's grid "
                                     f"({p.name}: {reader.GetSize()} voxels of {_mm(reader.GetSpacing())} mm; "
                                     f"label: {label.GetSize()} of {_mm(label.GetSpacing())} mm)")
            values = np.unique(sitk.GetArrayViewFromImage(label))
            unknown = sorted(int(v) for v in values if int(v) not in known)
            if unknown:
                raise InputError(f"{label_path}: case {case} has label value(s) {unknown[:5]} that dataset.json "
                                 f"does not name")
            if not (values > 0).any():
                raise InputError(f"{label_path}: the label of case {case} is empty (no foreground)")

    def image_paths(self, case: str) -> list[Path]:
        return [self.root / "imagesTr" / f"{case}_{c:04d}{self.file_ending}" for c in range(len(self.channels))]

    def label_path(self, case: str) -> Path:
        return self.root / self.label_dir / f"{case}{self.file_ending}"

    @property
    def foreground_labels(self) -> dict[str, int]:
        return {k: v for k, v in self.labels.items() if v != 0}

    def split(self, split_file: str | Path | None = None, fold: int = 0) -> tuple[list[str], list[str]]:
        """(train, validation) case lists: from ``split_file``, else ``splits.json`` or
        ``splits_final.json`` beside dataset.json, else every fifth case for validation."""
        candidates = [Path(split_file)] if split_file else [self.root / "splits.json", self.root / "splits_final.json"]
        for path in candidates:
            if path.is_file():
                data = read_json(path, "split file")
                try:
                    if isinstance(data, list):
                        data = data[fold]
                    train, val = list(data["train"]), list(data.get("validation", data.get("val", [])))
                except (IndexError, KeyError, TypeError, AttributeError) as exc:
                    raise InputError(f"{path}: not a split (needs 'train' and 'validation' lists, "
                                     f"or a list of them for fold {fold}; {type(exc).__name__}: {exc})") from None
                missing = sorted(set(train + val) - set(self.cases))
                if missing:
                    raise InputError(f"{path}: cases not in the dataset: {', '.join(missing[:5])}")
                return train, val
            if split_file:
                raise InputError(f"{path}: split file not found")
        val = self.cases[::5]
        return [c for c in self.cases if c not in val], val
