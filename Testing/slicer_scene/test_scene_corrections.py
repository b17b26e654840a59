"""Corrections made in Slicer, as the engine reads them for fine-tuning, and a scene saved as .mrb."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scene_helpers import (DIRECTIONS, NAMES, TRANSFORMS, edit_tumour, load_case, same_points, segment_world_points,
                           sitk_world_points, under_transform, volume_world_points, world_matrix)

from medseg_core.data.phantom import PHANTOM_LABELS


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_an_edit_exported_for_finetuning_reaches_the_engine_voxel_for_voxel(mrml, cases, phantom_model, direction,
                                                                           transform, tmp_path):
    import slicer
    from SlicerMedSegLib import SceneLoader

    from medseg_core.io.corrections import read_correction
    from medseg_core.io import read_image
    from medseg_core.models import find_model

    volume, _, loaded = load_case(cases[direction], TRANSFORMS[transform], phantom_model)
    seg = loaded.segmentationNode
    seg.GetSegmentation().AddEmptySegment("my notes", "my notes")  # the user's own segment: left out
    edit = edit_tumour(seg, volume)

    image_path = SceneLoader.writeVolume(volume, tmp_path / "image.nrrd")
    written = SceneLoader.writeCorrection(seg, volume, phantom_model.labelNames, str(tmp_path / "correction.seg.nrrd"))
    assert written == NAMES
    reference = read_image(image_path)
    label, annotated = read_correction(tmp_path / "correction.seg.nrrd", reference, find_model("phantom-unet").card)
    assert annotated == [lab.value for lab in PHANTOM_LABELS]
    values = sitk.GetArrayFromImage(label)
    to_world = world_matrix(volume)
    # the tumour the engine trains on is the edit, voxel for voxel (in world RAS)
    assert same_points(sitk_world_points(label, values == 3, to_world), volume_world_points(volume, edit > 0))
    # and every other label is Slicer's segment on the input grid (the later segment wins an overlap)
    taken = edit > 0
    for lab in reversed(PHANTOM_LABELS):
        if lab.name == "Tumour":
            continue
        array = slicer.util.arrayFromSegmentBinaryLabelmap(
            seg, seg.GetSegmentation().GetSegmentIdBySegmentName(lab.name), volume) > 0
        mine = array & ~taken
        taken |= array
        assert same_points(sitk_world_points(label, values == lab.value, to_world),
                            volume_world_points(volume, mine)), (lab.name, direction, transform)
    # nothing was left in the scene
    assert not slicer.mrmlScene.GetFirstNodeByName("MedSeg correction export")


def test_a_correction_under_another_transform_than_its_volume_is_refused(mrml, cases, phantom_model, tmp_path):
    import slicer
    from SlicerMedSegLib import SceneLoader

    volume, _, loaded = load_case(cases["identity"], TRANSFORMS["rotated"], phantom_model)
    seg = loaded.segmentationNode
    other = under_transform(seg, TRANSFORMS["translated"])
    with pytest.raises(ValueError, match="different transforms"):
        SceneLoader.writeCorrection(seg, volume, phantom_model.labelNames, str(tmp_path / "c.seg.nrrd"))
    assert not (tmp_path / "c.seg.nrrd").exists() and other is not None
    assert not slicer.mrmlScene.GetFirstNodeByName("MedSeg correction export")


def test_a_scene_saved_as_mrb_and_read_again_keeps_the_result_its_references_and_display(mrml, cases, phantom_model,
                                                                                        tmp_path):
    import slicer
    from SlicerMedSegLib import SceneLoader

    volume, study, loaded = load_case(cases["oblique-left-handed"], TRANSFORMS["rotated"], phantom_model)
    seg = loaded.segmentationNode
    voxels = {name: segment_world_points(seg, name) for name in NAMES}
    confidence = slicer.util.arrayFromVolume(loaded.confidenceNode).copy()
    rois = sorted((roi.GetName(), roi.GetAttribute("MedSeg.Label")) for roi in loaded.roiNodes)

    # what Slicer's "Save scene as .mrb" does: the bundle folder, then the zip
    application = slicer.app.applicationLogic()
    (tmp_path / "bundle").mkdir()
    assert application.SaveSceneToSlicerDataBundleDirectory(str(tmp_path / "bundle"), None)
    assert application.Zip(str(tmp_path / "scene.mrb"), str(tmp_path / "bundle"))
    slicer.mrmlScene.Clear(0)
    (tmp_path / "opened").mkdir()
    assert application.OpenSlicerDataBundle(str(tmp_path / "scene.mrb"), str(tmp_path / "opened"))

    seg = slicer.mrmlScene.GetFirstNodeByName("phantom phantom-unet")
    assert seg is not None and seg.IsA("vtkMRMLSegmentationNode")
    segmentation = seg.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == \
        NAMES + [SceneLoader.LOW_CONFIDENCE]
    for name in NAMES:
        assert same_points(segment_world_points(seg, name), voxels[name]), name
    volume = seg.GetNodeReference(SceneLoader.ROLE_INPUT)
    assert volume is not None and volume.GetName() == "phantom"
    np.testing.assert_allclose(world_matrix(seg), TRANSFORMS["rotated"], atol=1e-9)
    assert seg.GetParentTransformNode() is volume.GetParentTransformNode()
    assert seg.GetAttribute(SceneLoader.ATTR_MODEL) == "phantom-unet"
    # display kept: "Low confidence" as an outline, the confidence overlay and its colours
    lowId = segmentation.GetSegmentIdBySegmentName(SceneLoader.LOW_CONFIDENCE)
    assert seg.GetDisplayNode().GetSegmentOpacity2DFill(lowId) == 0.0
    conf = seg.GetNodeReference(SceneLoader.ROLE_CONFIDENCE)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(conf), confidence)
    display = conf.GetDisplayNode()
    assert display.GetColorNode().GetName() == SceneLoader.CONFIDENCE_COLOR_NODE_NAME
    assert display.GetApplyThreshold() and display.GetUpperThreshold() == pytest.approx(SceneLoader.CONFIDENCE_SHOWN_BELOW)
    roiNodes = [seg.GetNthNodeReference(SceneLoader.ROLE_ROI, i)
                for i in range(seg.GetNumberOfNodeReferences(SceneLoader.ROLE_ROI))]
    assert sorted((roi.GetName(), roi.GetAttribute("MedSeg.Label")) for roi in roiNodes) == rois
    # still in the input's study
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = sh.GetItemParent(sh.GetItemByDataNode(volume))
    assert sh.GetItemName(study) == "CT study" and sh.GetItemParent(sh.GetItemByDataNode(seg)) == study
    assert sh.GetItemParent(sh.GetItemByDataNode(conf)) == study
