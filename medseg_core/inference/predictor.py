"""Run a model package on images: preprocess, sliding windows, back to the input grid."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from ..data.preprocess import Grid, PreprocessConfig, Preprocessor, probabilities_to_labels
from ..models import ModelPackage
from .device import resolve_device
from .sliding_window import sliding_window_predict


@dataclass
class Prediction:
    """Attributes:
        labels: labelmap on the input grid (same origin, spacing, direction and size).
        probabilities: (N, z, y, x) float32 class probabilities on the model grid.
        grid: the model grid (for mapping further maps back with ``to_input_grid``).
        seconds: wall time per stage.
    """

    labels: sitk.Image
    probabilities: np.ndarray
    grid: Grid
    seconds: dict = field(default_factory=dict)


class Predictor:
    """Holds one loaded model; ``predict`` may be called for many images.

    Args:
        package: the model package.
        device: "auto", "cpu", "cuda" or "mps".
        batch_size: windows per forward pass.
        overlap: window overlap fraction.
        progress: optional callback ``(stage, fraction)``.
    """

    def __init__(self, package: ModelPackage, device: str = "auto", batch_size: int = 4,
                 overlap: float = 0.5, progress: Callable[[str, float], None] | None = None):
        t0 = time.perf_counter()
        self.package = package
        self.card = package.card
        self.device = resolve_device(device)
        self.net = package.build(self.device)
        self.preprocessor = Preprocessor(PreprocessConfig.from_dict(self.card.preprocessing))
        self.batch_size = batch_size
        self.overlap = overlap
        self.progress = progress or (lambda stage, fraction: None)
        self.load_seconds = time.perf_counter() - t0

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.card.spatial_dims == 2:  # windows are (B, C, 1, y, x): run the 2D net per slice
            return self.net(batch[:, :, 0]).logits[:, :, None]
        return self.net(batch).logits

    def predict_array(self, image: np.ndarray) -> np.ndarray:
        """Probabilities (N, z, y, x) for a preprocessed (C, z, y, x) array."""
        patch = tuple(self.card.patch_size)
        if self.card.spatial_dims == 2:
            patch = (1,) + patch
        probs = sliding_window_predict(
            torch.from_numpy(image), self._forward, patch, self.card.num_classes, overlap=self.overlap,
            batch_size=self.batch_size, device=self.device, amp=self.device.type == "cuda",
            progress=lambda f: self.progress("infer", f))
        return probs.numpy()

    def predict(self, images: list[sitk.Image]) -> Prediction:
        """Segment one case given its channels (the first is the reference grid)."""
        seconds = {}
        t = time.perf_counter()
        self.progress("preprocess", 0.0)
        pre = self.preprocessor(images)
        seconds["preprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        probs = self.predict_array(pre.image)
        seconds["infer"] = time.perf_counter() - t
        t = time.perf_counter()
        self.progress("resample", 0.0)
        lab = probabilities_to_labels(probs, pre.grid, images[0])
        out = sitk.GetImageFromArray(lab)
        out.CopyInformation(images[0])
        seconds["resample"] = time.perf_counter() - t
        return Prediction(out, probs, pre.grid, seconds)
