"""What the fine-tuning tests share: the phantom model, an edited phantom, a prediction."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from medseg_core.models import find_model

MODEL = "phantom-unet"
TUMOUR, RIGHT_GLAND = 3, 5


def dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for ax in range(3):
        out |= np.roll(mask, 1, ax) | np.roll(mask, -1, ax)
    return out


def edited_phantom(ph) -> sitk.Image:
    """The phantom's label with the Tumour grown by 2 voxels into the liver."""
    lab = sitk.GetArrayFromImage(ph.label)
    grown = dilate(dilate(lab == TUMOUR)) & (lab == 1)
    out = lab.copy()
    out[grown] = TUMOUR
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(ph.label)
    return img


def predict(model: str, image: sitk.Image) -> np.ndarray:
    from medseg_core.inference.predictor import Predictor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return sitk.GetArrayFromImage(Predictor(find_model(model), device="cpu").predict([image]).labels)
    finally:
        torch.set_num_threads(threads)
