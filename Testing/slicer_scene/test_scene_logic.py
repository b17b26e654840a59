"""The module's logic end to end in a real scene: segment (event loop and blocking, Cancel),
fine-tune, a markups ROI over a rotated volume, the modality warning, and the in-Slicer test file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scene_helpers import (REPO, TRANSFORMS, edit_tumour, in_study, load_volume, pump_until, segment_world_points,
                           sitk_world_points, transform_points, under_transform, world_matrix)


def test_segment_and_finetune_through_the_logic_under_a_rotated_transform(mrml, cases, make_logic):
    import slicer
    from slicer_core_app import QTimer
    from SlicerMedSegLib import SceneLoader
    from SlicerMedSegLib.Parameters import FinetuneParameters, SegmentationParameters

    logic = make_logic()
    # the event-loop mode (the panel): a QTimer drains the runner; the model list first
    job = logic.listModels(wait=False)
    assert QTimer.active and not job.done
    assert pump_until(job).ok and "phantom-unet" in [m.name for m in logic.models]

    case = cases["oblique-left-handed"]
    volume = load_volume(case["source"], "phantom")
    study = in_study(volume)
    under_transform(volume, TRANSFORMS["rotated"])
    before = slicer.util.arrayFromVolume(volume).copy()
    nodes_before = slicer.mrmlScene.GetNumberOfNodes()

    # Cancel in the event-loop mode: nothing loaded, the temporary files gone
    finished = []
    job = logic.segment(volume, SegmentationParameters(model="phantom-unet", device="cpu", tta=True), wait=False,
                        on_finished=finished.append)
    assert logic.busy
    with pytest.raises(RuntimeError, match="already running"):
        logic.segment(volume, SegmentationParameters(model="phantom-unet"), wait=False)
    logic.cancel()
    outcome = pump_until(job, timeout=5.0)
    assert outcome.cancelled and not outcome.ok and finished == [outcome] and not logic.busy
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before and not os.path.exists(job.tempDir)

    # the blocking mode (batch scripts, tests): the same call with wait=True
    events = []
    outcome = logic.segment(volume, SegmentationParameters(model="phantom-unet", device="cpu"), wait=True,
                            on_event=events.append)
    assert outcome.ok, outcome.error
    assert events[0].source == "command" and '"device": "cpu"' in events[0].message and events[-1].kind == "result"
    assert not os.path.exists(logic.job.tempDir)
    seg = outcome.segmentationNode
    assert seg.GetName() == "phantom phantom-unet" and seg.GetParentTransformNode() is volume.GetParentTransformNode()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study
    # the liver lands on the truth (both on the volume's grid as Slicer reads it)
    truth_path = Path(str(case["source"]).replace(".nii.gz", "_truth.nii.gz"))
    sitk.WriteImage(case["phantom"].label, str(truth_path))
    truth = slicer.modules.volumes.logic().AddArchetypeVolume(str(truth_path), "truth", 1)
    truth_array = slicer.util.arrayFromVolume(truth) == 1
    liver = slicer.util.arrayFromSegmentBinaryLabelmap(seg, seg.GetSegmentation().GetSegmentIdBySegmentName("Liver"),
                                                       volume) > 0
    assert 2 * (liver & truth_array).sum() / (liver.sum() + truth_array.sum()) > 0.9
    slicer.mrmlScene.RemoveNode(truth)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)  # the input is untouched

    # fine-tune on the edited result, blocking; the new model is listed
    edit_tumour(seg, volume)
    events = []
    result = logic.finetune(seg, volume, FinetuneParameters(steps=2, name="phantom-edited", device="cpu"), wait=True,
                            on_event=events.append)
    assert result.ok, result.error
    assert result.model == "phantom-edited" and result.diceBefore is not None and result.diceAfter is not None
    assert "finetune" in [e.stage for e in events if e.kind == "stage"]
    assert "phantom-edited" in [m.name for m in logic.listModels(wait=True)]
    assert seg.GetAttribute(SceneLoader.ATTR_MODEL) == "phantom-unet"  # the result keeps its parent model


def test_segment_inside_a_markups_roi_drawn_in_world_space_over_a_rotated_volume(mrml, cases, make_logic):
    """The ROI the user draws (world RAS) becomes the ``--roi`` box in the volume's own LPS frame:
    the engine labels only voxels inside it, and labels there what a full run labels."""
    import slicer
    from SlicerMedSegLib.Parameters import SegmentationParameters
    from SlicerMedSegLib.SegmentationLogic import SegmentationLogic

    case = cases["identity"]
    volume = load_volume(case["source"], "phantom")
    under_transform(volume, TRANSFORMS["rotated"])
    to_world = world_matrix(volume)
    full = sitk.ReadImage(case["outputs"]["labels"])
    full_values = sitk.GetArrayFromImage(full)
    liver_world = sitk_world_points(full, full_values == 1, to_world)
    # a world box around the lower half of the liver, axis-aligned in world (as the user draws it)
    lo, hi = liver_world.min(axis=0), liver_world.max(axis=0)
    centre = (lo + hi) / 2
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter(*(centre - [0, 0, (hi[2] - lo[2]) / 4]))
    roi.SetSize(*((hi - lo) * [1.0, 1.0, 0.3]))

    box = SegmentationLogic.roiBoxLPS(roi, volume)
    # the box is the bounding box, in the volume's own frame, of the ROI's eight corners
    center, size = np.array(roi.GetCenter()), np.array(roi.GetSize())
    corners = np.array([center + size / 2 * [sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    local_ras = transform_points(np.linalg.inv(to_world), corners)
    local_lps = local_ras * [-1, -1, 1]
    np.testing.assert_allclose(box, list(local_lps.min(axis=0)) + list(local_lps.max(axis=0)), atol=1e-6)

    logic = make_logic()
    outcome = logic.segment(volume, SegmentationParameters(model="phantom-unet", device="cpu"), roiNode=roi,
                            wait=True)
    assert outcome.ok, outcome.error
    seg = outcome.segmentationNode
    inside = transform_points(np.linalg.inv(to_world), segment_world_points(seg, "Liver")) * [-1, -1, 1]  # local LPS
    assert len(inside) > 100
    margin = max(volume.GetSpacing())
    assert (inside >= np.array(box[:3]) - margin).all() and (inside <= np.array(box[3:]) + margin).all()
    # the box cut the liver: a full run labels liver outside it
    full_local = transform_points(np.linalg.inv(to_world), liver_world) * [-1, -1, 1]
    outside = (full_local < np.array(box[:3]) - margin).any(axis=1) | (full_local > np.array(box[3:]) + margin).any(axis=1)
    assert outside.sum() > 100


def test_the_modality_warning_reads_the_volume_through_slicer(mrml, cases, make_logic):
    import slicer

    logic = make_logic()
    logic.listModels(wait=True)
    ct = load_volume(cases["oblique-left-handed"]["source"], "ct")
    assert logic.modalityWarning(ct, "phantom-unet") == ""
    # the same voxels rescaled to positive arbitrary units, as an MRI would come
    mr = slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, ct, "mr-like")
    array = slicer.util.arrayFromVolume(mr)
    array[:] = (array - array.min()) // 4
    slicer.util.arrayFromVolumeModified(mr)
    assert "Hounsfield" in logic.modalityWarning(mr, "phantom-unet")
    assert logic.modalityWarning(None, "phantom-unet") == "" and logic.modalityWarning(ct, "no-such-model") == ""


def test_the_in_slicer_test_file_runs_here_as_far_as_it_needs_no_qt(mrml, monkeypatch):
    import importlib.util
    import unittest

    path = REPO / "SlicerMedSeg" / "Testing" / "Python" / "SlicerMedSegModuleTest.py"
    spec = importlib.util.spec_from_file_location("SlicerMedSegModuleTest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = [name for name in module.TESTS if name not in module.NEEDS_QT]
    assert set(names) | set(module.NEEDS_QT) == {n for n in dir(module.SlicerMedSegModuleTest) if n.startswith("test_")}
    suite = unittest.TestSuite(module.SlicerMedSegModuleTest(name) for name in names)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    assert result.wasSuccessful() and result.testsRun == len(names) == 4, result.failures + result.errors
