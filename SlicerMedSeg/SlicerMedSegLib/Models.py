"""The model list (``medseg models --json``) and the check that a volume suits a model's modality.

Pure Python: imports neither slicer nor qt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ModelInfo:
    """One entry of ``medseg models --json`` (bundled and fine-tuned models alike)."""

    name: str
    version: str = ""
    modality: str = ""
    description: str = ""
    channels: list = field(default_factory=list)
    labels: list = field(default_factory=list)  # [{"value", "name", "color", "terminology"}]
    source: str = ""  # "bundled" or "user" (fine-tuned)
    path: str = ""
    validation_dice: Optional[float] = None
    parent_validation_dice: Optional[float] = None  # a fine-tuned model is not re-validated: its parent's figure
    parent: Optional[str] = None
    small_organs: list = field(default_factory=list)

    @property
    def labelNames(self) -> list[str]:
        return [str(lab.get("name", "")) for lab in self.labels]

    @property
    def labelColors(self) -> dict[str, tuple]:
        return {str(lab.get("name")): tuple(lab.get("color") or (0.5, 0.5, 0.5)) for lab in self.labels}

    def displayText(self) -> str:
        """Text of the model list entry, e.g. ``phantom-unet 1.0.0 - CT, 5 labels, Dice 0.96``."""
        parts = [self.modality or "?", f"{len(self.labels)} labels"]
        if self.validation_dice is not None:
            parts.append(f"Dice {self.validation_dice:.2f}")
        elif self.parent_validation_dice is not None:
            parts.append(f"parent's Dice {self.parent_validation_dice:.2f}")
        if self.source == "user":
            parts.append("fine-tuned")
        return f"{self.name} {self.version} - " + ", ".join(parts)

    def summary(self) -> str:
        """The longer text under the list: modality, labels, version, validation Dice, lineage."""
        dice = f"{self.validation_dice:.3f}" if self.validation_dice is not None else "not recorded"
        if self.validation_dice is None and self.parent_validation_dice is not None:
            dice = f"not re-validated after fine-tuning (parent: {self.parent_validation_dice:.3f})"
        lines = [f"{self.name} version {self.version or '?'} ({self.source or 'unknown source'})",
                 f"Modality: {self.modality or '?'}" + (f", channels: {', '.join(map(str, self.channels))}"
                                                        if len(self.channels) > 1 else ""),
                 f"Labels: {', '.join(self.labelNames) or 'none'}",
                 f"Validation Dice (mean): {dice}"]
        if self.parent:
            lines.append(f"Fine-tuned from: {self.parent}")
        if self.description:
            lines.append(self.description)
        return "\n".join(lines)


def _mean_dice(validation) -> Optional[float]:
    if isinstance(validation, dict):
        value = validation.get("mean_dice")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _parent_name(parent) -> Optional[str]:
    if isinstance(parent, dict):
        return str(parent.get("name") or "") or None
    return str(parent) if parent else None


def parse_models_json(text: str) -> list[ModelInfo]:
    """``medseg models --json`` output -> ModelInfo list, in the command's order.

    Raises:
        ValueError: the text is not the expected JSON list.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"'medseg models --json' did not print JSON: {exc}") from None
    if not isinstance(data, list):
        raise ValueError("'medseg models --json' did not print a list")
    models = []
    for entry in data:
        if not isinstance(entry, dict) or not entry.get("name"):
            continue
        models.append(ModelInfo(
            name=str(entry["name"]), version=str(entry.get("version") or ""),
            modality=str(entry.get("modality") or ""), description=str(entry.get("description") or ""),
            channels=list(entry.get("channels") or []), labels=list(entry.get("labels") or []),
            source=str(entry.get("source") or ""), path=str(entry.get("path") or ""),
            validation_dice=_mean_dice(entry.get("validation")),
            parent_validation_dice=_mean_dice((entry.get("validation") or {}).get("parent")
                                              if isinstance(entry.get("validation"), dict) else None),
            parent=_parent_name(entry.get("parent")),
            small_organs=list(entry.get("small_organs") or [])))
    return models


def intensity_stats(values) -> dict[str, float]:
    """min, 1st, 50th and 99th percentiles and max of a numpy array (subsample it first if large)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"min": 0.0, "p01": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    p01, p50, p99 = np.percentile(v, [1, 50, 99])
    return {"min": float(v.min()), "p01": float(p01), "p50": float(p50), "p99": float(p99), "max": float(v.max())}


def modality_warning(modality: str, stats: dict) -> str:
    """A warning when intensities do not look like the model's modality; empty when they do.

    CT is expected in Hounsfield units: air near -1000 (outside the body, in the lungs or the
    table), bone and contrast well above 100. MRI intensities are arbitrary but never reach far
    below zero.

    >>> modality_warning("CT", {"min": -1024, "p01": -1000, "p50": -700, "p99": 900, "max": 2000})
    ''
    >>> modality_warning("CT", {"min": 0, "p01": 2, "p50": 180, "p99": 800, "max": 1200})[:37]
    'The model expects CT in Hounsfield un'
    """
    modality = (modality or "").upper()
    lo, hi, p01, p99 = stats.get("min", 0), stats.get("max", 0), stats.get("p01", 0), stats.get("p99", 0)
    span = f"intensities range from {lo:.0f} to {hi:.0f} (1st-99th percentile {p01:.0f} to {p99:.0f})"
    if modality == "CT":
        if lo > -500 or hi < 100:
            return (f"The model expects CT in Hounsfield units (air near -1000), but {span}. Is this an MRI, "
                    "a PET or a rescaled image? Results will be unreliable.")
        if lo < -3100 or hi > 40000:
            return (f"The model expects CT in Hounsfield units, but {span}: check the rescale slope and "
                    "intercept of the series.")
        return ""
    if modality in ("MR", "MRI"):
        if p01 <= -500 and lo <= -900:
            return (f"The model expects MRI, but {span}, which looks like CT in Hounsfield units. Results will "
                    "be unreliable.")
        return ""
    return ""
