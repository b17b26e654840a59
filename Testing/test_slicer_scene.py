"""The module's scene code against Slicer's own classes (slicer-core): the engine's outputs loaded
into a real MRML scene, edited and exported for fine-tuning, saved as ``.mrb`` and read back.

Every geometric check compares voxel centres in world RAS: the engine's labelmap read by
SimpleITK (LPS, flipped to RAS, moved by the volume's parent transform) against the voxels Slicer
holds (a segment's internal labelmap through its image-to-world matrix and its node's parent
transform). Slicer's reader reverses the k axis of a left-handed image, so voxel arrays of the two
libraries are never compared index by index.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer", reason="slicer-core is not installed (make test installs it)")
from scipy import ndimage  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from medseg_core.data.phantom import PHANTOM_LABELS, make_phantom  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAMES = [label.name for label in PHANTOM_LABELS]


def _rotation(axis, degrees) -> np.ndarray:
    axis = tuple(float(a) for a in np.asarray(axis, dtype=float) / np.linalg.norm(axis))
    return np.array(sitk.VersorTransform(axis, math.radians(degrees)).GetMatrix()).reshape(3, 3)


DIRECTIONS = {
    "identity": np.eye(3),
    "left-handed": np.diag([1.0, 1.0, -1.0]),  # k runs superior to inferior
    "oblique": _rotation([0.3, 0.2, 1.0], 25.0),
    "oblique-left-handed": _rotation([0.0, 0.0, 1.0], 10.0) @ np.diag([-1.0, 1.0, 1.0]),  # the phantom's own
}
TRANSFORMS = {
    "none": None,
    "translated": np.array([[1, 0, 0, 12.5], [0, 1, 0, -20.0], [0, 0, 1, 7.0], [0, 0, 0, 1]], dtype=float),
    "rotated": np.block([[_rotation([1.0, 0.5, 0.2], 30.0), np.array([[5.0], [-8.0], [15.0]])],
                         [np.zeros((1, 3)), np.ones((1, 1))]]),
}


# ---- helpers: geometry in world RAS ------------------------------------------------------------------
def _vtk_to_np(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _np_to_vtk(array):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


def _to_world(node) -> np.ndarray:
    """The node's local-to-world matrix (identity without a parent transform)."""
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(node.GetParentTransformNode(), None, matrix)
    return _vtk_to_np(matrix)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def _sitk_world_points(image: sitk.Image, mask_zyx: np.ndarray, to_world: np.ndarray) -> np.ndarray:
    """World RAS of the voxels where ``mask_zyx`` (SimpleITK's array order) is set."""
    ijk = np.argwhere(mask_zyx)[:, ::-1].astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps = ijk @ (direction * np.array(image.GetSpacing())).T + np.array(image.GetOrigin())
    return _apply(to_world, lps * np.array([-1.0, -1.0, 1.0]))


def _segment_world_points(segmentationNode, name: str) -> np.ndarray:
    """World RAS of the voxels Slicer holds for segment ``name`` (its own label value in its own
    layer, through the layer's image-to-world matrix and the node's parent transform)."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.GetSegmentIdBySegmentName(name)
    assert segmentId, f"no segment {name}"
    image = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId)
    extent = image.GetExtent()
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    if min(dims) <= 0:
        return np.zeros((0, 3))
    voxels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    ijk = np.argwhere(voxels == segmentation.GetSegment(segmentId).GetLabelValue())[:, ::-1]
    ijk = ijk + np.array(extent[0::2])
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    local = _apply(_vtk_to_np(matrix), ijk.astype(float))
    return _apply(_to_world(segmentationNode), local)


def _volume_world_points(volumeNode, mask_kji: np.ndarray) -> np.ndarray:
    """World RAS of the voxels set in ``mask_kji`` (Slicer's array order of ``volumeNode``)."""
    local = _apply(_ijk_to_ras(volumeNode), np.argwhere(mask_kji)[:, ::-1].astype(float))
    return _apply(_to_world(volumeNode), local)


def _same_points(a: np.ndarray, b: np.ndarray, tol: float = 1e-3) -> bool:
    if len(a) != len(b):
        return False
    if len(a) == 0:
        return True
    return cKDTree(b).query(a)[0].max() < tol and cKDTree(a).query(b)[0].max() < tol


def _ijk_to_ras(volumeNode) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return _vtk_to_np(matrix)


def _reference_geometry(segmentationNode) -> tuple[np.ndarray, list]:
    """The segmentation's reference image geometry (image-to-local matrix, extent), as Slicer holds it."""
    import slicer
    import vtk

    text = segmentationNode.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    assert text, f"{segmentationNode.GetName()} has no reference geometry"
    grid = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, grid, False)
    matrix = vtk.vtkMatrix4x4()
    grid.GetImageToWorldMatrix(matrix)
    return _vtk_to_np(matrix), list(grid.GetExtent())


