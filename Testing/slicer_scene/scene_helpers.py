"""Helpers of the slicer-core tier: geometry in world RAS, and the scene as a user builds it.

Every geometric check compares voxel centres in world RAS: the engine's labelmap read by
SimpleITK (LPS, flipped to RAS, moved by the volume's parent transform) against the voxels Slicer
holds (a segment's internal labelmap through its image-to-world matrix and its node's parent
transform). Slicer's reader reverses the k axis of a left-handed image, so voxel arrays of the two
libraries are never compared index by index.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.spatial import cKDTree

from medseg_core.data.phantom import PHANTOM_LABELS

REPO = Path(__file__).resolve().parents[2]
NAMES = [label.name for label in PHANTOM_LABELS]
HNOAR = REPO.parent / "shared" / "data" / "HNOAR"


def rotation(axis, degrees) -> np.ndarray:
    axis = tuple(float(a) for a in np.asarray(axis, dtype=float) / np.linalg.norm(axis))
    return np.array(sitk.VersorTransform(axis, math.radians(degrees)).GetMatrix()).reshape(3, 3)


DIRECTIONS = {
    "identity": np.eye(3),
    "left-handed": np.diag([1.0, 1.0, -1.0]),  # k runs superior to inferior
    "oblique": rotation([0.3, 0.2, 1.0], 25.0),
    "oblique-left-handed": rotation([0.0, 0.0, 1.0], 10.0) @ np.diag([-1.0, 1.0, 1.0]),  # the phantom's own
}
TRANSFORMS = {
    "none": None,
    "translated": np.array([[1, 0, 0, 12.5], [0, 1, 0, -20.0], [0, 0, 1, 7.0], [0, 0, 0, 1]], dtype=float),
    "rotated": np.block([[rotation([1.0, 0.5, 0.2], 30.0), np.array([[5.0], [-8.0], [15.0]])],
                         [np.zeros((1, 3)), np.ones((1, 1))]]),
}


# ---- helpers: geometry in world RAS ------------------------------------------------------------------
def vtk_to_np(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def np_to_vtk(array):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


def world_matrix(node) -> np.ndarray:
    """The node's local-to-world matrix (identity without a parent transform)."""
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(node.GetParentTransformNode(), None, matrix)
    return vtk_to_np(matrix)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def sitk_world_points(image: sitk.Image, mask_zyx: np.ndarray, to_world: np.ndarray) -> np.ndarray:
    """World RAS of the voxels where ``mask_zyx`` (SimpleITK's array order) is set."""
    ijk = np.argwhere(mask_zyx)[:, ::-1].astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps = ijk @ (direction * np.array(image.GetSpacing())).T + np.array(image.GetOrigin())
    return transform_points(to_world, lps * np.array([-1.0, -1.0, 1.0]))


def segment_world_points(segmentationNode, name: str) -> np.ndarray:
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
    local = transform_points(vtk_to_np(matrix), ijk.astype(float))
    return transform_points(world_matrix(segmentationNode), local)


def volume_world_points(volumeNode, mask_kji: np.ndarray) -> np.ndarray:
    """World RAS of the voxels set in ``mask_kji`` (Slicer's array order of ``volumeNode``)."""
    local = transform_points(ijk_to_ras(volumeNode), np.argwhere(mask_kji)[:, ::-1].astype(float))
    return transform_points(world_matrix(volumeNode), local)


def same_points(a: np.ndarray, b: np.ndarray, tol: float = 1e-3) -> bool:
    if len(a) != len(b):
        return False
    if len(a) == 0:
        return True
    return cKDTree(b).query(a)[0].max() < tol and cKDTree(a).query(b)[0].max() < tol


def ijk_to_ras(volumeNode) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return vtk_to_np(matrix)


def reference_geometry(segmentationNode) -> tuple[np.ndarray, list]:
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
    return vtk_to_np(matrix), list(grid.GetExtent())


def grid_corners(ijk_to_ras: np.ndarray, extent) -> np.ndarray:
    corners = np.array([[i, j, k] for i in extent[0:2] for j in extent[2:4] for k in extent[4:6]], dtype=float)
    return transform_points(ijk_to_ras, corners)


# ---- helpers: the scene -------------------------------------------------------------------------------
def load_volume(path, name):
    import slicer

    node = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), name, 0)
    assert node is not None, path
    return node


def in_study(volumeNode):
    """Put the volume in a patient/study, as DICOM loading does."""
    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "CT study")
    sh.SetItemParent(sh.GetItemByDataNode(volumeNode), study)
    return study


def under_transform(node, matrix):
    import slicer

    if matrix is None:
        return None
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "patient position")
    transform.SetMatrixTransformToParent(np_to_vtk(matrix))
    node.SetAndObserveTransformNodeID(transform.GetID())
    return transform


def installed_models():
    """The module's ``ModelInfo`` of each installed model, from the engine's ``models_json`` (what
    ``medseg models --json`` prints), read in this process."""
    import json

    from SlicerMedSegLib.Models import parse_models_json

    from medseg_core.commands import models_json

    return {m.name: m for m in parse_models_json(json.dumps(models_json()))}


def load_case(case, transform, model, **options):
    """The user's volume (in a study, under ``transform``) and the run's outputs loaded on it."""
    from SlicerMedSegLib import SceneLoader

    volume = load_volume(case["source"], "phantom")
    study = in_study(volume)
    under_transform(volume, transform)
    loaded = SceneLoader.loadSegmentResults(case["outputs"], volume, model.name, model.version,
                                            model.labelColors, **options)
    return volume, study, loaded


def resolve_in_context(logic, terminology: str):
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


def edit_tumour(seg, volume):
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


def pump_until(job, timeout=60.0):
    from slicer_core_app import process_events

    deadline = time.monotonic() + timeout
    while not job.done:
        assert time.monotonic() < deadline, "the job did not finish"
        process_events()
        time.sleep(0.05)
    return job.outcome
