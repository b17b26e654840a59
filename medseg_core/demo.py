"""``medseg demo``: segment a freshly generated phantom with the bundled phantom model.

Writes the phantom, its ground truth and the usual ``segment`` outputs to the output folder,
prints Dice per label against the truth and saves ``STEM_overlay.png``: an axial slice, the
truth on the left and the prediction on the right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .data.phantom import make_phantom
from .io import atomic_output, write_image, write_labelmap
from .metrics import dice
from .segment import segment_files

DEMO_MODEL = "phantom-unet"
WINDOW = (-160.0, 240.0)  # soft-tissue window, HU


def overlay_png(image: sitk.Image, labels: list[sitk.Image], colors: dict[int, tuple], path: Path,
                zoom: int = 4) -> int:
    """Save an axial slice with each labelmap overlaid, side by side; returns the slice index."""
    from PIL import Image

    img = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS")).astype(np.float32)
    labs = [sitk.GetArrayFromImage(sitk.DICOMOrient(lab, "LPS")) for lab in labels]
    fg = (labs[0] > 0).sum(axis=(1, 2)) + 4 * np.isin(labs[0], [v for v in colors if v >= 3]).sum(axis=(1, 2))
    z = int(np.argmax(fg))
    gray = np.clip((img[z] - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0, 1)
    panels = []
    for lab in labs:
        rgb = np.repeat(gray[..., None], 3, axis=2)
        for v, c in colors.items():
            m = lab[z] == v
            rgb[m] = 0.45 * rgb[m] + 0.55 * np.asarray(c)
        panels.append(rgb)
        panels.append(np.ones((gray.shape[0], 2, 3)))
    canvas = np.concatenate(panels[:-1], axis=1)[::-1]  # LPS rows run posterior; show anterior up
    pil = Image.fromarray((canvas * 255).astype(np.uint8))
    pil = pil.resize((pil.width * zoom, pil.height * zoom), Image.NEAREST)
    with atomic_output(path) as tmp:
        pil.save(tmp, format="PNG")
    return z


def run_demo(output: str | Path = "demo_output", device: str = "auto", seed: int = 2024) -> dict[str, float]:
    """Generate, segment, score, draw. Returns Dice per label name."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    ph = make_phantom(seed=seed)
    image_path, truth_path = out / "phantom.nii.gz", out / "phantom_truth.nii.gz"
    write_image(ph.image, image_path)
    write_labelmap(ph.label, truth_path)
    print(f"phantom {ph.image.GetSize()} voxels of {tuple(round(s, 2) for s in ph.image.GetSpacing())} mm "
          f"(seed {seed}) -> {image_path}")
    report = segment_files([image_path], DEMO_MODEL, out, device=device, overwrite=True)[0]
    pred = sitk.ReadImage(report["outputs"]["labels"])
    p, t = sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(ph.label)
    scores = {}
    print(f"segmented with {report['model']} {report['version']} on {report['device']} in "
          f"{report['seconds']['total']:.2f} s")
    print(f"{'label':12s} {'Dice':>6s} {'volume ml':>10s}")
    for lab in ph.labels:
        scores[lab.name] = dice(p == lab.value, t == lab.value)
        print(f"{lab.name:12s} {scores[lab.name]:6.3f} {report['volumes_ml'].get(lab.name, 0.0):10.2f}")
    print(f"{'mean':12s} {np.nanmean(list(scores.values())):6.3f}")
    png = out / "phantom_overlay.png"
    z = overlay_png(ph.image, [ph.label, pred], {lab.value: lab.color for lab in ph.labels}, png)
    print(f"overlay of axial slice {z} (truth left, prediction right) -> {png}")
    print(f"open {report['outputs']['segmentation']} in 3D Slicer with {image_path}")
    return scores