def _grid_corners(ijk_to_ras: np.ndarray, extent) -> np.ndarray:
    corners = np.array([[i, j, k] for i in extent[0:2] for j in extent[2:4] for k in extent[4:6]], dtype=float)
    return _apply(ijk_to_ras, corners)


# ---- helpers: the scene -------------------------------------------------------------------------------
def _load_volume(path, name):
    import slicer

    node = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), name, 0)
    assert node is not None, path
    return node


def _in_study(volumeNode):
    """Put the volume in a patient/study, as DICOM loading does."""
    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "CT study")
    sh.SetItemParent(sh.GetItemByDataNode(volumeNode), study)
    return study


def _under_transform(node, matrix):
    import slicer

    if matrix is None:
        return None
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "patient position")
    transform.SetMatrixTransformToParent(_np_to_vtk(matrix))
    node.SetAndObserveTransformNodeID(transform.GetID())
    return transform


# ---- one engine run for every direction, shared by the tests -------------------------------------------
@pytest.fixture(scope="module")
def cases(slicer_app, tmp_path_factory):
    """For each direction: the phantom as a user's file, the volume Slicer writes for the child
    (``SceneLoader.writeVolume``), and ``medseg segment``'s outputs for it (one engine run)."""
    import subprocess

    from SlicerMedSegLib import Commands, SceneLoader

    tmp = tmp_path_factory.mktemp("scene_cases")
    out = {}
    inputs = []
    for i, (name, direction) in enumerate(DIRECTIONS.items()):
        phantom = make_phantom(seed=7 + i, direction=direction.ravel().tolist())
        source = tmp / f"{name}.nii.gz"
        sitk.WriteImage(phantom.image, str(source), True)
        slicer_app.scene.Clear(0)
        volume = _load_volume(source, name)
        written = SceneLoader.writeVolume(volume, tmp / f"{name}.nrrd")
        inputs.append(written)
        out[name] = {"source": source, "phantom": phantom, "written": Path(written)}
    slicer_app.scene.Clear(0)
    env = Commands.child_environment("cpu", base=os.environ)
    env["OMP_NUM_THREADS"] = "2"
    subprocess.run([sys.executable, "-m", "medseg_core", "segment", *inputs, "--model", "phantom-unet",
                    "--output", str(tmp / "out"), "--device", "cpu", "--progress", "none"],
                   check=True, env=env, capture_output=True)
    for name in out:
        stem = tmp / "out" / name
        out[name]["outputs"] = {"segmentation": f"{stem}.seg.nrrd", "labels": f"{stem}_labels.nii.gz",
                                "confidence": f"{stem}_confidence.nii.gz", "rois": f"{stem}_rois.json",
                                "rois_segmentation": f"{stem}_rois.seg.nrrd", "report": f"{stem}_report.json"}
        assert all(os.path.isfile(p) for p in out[name]["outputs"].values())
    return out


def _models():
    import subprocess

    from SlicerMedSegLib.Models import parse_models_json

    text = subprocess.run([sys.executable, "-m", "medseg_core", "models", "--json"], check=True,
                          capture_output=True, text=True).stdout
    return {m.name: m for m in parse_models_json(text)}


