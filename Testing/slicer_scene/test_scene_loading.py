"""The engine's outputs loaded into a real MRML scene: where every voxel lands, names, colours and
terminology, the confidence overlay, the region ROIs, the show options, the .seg.nrrd alone."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scene_helpers import (DIRECTIONS, NAMES, TRANSFORMS, grid_corners, ijk_to_ras, load_case, load_volume,
                           reference_geometry, resolve_in_context, same_points, segment_world_points, sitk_world_points,
                           transform_points, volume_world_points, world_matrix)
from scipy import ndimage

from medseg_core.data.phantom import PHANTOM_LABELS


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_every_segment_voxel_lands_on_the_labelmaps_voxel_in_world_ras(mrml, cases, phantom_model, direction,
                                                                      transform):
    import slicer

    case = cases[direction]
    volume, study, loaded = load_case(case, TRANSFORMS[transform], phantom_model)
    seg = loaded.segmentationNode
    labels = sitk.ReadImage(case["outputs"]["labels"])
    values = sitk.GetArrayFromImage(labels)
    to_world = world_matrix(volume)
    for label in PHANTOM_LABELS:
        expected = sitk_world_points(labels, values == label.value, to_world)
        assert len(expected) > 0, label.name
        assert same_points(segment_world_points(seg, label.name), expected), (direction, transform, label.name)

    # the reference geometry is the input's grid, in the same frame (the segmentation shares its transform)
    assert seg.GetParentTransformNode() is volume.GetParentTransformNode()
    matrix, extent = reference_geometry(seg)
    np.testing.assert_allclose(matrix, ijk_to_ras(volume), atol=1e-6)
    assert extent == list(volume.GetImageData().GetExtent())

    # the result sits in the input's study
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study


def test_results_load_with_names_colours_and_terminology_that_resolves_in_slicer(mrml, cases, phantom_model):
    import slicer
    from SlicerMedSegLib import SceneLoader

    _, _, loaded = load_case(cases["oblique-left-handed"], None, phantom_model)
    seg = loaded.segmentationNode
    segmentation = seg.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == NAMES + [SceneLoader.LOW_CONFIDENCE]
    logic = slicer.modules.terminologies.logic()
    meanings = {}
    for i, name in enumerate(names):
        segment = segmentation.GetNthSegment(i)
        if name in phantom_model.labelColors:
            np.testing.assert_allclose(segment.GetColor(), phantom_model.labelColors[name][:3], atol=1e-3)
        meanings[name] = resolve_in_context(logic, segment.GetTerminology())
    assert meanings["Liver"] == ("Anatomical Structure", "Liver", None)
    assert meanings["LeftGland"][2] == "Left" and meanings["RightGland"][2] == "Right"
    assert meanings["Tumour"][1] == "Mass"
    assert meanings[SceneLoader.LOW_CONFIDENCE][1] == "Low confidence"
    # "Low confidence" is an outline only, hidden in 3D
    display = seg.GetDisplayNode()
    lowId = segmentation.GetSegmentIdBySegmentName(SceneLoader.LOW_CONFIDENCE)
    assert display.GetSegmentOpacity2DFill(lowId) == 0.0 and not display.GetSegmentVisibility3D(lowId)
    assert seg.GetAttribute(SceneLoader.ATTR_MODEL) == "phantom-unet"
    assert seg.GetAttribute(SceneLoader.ATTR_MODEL_VERSION) == phantom_model.version


@pytest.mark.parametrize("transform", ["none", "rotated"])
def test_confidence_volume_lies_on_the_input_grid_and_is_shown_as_an_overlay(mrml, cases, phantom_model, transform):
    import slicer
    from SlicerMedSegLib import SceneLoader

    case = cases["oblique-left-handed"]
    volume, study, loaded = load_case(case, TRANSFORMS[transform], phantom_model)
    conf = loaded.confidenceNode
    assert conf is not None and loaded.segmentationNode.GetNodeReference(SceneLoader.ROLE_CONFIDENCE) is conf
    # same voxels, in world RAS, as the engine's file; values in [0, 1]
    engine = sitk.ReadImage(case["outputs"]["confidence"])
    values = sitk.GetArrayFromImage(engine)
    low = values < 0.5
    assert low.any()
    in_slicer = slicer.util.arrayFromVolume(conf)
    assert 0.0 <= in_slicer.min() and in_slicer.max() <= 1.0
    assert same_points(volume_world_points(conf, in_slicer < 0.5),
                        sitk_world_points(engine, low, world_matrix(volume)))
    display = conf.GetDisplayNode()
    assert display.GetColorNode().GetName() == SceneLoader.CONFIDENCE_COLOR_NODE_NAME
    assert display.GetApplyThreshold() and display.GetUpperThreshold() == pytest.approx(SceneLoader.CONFIDENCE_SHOWN_BELOW)
    assert (display.GetWindow(), display.GetLevel()) == (pytest.approx(1.0), pytest.approx(0.5))
    for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        assert composite.GetForegroundVolumeID() == conf.GetID()
        assert composite.GetBackgroundVolumeID() == volume.GetID()
    legend = slicer.modules.colors.logic().GetColorLegendDisplayNode(conf)
    assert legend is not None and legend.GetTitleText() == "Confidence" and legend.GetVisibility()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    assert sh.GetItemParent(sh.GetItemByDataNode(conf)) == study


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("direction", ["identity", "oblique-left-handed"])
def test_region_rois_enclose_their_organs_voxels(mrml, cases, phantom_model, direction, transform):
    """The organ's voxels (not the bounds of the shared labelmap layer) lie inside its ROI."""
    import slicer

    volume, _, loaded = load_case(cases[direction], TRANSFORMS[transform], phantom_model)
    seg = loaded.segmentationNode
    rois = {}
    for roi in loaded.roiNodes:
        rois.setdefault(roi.GetAttribute("MedSeg.Label"), []).append(roi)
    assert set(rois) == {"LeftGland", "RightGland"}
    for label, nodes in rois.items():
        points = segment_world_points(seg, label)
        # the largest connected component of the organ, in the volume's own voxels
        array = slicer.util.arrayFromSegmentBinaryLabelmap(seg, seg.GetSegmentation().GetSegmentIdBySegmentName(label),
                                                           volume)
        components, count = ndimage.label(array > 0)
        largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
        organ = volume_world_points(volume, components == largest)
        assert len(organ) > 10 and len(points) >= len(organ)
        roi = nodes[0]  # regions are listed largest first
        assert roi.GetParentTransformNode() is volume.GetParentTransformNode()
        np.testing.assert_allclose(roi.GetDisplayNode().GetSelectedColor(), phantom_model.labelColors[label][:3],
                                   atol=1e-6)
        local = transform_points(np.linalg.inv(world_matrix(roi)), organ)  # into the ROI's own frame
        center = [0.0] * 3
        roi.GetCenter(center)
        size = list(roi.GetSize())
        lo, hi = np.array(center) - np.array(size) / 2, np.array(center) + np.array(size) / 2
        assert (local >= lo - 1e-3).all() and (local <= hi + 1e-3).all(), (label, direction, transform)
        # and the box is tight: within two voxels of the organ on every side
        spacing = max(volume.GetSpacing())
        assert (local.min(axis=0) - lo < 2 * spacing + 1e-3).all() and (hi - local.max(axis=0) < 2 * spacing + 1e-3).all()


