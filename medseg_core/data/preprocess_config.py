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
        resample_oblique: an image whose grid is oblique (rotated away from the axes even after
            reorientation) is resampled onto an axis-aligned grid, the frame the model was
            trained in, in the same single interpolation as the spacing change; results go back
            onto the input's own grid. Off in cards that do not say (their models were trained on
            whatever grids they were given).
    """

    spacing: list[float] | None = None
    orientation: str = "LPS"
    crop_to_body: bool = True
    margin_mm: float = 10.0
    normalization: list[dict] = field(default_factory=lambda: [{"scheme": "zscore"}])
    modality: str = "CT"
    resample_oblique: bool = False

    def to_dict(self) -> dict:
        d = {"spacing": self.spacing, "orientation": self.orientation, "crop_to_body": self.crop_to_body,
             "margin_mm": self.margin_mm, "normalization": self.normalization, "modality": self.modality}
        if self.resample_oblique:  # absent means off: older cards and caches keep their form
            d["resample_oblique"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