@pytest.fixture(scope="module")
def phantom_model(slicer_app):
    return _models()["phantom-unet"]


def _load_case(case, transform, model, **options):
    """The user's volume (in a study, under ``transform``) and the run's outputs loaded on it."""
    from SlicerMedSegLib import SceneLoader

    volume = _load_volume(case["source"], "phantom")
    study = _in_study(volume)
    _under_transform(volume, transform)
    loaded = SceneLoader.loadSegmentResults(case["outputs"], volume, model.name, model.version,
                                            model.labelColors, **options)
    return volume, study, loaded


# ---- tests ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_every_segment_voxel_lands_on_the_labelmaps_voxel_in_world_ras(mrml, cases, phantom_model, direction,
                                                                      transform):
    import slicer

    case = cases[direction]
    volume, study, loaded = _load_case(case, TRANSFORMS[transform], phantom_model)
    seg = loaded.segmentationNode
    labels = sitk.ReadImage(case["outputs"]["labels"])
    values = sitk.GetArrayFromImage(labels)
    to_world = _to_world(volume)
    for label in PHANTOM_LABELS:
        expected = _sitk_world_points(labels, values == label.value, to_world)
        assert len(expected) > 0, label.name
        assert _same_points(_segment_world_points(seg, label.name), expected), (direction, transform, label.name)

    # the reference geometry is the input's grid, in the same frame (the segmentation shares its transform)
    assert seg.GetParentTransformNode() is volume.GetParentTransformNode()
    matrix, extent = _reference_geometry(seg)
    np.testing.assert_allclose(matrix, _ijk_to_ras(volume), atol=1e-6)
    assert extent == list(volume.GetImageData().GetExtent())

    # the result sits in the input's study
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study


def _resolve_in_context(logic, terminology: str):
    """The (category, type, modifier) meanings of a serialized entry, found in the context it names
    among Slicer's loaded terminologies; raises AssertionError when something is not there."""
    import slicer

    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.DeserializeTerminologyEntry(terminology, entry), terminology
    context = entry.GetTerminologyContextName()
    category_code = entry.GetCategoryObject().GetCodeValue()
    type_code = entry.GetTypeObject().GetCodeValue()
    modifier_code = entry.GetTypeModifierObject().GetCodeValue()
    for c in range(logic.GetNumberOfCategoriesInTerminology(context)):
        category = slicer.vtkSlicerTerminologyCategory()
        logic.GetNthCategoryInTerminology(context, c, category)
        if category.GetCodeValue() != category_code:
            continue
        for t in range(logic.GetNumberOfTypesInTerminologyCategory(context, category)):
            type_ = slicer.vtkSlicerTerminologyType()
            logic.GetNthTypeInTerminologyCategory(context, category, t, type_)
            if type_.GetCodeValue() != type_code:
                continue
            if not modifier_code:
                return category.GetCodeMeaning(), type_.GetCodeMeaning(), None
            for m in range(logic.GetNumberOfTypeModifiersInTerminologyType(context, category, type_)):
                modifier = slicer.vtkSlicerTerminologyType()
                logic.GetNthTypeModifierInTerminologyType(context, category, type_, m, modifier)
                if modifier.GetCodeValue() == modifier_code:
                    return category.GetCodeMeaning(), type_.GetCodeMeaning(), modifier.GetCodeMeaning()
            raise AssertionError(f"modifier {modifier_code} of {type_code} not in {context!r}")
    raise AssertionError(f"{category_code}/{type_code} not in {context!r} (loaded: {terminology})")