def test_the_regions_and_the_overlay_follow_the_panels_show_options(mrml, cases, phantom_model):
    import slicer
    from SlicerMedSegLib import SceneLoader

    volume, _, loaded = load_case(cases["identity"], None, phantom_model, showRegions=False, showConfidence=False)
    seg = loaded.segmentationNode
    assert loaded.roiNodes and not any(roi.GetDisplayVisibility() for roi in loaded.roiNodes)
    assert not loaded.regionsSegmentationNode.GetDisplayVisibility()
    assert not slicer.modules.colors.logic().GetColorLegendDisplayNode(loaded.confidenceNode).GetVisibility()
    for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        assert slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode").GetForegroundVolumeID() is None
    SceneLoader.setRegionsVisible(seg, True)  # the "show small-organ regions" box ticked
    assert all(roi.GetDisplayVisibility() for roi in loaded.roiNodes)
    assert loaded.regionsSegmentationNode.GetDisplayVisibility()
    assert seg.GetNodeReference(SceneLoader.ROLE_REGIONS) is loaded.regionsSegmentationNode
    SceneLoader.setRegionsVisible(seg, False)
    assert not any(roi.GetDisplayVisibility() for roi in loaded.roiNodes)
    # the box segments carry the project's region code
    boxes = loaded.regionsSegmentationNode.GetSegmentation()
    entry = slicer.vtkSlicerTerminologyEntry()
    slicer.modules.terminologies.logic().DeserializeTerminologyEntry(boxes.GetNthSegment(0).GetTerminology(), entry)
    assert entry.GetTypeObject().GetCodeMeaning() == "Small-organ region"


def test_the_seg_nrrd_alone_puts_slicer_on_the_input_grid(mrml, cases):
    """Read without the module (Slicer's Add Data): the file's reference geometry is the input's grid."""
    import slicer

    for name, case in cases.items():
        volume = load_volume(case["source"], name)
        seg = slicer.modules.segmentations.logic().LoadSegmentationFromFile(case["outputs"]["segmentation"], False,
                                                                             name)
        matrix, extent = reference_geometry(seg)
        # the same voxel centres (Slicer's reader may order a left-handed volume's k axis the other way)
        assert same_points(grid_corners(matrix, extent),
                            grid_corners(ijk_to_ras(volume), volume.GetImageData().GetExtent())), name
        np.testing.assert_allclose(np.linalg.norm(matrix[:3, :3], axis=0), volume.GetSpacing(), rtol=1e-9)
