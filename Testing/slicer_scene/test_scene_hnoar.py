"""A real head-and-neck CT (../shared/data/HNOAR), where the anatomy must land."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scene_helpers import (HNOAR, TRANSFORMS, in_study, installed_models, load_volume, resolve_in_context, same_points,
                           segment_world_points, sitk_world_points, under_transform, volume_world_points, world_matrix)


@pytest.mark.skipif(not (HNOAR / "imagesTr" / "hn_201_0000.nii.gz").is_file(),
                    reason="the HNOAR data set (../shared/data/HNOAR) is not here")
def test_a_real_head_and_neck_ct_under_a_rotated_transform(mrml, tmp_path):
    """hn_201 (every organ contoured; voxel axes anterior-posterior, right-left, superior-inferior)
    segmented by the default model and loaded under a rotated transform: voxels in world RAS,
    terminology that resolves for every organ, organs where the clinical contours are, and an
    edit exported for fine-tuning unchanged."""
    import subprocess

    import slicer
    from SlicerMedSegLib import Commands, SceneLoader

    from medseg_core.io.corrections import read_correction
    from medseg_core.io import read_image
    from medseg_core.models import find_model

    model = installed_models()["hn-oar-unet"]  # what the default "hn-oar" names
    volume = load_volume(HNOAR / "imagesTr" / "hn_201_0000.nii.gz", "hn_201")
    study = in_study(volume)
    under_transform(volume, TRANSFORMS["rotated"])
    written = SceneLoader.writeVolume(volume, tmp_path / "input.nrrd")
    env = Commands.child_environment("cpu", base=os.environ)
    subprocess.run([sys.executable, "-m", "medseg_core", "segment", written, "--model", "hn-oar", "--output",
                    str(tmp_path / "out"), "--device", "cpu", "--progress", "none"], check=True, env=env,
                   capture_output=True)
    stem = tmp_path / "out" / "input"
    outputs = {"segmentation": f"{stem}.seg.nrrd", "labels": f"{stem}_labels.nii.gz",
               "confidence": f"{stem}_confidence.nii.gz", "rois": f"{stem}_rois.json",
               "rois_segmentation": f"{stem}_rois.seg.nrrd", "report": f"{stem}_report.json"}
    loaded = SceneLoader.loadSegmentResults(outputs, volume, model.name, model.version, model.labelColors)
    seg = loaded.segmentationNode
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study

    labels = sitk.ReadImage(outputs["labels"])
    values = sitk.GetArrayFromImage(labels)
    truth_node = slicer.modules.volumes.logic().AddArchetypeVolume(str(HNOAR / "labelsTr" / "hn_201.nii.gz"),
                                                                    "truth", 1)
    truth = slicer.util.arrayFromVolume(truth_node).copy()
    logic = slicer.modules.terminologies.logic()
    segmentation = seg.GetSegmentation()
    for label in model.labels:
        name, value = label["name"], int(label["value"])
        assert same_points(segment_world_points(seg, name),
                            sitk_world_points(labels, values == value, world_matrix(volume))), name
        meaning = resolve_in_context(logic, segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
                                      .GetTerminology())
        assert meaning[1] in ("Brain stem", "Spinal cord", "Parotid gland", "Esophagus", "Larynx", "Mandible"), meaning
        mine = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetSegmentIdBySegmentName(name), volume) > 0
        dice = 2 * (mine & (truth == value)).sum() / (mine.sum() + (truth == value).sum())
        assert dice > 0.4, (name, dice)  # on the clinical contour, not mirrored or shifted
    assert resolve_in_context(logic, segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("LeftParotid"))
                               .GetTerminology())[2] == "Left"

    # an edit of the mandible, exported for fine-tuning, reaches the engine unchanged
    mandibleId = segmentation.GetSegmentIdBySegmentName("Mandible")
    mandible = slicer.util.arrayFromSegmentBinaryLabelmap(seg, mandibleId, volume)
    ks = np.nonzero(mandible.any(axis=(1, 2)))[0]
    mandible[ks[: len(ks) // 3]] = 0
    slicer.util.updateSegmentBinaryLabelmapFromArray(mandible, seg, mandibleId, volume)
    SceneLoader.writeCorrection(seg, volume, model.labelNames, str(tmp_path / "correction.seg.nrrd"))
    label, _ = read_correction(tmp_path / "correction.seg.nrrd", read_image(written), find_model("hn-oar").card)
    mandible_value = next(int(lab["value"]) for lab in model.labels if lab["name"] == "Mandible")
    assert same_points(sitk_world_points(label, sitk.GetArrayFromImage(label) == mandible_value, world_matrix(volume)),
                        volume_world_points(volume, mandible > 0))