def test_results_load_with_names_colours_and_terminology_that_resolves_in_slicer(mrml, cases, phantom_model):
    import slicer

    from SlicerMedSegLib import SceneLoader

    _, _, loaded = _load_case(cases["oblique-left-handed"], None, phantom_model)
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
        meanings[name] = _resolve_in_context(logic, segment.GetTerminology())
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
    volume, study, loaded = _load_case(case, TRANSFORMS[transform], phantom_model)
    conf = loaded.confidenceNode
    assert conf is not None and loaded.segmentationNode.GetNodeReference(SceneLoader.ROLE_CONFIDENCE) is conf
    # same voxels, in world RAS, as the engine's file; values in [0, 1]
    engine = sitk.ReadImage(case["outputs"]["confidence"])
    values = sitk.GetArrayFromImage(engine)
    low = values < 0.5
    assert low.any()
    in_slicer = slicer.util.arrayFromVolume(conf)
    assert 0.0 <= in_slicer.min() and in_slicer.max() <= 1.0
    assert _same_points(_volume_world_points(conf, in_slicer < 0.5),
                        _sitk_world_points(engine, low, _to_world(volume)))
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

    volume, _, loaded = _load_case(cases[direction], TRANSFORMS[transform], phantom_model)
    seg = loaded.segmentationNode
    rois = {}
    for roi in loaded.roiNodes:
        rois.setdefault(roi.GetAttribute("MedSeg.Label"), []).append(roi)
    assert set(rois) == {"LeftGland", "RightGland"}
    for label, nodes in rois.items():
        points = _segment_world_points(seg, label)
        # the largest connected component of the organ, in the volume's own voxels
        array = slicer.util.arrayFromSegmentBinaryLabelmap(seg, seg.GetSegmentation().GetSegmentIdBySegmentName(label),
                                                           volume)
        components, count = ndimage.label(array > 0)
        largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
        organ = _volume_world_points(volume, components == largest)
        assert len(organ) > 10 and len(points) >= len(organ)
        roi = nodes[0]  # regions are listed largest first
        assert roi.GetParentTransformNode() is volume.GetParentTransformNode()
        np.testing.assert_allclose(roi.GetDisplayNode().GetSelectedColor(), phantom_model.labelColors[label][:3],
                                   atol=1e-6)
        local = _apply(np.linalg.inv(_to_world(roi)), organ)  # into the ROI's own frame
        center = [0.0] * 3
        roi.GetCenter(center)
        size = list(roi.GetSize())
        lo, hi = np.array(center) - np.array(size) / 2, np.array(center) + np.array(size) / 2
        assert (local >= lo - 1e-3).all() and (local <= hi + 1e-3).all(), (label, direction, transform)
        # and the box is tight: within two voxels of the organ on every side
        spacing = max(volume.GetSpacing())
        assert (local.min(axis=0) - lo < 2 * spacing + 1e-3).all() and (hi - local.max(axis=0) < 2 * spacing + 1e-3).all()


