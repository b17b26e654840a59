"""The panel's choices as dataclasses, saved to and restored from QSettings.

Pure Python: imports neither slicer nor qt. ``save``/``load`` take any object with
``value(key)`` and ``setValue(key, value)`` (``qt.QSettings()`` in Slicer, a dict wrapper in tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

DEVICES = ("auto", "gpu", "cpu")
"""What the device selector offers: auto (GPU when there is one), GPU, CPU."""

SETTINGS_GROUP = "SlicerMedSeg"


@dataclass
class SegmentationParameters:
    """What ``medseg segment`` is asked for.

    Attributes:
        model: model name (bundled or fine-tuned) or package folder.
        device: ``auto``, ``gpu`` or ``cpu`` (CPU also hides the GPUs from the child).
        tta: test-time augmentation (average over the model's flips).
        confidence: write the confidence map and the "Low confidence" segment.
        confidence_threshold: voxels under it join "Low confidence".
        show_regions: show the small organs' regions (markups ROIs and box segments).
        roi_lps: segment only inside this LPS box ``[x0, y0, z0, x1, y1, z1]`` (mm); not saved.
    """

    model: str = ""
    device: str = "auto"
    tta: bool = False
    confidence: bool = True
    confidence_threshold: float = 0.5
    show_regions: bool = True
    roi_lps: Optional[list] = field(default=None, metadata={"saved": False})

    def validate(self) -> None:
        if not self.model:
            raise ValueError("choose a model")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r}: expected one of {', '.join(DEVICES)}")
        if not 0.0 <= float(self.confidence_threshold) <= 1.0:
            raise ValueError(f"confidence threshold {self.confidence_threshold}: must be within [0, 1]")
        if self.roi_lps is not None and len(self.roi_lps) != 6:
            raise ValueError("the region of interest needs six numbers x0,y0,z0,x1,y1,z1")


@dataclass
class FinetuneParameters:
    """What ``medseg finetune`` is asked for.

    Attributes:
        model: the parent model (never modified).
        steps: training steps; 0 (the default) lets the engine size them from the correction.
        name: the new model's name; empty takes ``MODEL-ft-<date-time>``.
        device: ``auto``, ``gpu`` or ``cpu``.
        lr: learning rate; ``None`` takes the recipe's.
    """

    model: str = ""
    steps: int = 0
    name: str = ""
    device: str = "auto"
    lr: Optional[float] = field(default=None, metadata={"saved": False})

    def validate(self) -> None:
        if not self.model:
            raise ValueError("choose the model to fine-tune")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r}: expected one of {', '.join(DEVICES)}")
        if int(self.steps) < 0:
            raise ValueError(f"steps {self.steps}: must be 0 (the recipe's default) or more")
        if self.name and not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"model name {self.name!r}: use letters, digits, '-', '_' or '.'")


def _convert(value, default):
    """A settings value back to the type of the field's default (QSettings may hand back strings)."""
    if isinstance(default, bool):
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(default, int):
        return int(float(value))
    if isinstance(default, float):
        return float(value)
    return str(value)


def save(params, settings, group: str = SETTINGS_GROUP) -> None:
    """Write the saved fields of ``params`` under ``group/<ClassName>/<field>``."""
    prefix = f"{group}/{type(params).__name__}/"
    for f in fields(params):
        if f.metadata.get("saved", True):
            settings.setValue(prefix + f.name, getattr(params, f.name))


def load(cls, settings, group: str = SETTINGS_GROUP):
    """A ``cls`` instance with the saved fields read back (defaults where absent or unreadable)."""
    params = cls()
    prefix = f"{group}/{cls.__name__}/"
    for f in fields(params):
        if not f.metadata.get("saved", True):
            continue
        value = settings.value(prefix + f.name)
        if value is None or value == "":
            continue
        try:
            setattr(params, f.name, _convert(value, getattr(params, f.name)))
        except (TypeError, ValueError):
            pass  # keep the default for a value that no longer parses
    if getattr(params, "device", "auto") not in DEVICES:
        params.device = "auto"
    return params
