"""The preprocessing a model was trained with, as recorded in its card (no SimpleITK needed)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PreprocessConfig:
    """Args:
        spacing: model spacing (x, y, z) in mm, or None to keep the input's.
        orientation: DICOM orientation code the arrays are put in.
        crop_to_body: crop to the body's bounding box.
        margin_mm: margin kept around the body.
        normalization: one parameter dict per channel (see ``normalize``).
        modality: "CT", "MR", ... of channel 0, used for the body mask.
    """

    spacing: list[float] | None = None
    orientation: str = "LPS"
    crop_to_body: bool = True
    margin_mm: float = 10.0
    normalization: list[dict] = field(default_factory=lambda: [{"scheme": "zscore"}])
    modality: str = "CT"

    def to_dict(self) -> dict:
        return {"spacing": self.spacing, "orientation": self.orientation, "crop_to_body": self.crop_to_body,
                "margin_mm": self.margin_mm, "normalization": self.normalization, "modality": self.modality}

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