def _edit_tumour(seg, volume):
    """The user's correction: the upper half of the tumour was not tumour, and a blob of it was
    missed (in the background, so the edit overlaps no other segment). Returns the edited array."""
    import slicer

    tumourId = seg.GetSegmentation().GetSegmentIdBySegmentName("Tumour")
    tumour = slicer.util.arrayFromSegmentBinaryLabelmap(seg, tumourId, volume)
    zs = np.nonzero(tumour.any(axis=(1, 2)))[0]
    assert len(zs) >= 2
    tumour[zs[: len(zs) // 2]] = 0
    tumour[1:4, 1:5, 2:6] = 1  # a corner of the grid: air
    slicer.util.updateSegmentBinaryLabelmapFromArray(tumour, seg, tumourId, volume)
    return tumour


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_an_edit_exported_for_finetuning_reaches_the_engine_voxel_for_voxel(mrml, cases, phantom_model, direction,
                                                                           transform, tmp_path):
    import slicer

    from medseg_core.finetune import read_correction
    from medseg_core.io import read_image
    from medseg_core.models import find_model
    from SlicerMedSegLib import SceneLoader

    volume, _, loaded = _load_case(cases[direction], TRANSFORMS[transform], phantom_model)
    seg = loaded.segmentationNode
    seg.GetSegmentation().AddEmptySegment("my notes", "my notes")  # the user's own segment: left out
    edit = _edit_tumour(seg, volume)

    image_path = SceneLoader.writeVolume(volume, tmp_path / "image.nrrd")
    written = SceneLoader.writeCorrection(seg, volume, phantom_model.labelNames, str(tmp_path / "correction.seg.nrrd"))
    assert written == NAMES
    reference = read_image(image_path)
    label, annotated = read_correction(tmp_path / "correction.seg.nrrd", reference, find_model("phantom-unet").card)
    assert annotated == [lab.value for lab in PHANTOM_LABELS]
    values = sitk.GetArrayFromImage(label)
    to_world = _to_world(volume)
    # the tumour the engine trains on is the edit, voxel for voxel (in world RAS)
    assert _same_points(_sitk_world_points(label, values == 3, to_world), _volume_world_points(volume, edit > 0))
    # and every other label is Slicer's segment on the input grid (the later segment wins an overlap)
    taken = edit > 0
    for lab in reversed(PHANTOM_LABELS):
        if lab.name == "Tumour":
            continue
        array = slicer.util.arrayFromSegmentBinaryLabelmap(
            seg, seg.GetSegmentation().GetSegmentIdBySegmentName(lab.name), volume) > 0
        mine = array & ~taken
        taken |= array
        assert _same_points(_sitk_world_points(label, values == lab.value, to_world),
                            _volume_world_points(volume, mine)), (lab.name, direction, transform)
    # nothing was left in the scene
    assert not slicer.mrmlScene.GetFirstNodeByName("MedSeg correction export")


# ---- the module's logic end to end: one call for the event loop, batch scripts and tests ---------------
def _pump_until(job, timeout=60.0):
    import time

    from slicer_core_app import process_events

    deadline = time.monotonic() + timeout
    while not job.done:
        assert time.monotonic() < deadline, "the job did not finish"
        process_events()
        time.sleep(0.05)
    return job.outcome


def test_segment_and_finetune_through_the_logic_under_a_rotated_transform(mrml, cases):
    import slicer

    from slicer_core_app import QTimer
    from SlicerMedSegLib import SceneLoader
    from SlicerMedSegLib.Parameters import FinetuneParameters, SegmentationParameters
    from SlicerMedSegLib.SegmentationLogic import SegmentationLogic

    logic = SegmentationLogic(str(REPO / "SlicerMedSeg"), installLogic=None, python=sys.executable)
    # the event-loop mode (the panel): a QTimer drains the runner; the model list first
    job = logic.listModels(wait=False)
    assert QTimer.active and not job.done
    assert _pump_until(job).ok and "phantom-unet" in [m.name for m in logic.models]

    case = cases["oblique-left-handed"]
    volume = _load_volume(case["source"], "phantom")
    study = _in_study(volume)
    _under_transform(volume, TRANSFORMS["rotated"])
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
    outcome = _pump_until(job, timeout=5.0)
    assert outcome.cancelled and not outcome.ok and finished == [outcome] and not logic.busy
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before and not os.path.exists(job.tempDir)

    # the blocking mode (batch scripts, tests): the same call with wait=True
    events = []
    outcome = logic.segment(volume, SegmentationParameters(model="phantom-unet", device="cpu"), wait=True,
                            on_event=events.append)
    assert outcome.ok, outcome.error
    assert events[0].source == "command" and "--device cpu" in events[0].message and events[-1].kind == "result"
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
    _edit_tumour(seg, volume)
    events = []
    result = logic.finetune(seg, volume, FinetuneParameters(steps=2, name="phantom-edited", device="cpu"), wait=True,
                            on_event=events.append)
    assert result.ok, result.error
    assert result.model == "phantom-edited" and result.diceBefore is not None and result.diceAfter is not None
    assert "finetune" in [e.stage for e in events if e.kind == "stage"]
    assert "phantom-edited" in [m.name for m in logic.listModels(wait=True)]
    assert seg.GetAttribute(SceneLoader.ATTR_MODEL) == "phantom-unet"  # the result keeps its parent model


def test_a_scene_saved_as_mrb_and_read_again_keeps_the_result_its_references_and_display(mrml, cases, phantom_model,
                                                                                        tmp_path):
    import slicer

    from SlicerMedSegLib import SceneLoader

    volume, study, loaded = _load_case(cases["oblique-left-handed"], TRANSFORMS["rotated"], phantom_model)
    seg = loaded.segmentationNode
    voxels = {name: _segment_world_points(seg, name) for name in NAMES}
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
        assert _same_points(_segment_world_points(seg, name), voxels[name]), name
    volume = seg.GetNodeReference(SceneLoader.ROLE_INPUT)
    assert volume is not None and volume.GetName() == "phantom"
    np.testing.assert_allclose(_to_world(seg), TRANSFORMS["rotated"], atol=1e-9)
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


def test_the_seg_nrrd_alone_puts_slicer_on_the_input_grid(mrml, cases):
    """Read without the module (Slicer's Add Data): the file's reference geometry is the input's grid."""
    import slicer

    for name, case in cases.items():
        volume = _load_volume(case["source"], name)
        seg = slicer.modules.segmentations.logic().LoadSegmentationFromFile(case["outputs"]["segmentation"], False,
                                                                             name)
        matrix, extent = _reference_geometry(seg)
        # the same voxel centres (Slicer's reader may order a left-handed volume's k axis the other way)
        assert _same_points(_grid_corners(matrix, extent),
                            _grid_corners(_ijk_to_ras(volume), volume.GetImageData().GetExtent())), name
        np.testing.assert_allclose(np.linalg.norm(matrix[:3, :3], axis=0), volume.GetSpacing(), rtol=1e-9)


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
    assert result.wasSuccessful() and result.testsRun == len(names) == 3, result.failures + result.errors


# ---- a real head-and-neck CT (../shared/data/HNOAR), where the anatomy must land ----------------------------
HNOAR = REPO.parent / "shared" / "data" / "HNOAR"


@pytest.mark.skipif(not (HNOAR / "imagesTr" / "hn_201_0000.nii.gz").is_file(),
                    reason="the HNOAR data set (../shared/data/HNOAR) is not here")
def test_a_real_head_and_neck_ct_under_a_rotated_transform(mrml, tmp_path):
    """hn_201 (every organ contoured; voxel axes anterior-posterior, right-left, superior-inferior)
    segmented by the default model and loaded under a rotated transform: voxels in world RAS,
    terminology that resolves for every organ, organs where the clinical contours are, and an
    edit exported for fine-tuning unchanged."""
    import subprocess

    import slicer

    from medseg_core.finetune import read_correction
    from medseg_core.io import read_image
    from medseg_core.models import find_model
    from SlicerMedSegLib import Commands, SceneLoader

    model = _models()["hn-oar-unet"]  # what the default "hn-oar" names
    volume = _load_volume(HNOAR / "imagesTr" / "hn_201_0000.nii.gz", "hn_201")
    study = _in_study(volume)
    _under_transform(volume, TRANSFORMS["rotated"])
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
        assert _same_points(_segment_world_points(seg, name),
                            _sitk_world_points(labels, values == value, _to_world(volume))), name
        meaning = _resolve_in_context(logic, segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
                                      .GetTerminology())
        assert meaning[1] in ("Brain stem", "Spinal cord", "Parotid gland", "Esophagus", "Larynx", "Mandible"), meaning
        mine = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetSegmentIdBySegmentName(name), volume) > 0
        dice = 2 * (mine & (truth == value)).sum() / (mine.sum() + (truth == value).sum())
        assert dice > 0.4, (name, dice)  # on the clinical contour, not mirrored or shifted
    assert _resolve_in_context(logic, segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("LeftParotid"))
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
    assert _same_points(_sitk_world_points(label, sitk.GetArrayFromImage(label) == mandible_value, _to_world(volume)),
                        _volume_world_points(volume, mandible > 0))


def test_segment_inside_a_markups_roi_drawn_in_world_space_over_a_rotated_volume(mrml, cases):
    """The ROI the user draws (world RAS) becomes the ``--roi`` box in the volume's own LPS frame:
    the engine labels only voxels inside it, and labels there what a full run labels."""
    import slicer

    from SlicerMedSegLib.Parameters import SegmentationParameters
    from SlicerMedSegLib.SegmentationLogic import SegmentationLogic

    case = cases["identity"]
    volume = _load_volume(case["source"], "phantom")
    _under_transform(volume, TRANSFORMS["rotated"])
    to_world = _to_world(volume)
    full = sitk.ReadImage(case["outputs"]["labels"])
    full_values = sitk.GetArrayFromImage(full)
    liver_world = _sitk_world_points(full, full_values == 1, to_world)
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
    local_ras = _apply(np.linalg.inv(to_world), corners)
    local_lps = local_ras * [-1, -1, 1]
    np.testing.assert_allclose(box, list(local_lps.min(axis=0)) + list(local_lps.max(axis=0)), atol=1e-6)

    logic = SegmentationLogic(str(REPO / "SlicerMedSeg"), installLogic=None, python=sys.executable)
    outcome = logic.segment(volume, SegmentationParameters(model="phantom-unet", device="cpu"), roiNode=roi,
                            wait=True)
    assert outcome.ok, outcome.error
    seg = outcome.segmentationNode
    inside = _apply(np.linalg.inv(to_world), _segment_world_points(seg, "Liver")) * [-1, -1, 1]  # local LPS
    assert len(inside) > 100
    margin = max(volume.GetSpacing())
    assert (inside >= np.array(box[:3]) - margin).all() and (inside <= np.array(box[3:]) + margin).all()
    # the box cut the liver: a full run labels liver outside it
    full_local = _apply(np.linalg.inv(to_world), liver_world) * [-1, -1, 1]
    outside = (full_local < np.array(box[:3]) - margin).any(axis=1) | (full_local > np.array(box[3:]) + margin).any(axis=1)
    assert outside.sum() > 100


def test_the_regions_and_the_overlay_follow_the_panels_show_options(mrml, cases, phantom_model):
    import slicer

    from SlicerMedSegLib import SceneLoader

    volume, _, loaded = _load_case(cases["identity"], None, phantom_model, showRegions=False, showConfidence=False)
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


def test_a_correction_under_another_transform_than_its_volume_is_refused(mrml, cases, phantom_model, tmp_path):
    import slicer

    from SlicerMedSegLib import SceneLoader

    volume, _, loaded = _load_case(cases["identity"], TRANSFORMS["rotated"], phantom_model)
    seg = loaded.segmentationNode
    other = _under_transform(seg, TRANSFORMS["translated"])
    with pytest.raises(ValueError, match="different transforms"):
        SceneLoader.writeCorrection(seg, volume, phantom_model.labelNames, str(tmp_path / "c.seg.nrrd"))
    assert not (tmp_path / "c.seg.nrrd").exists() and other is not None
    assert not slicer.mrmlScene.GetFirstNodeByName("MedSeg correction export")


def test_the_modality_warning_reads_the_volume_through_slicer(mrml, cases):
    import slicer

    from SlicerMedSegLib.SegmentationLogic import SegmentationLogic

    logic = SegmentationLogic(str(REPO / "SlicerMedSeg"), installLogic=None, python=sys.executable)
    logic.listModels(wait=True)
    ct = _load_volume(cases["oblique-left-handed"]["source"], "ct")
    assert logic.modalityWarning(ct, "phantom-unet") == ""
    # the same voxels rescaled to positive arbitrary units, as an MRI would come
    mr = slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, ct, "mr-like")
    array = slicer.util.arrayFromVolume(mr)
    array[:] = (array - array.min()) // 4
    slicer.util.arrayFromVolumeModified(mr)
    assert "Hounsfield" in logic.modalityWarning(mr, "phantom-unet")
    assert logic.modalityWarning(None, "phantom-unet") == "" and logic.modalityWarning(ct, "no-such-model") == ""
