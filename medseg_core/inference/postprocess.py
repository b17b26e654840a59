"""After the network: what a segmentation run reports and writes beside the labelmap.

* the "Low confidence" layer: voxels under the threshold in or next to the foreground
  (:func:`~medseg_core.inference.confidence.low_confidence_mask`);
* the small organs' regions: from the network's own heads where it has them (FocusNet's
  heatmaps, L-SNet's boxes, :attr:`Prediction.regions`), else boxes around the connected
  components of the labelmap (:func:`~medseg_core.inference.regions.component_regions`), and
  the one-layer segmentation that draws them;
* each organ's volume and mean confidence;
* first of all, for the organs the card names (``inference.largest_component``), only the largest
  connected component is kept (:func:`keep_largest_components`).

Every array is on the input grid, (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ..io.terminology import SMALL_ORGAN_REGION_CODE, project_terminology
from ..labels import Label
from .confidence import low_confidence_mask, mean_per_label
from .regions import box_mask, component_regions, largest_component

LOW_CONFIDENCE = "Low confidence"
LOW_CONFIDENCE_COLOR = (1.0, 0.85, 0.0)
CONFIDENCE_STEPS = 1024
"""The stored confidence map is quantised to multiples of 1/CONFIDENCE_STEPS (error at most 0.0005):
the full float mantissa made gzip write 36 MB in 2 s for a full-size CT, the steps 1.3 MB in 0.2 s."""


@dataclass
class CaseOutputs:
    """Attributes:
        labels: the labelmap (the input's geometry).
        confidence: (z, y, x) float32 in [0, 1], or None when not asked for.
        extra_segments: ``(name, colour, mask)`` layers written into the ``.seg.nrrd`` beside the
            labels ("Low confidence").
        regions: the small organs' regions (dicts with ``label``, ``value``, ``box_index``,
            ``box_mm``, ``source``...), or None when the model names no small organs.
        summary: what the case report gains (volumes, mean confidence, low-confidence volume,
            the number of regions).
        labels_found: the labelmap holds at least one of the model's labels.
    """

    labels: sitk.Image
    confidence: np.ndarray | None
    extra_segments: list = field(default_factory=list)
    regions: list[dict] | None = None
    summary: dict = field(default_factory=dict)
    labels_found: bool = True


def keep_largest_components(labels: sitk.Image, values) -> sitk.Image:
    """``labels`` with each of ``values`` reduced to its largest connected component (26-connected);
    the other components become background. The geometry is kept.

    >>> a = np.zeros((1, 5, 9), np.uint8); a[0, 1:4, 0:3] = 2; a[0, 2, 6:8] = 2; a[0, 0, 8] = 1
    >>> out = sitk.GetArrayFromImage(keep_largest_components(sitk.GetImageFromArray(a), [2]))
    >>> int((out == 2).sum()), int((out == 1).sum())
    (9, 1)
    """
    values = [int(v) for v in values]
    if not values:
        return labels
    arr = sitk.GetArrayFromImage(labels)
    for v in values:
        mask = arr == v
        arr[mask & ~largest_component(mask)] = 0
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(labels)
    return out


def postprocess(labels: sitk.Image, confidence: np.ndarray | None, prediction, card,
                threshold: float) -> CaseOutputs:
    """The layers and figures of one case; ``prediction`` is the
    :class:`~medseg_core.inference.predictor.Prediction` (None for a constant image, segmented as
    background without the network). The card's per-organ component rule is applied first, and
    ``confidence`` is quantised in place (:func:`quantise_confidence`)."""
    labels = keep_largest_components(labels, card.inference.largest_component)
    names = card.label_names()
    arr = np.asarray(sitk.GetArrayViewFromImage(labels))
    if confidence is not None:
        confidence = quantise_confidence(np.asarray(confidence, dtype=np.float32))
    out = CaseOutputs(labels, confidence)
    out.summary["volumes_ml"] = volumes_ml(arr, labels.GetSpacing(), names)
    out.labels_found = bool(arr.any())
    if confidence is not None:
        low = low_confidence_mask(confidence, arr, threshold, labels.GetSpacing()[::-1])
        out.summary.update(confidence_threshold=threshold, mean_confidence=mean_per_label(confidence, arr, names),
                           low_confidence_ml=round(float(low.sum()) * _voxel_ml(labels), 3))
        out.extra_segments.append((LOW_CONFIDENCE, LOW_CONFIDENCE_COLOR, low))
    small = small_organs(card)
    if small:
        if prediction is not None and prediction.regions is not None:  # FocusNet heatmaps, L-SNet boxes
            out.regions = [r for r in prediction.regions if r["label"] in small.values()]
        else:
            probability = prediction.class_probability if prediction is not None else None
            out.regions = component_regions(labels, small, probability)
        out.summary["regions"] = len(out.regions)
    return out


def small_organs(card) -> dict[int, str]:
    """The card's small organs, ``{value: name}``."""
    wanted = set(card.small_organs)
    return {v: n for v, n in card.label_names().items() if n in wanted}


def volumes_ml(labels: np.ndarray, spacing, names: dict[int, str]) -> dict[str, float]:
    """Each label's volume in millilitres (counted inside the foreground's box: on a full-size CT
    a count over every voxel took 0.17 s)."""
    from ..data.preprocess import bbox_from_mask

    voxel_ml = float(np.prod(spacing)) / 1000.0
    box = bbox_from_mask(labels != 0, min_count=1)
    inside = labels[box] if box is not None else labels[:0]
    counts = np.bincount(inside.ravel(), minlength=max(names) + 1 if names else 1)
    return {name: round(float(counts[v]) * voxel_ml, 3) for v, name in names.items()}


def quantise_confidence(confidence: np.ndarray) -> np.ndarray:
    """``confidence`` rounded in place to multiples of 1/CONFIDENCE_STEPS (returned): the map the
    low-confidence mask, the means and the file see is one. In place, as the copies (two more
    full-size arrays) took 0.65 s and 400 MB on a full-size CT."""
    confidence *= CONFIDENCE_STEPS
    np.rint(confidence, out=confidence)
    confidence /= CONFIDENCE_STEPS
    return confidence


def quantised_confidence(confidence: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """The confidence map (quantised already, :func:`quantise_confidence`) as an image on
    ``reference``'s grid."""
    img = sitk.GetImageFromArray(confidence)
    img.CopyInformation(reference)
    return img


def region_layer(regions: list[dict], reference: sitk.Image, card) -> tuple[sitk.Image, list[Label]]:
    """The regions as one labelmap layer, each box in its organ's colour; where two boxes overlap
    the later wins (a layer per box costs seconds each on a full-size CT)."""
    colors = {lab.value: lab.color for lab in card.labels}
    boxes = np.zeros(reference.GetSize()[::-1], dtype=np.uint8 if len(regions) < 255 else np.uint16)
    labels = []
    for k, r in enumerate(regions):
        boxes[box_mask(reference, r["box_index"])] = k + 1
        labels.append(Label(k + 1, f"{r['label']} region {k + 1}", colors.get(r["value"], (0.5, 0.5, 0.5)),
                            project_terminology(SMALL_ORGAN_REGION_CODE)))
    img = sitk.GetImageFromArray(boxes)
    img.CopyInformation(reference)
    return img, labels


def _voxel_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0
