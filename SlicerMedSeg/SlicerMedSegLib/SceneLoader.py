"""Files <-> scene: writes the input volume and a corrected segmentation for the child, and loads
the child's outputs into the scene.

What a segmentation run puts in the scene (nothing is written to the input volume):

* a segmentation node named "<volume> <model>" from ``STEM.seg.nrrd``: one segment per label with
  the name, colour and terminology the file carries, the "Low confidence" segment drawn as an
  outline only, the input as reference geometry, placed in the input's subject-hierarchy study
  (so DICOM SEG export works) and under the input's parent transform;
* the confidence map (``STEM_confidence.nii.gz``) in the foreground layer as a colour overlay
  (red = unsure, only where the model is under 95 % sure) with a colour legend;
* for models that name small organs: one markups ROI per region of ``STEM_rois.json`` (``box_mm``
  is LPS, so x and y are negated for Slicer's RAS) in a folder, and the box segments of
  ``STEM_rois.seg.nrrd``; both shown or hidden with the "small-organ regions" option.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Optional

import slicer
import vtk

from .Geometry import lps_box_to_ras_center_size

LOW_CONFIDENCE = "Low confidence"
CONFIDENCE_COLOR_NODE_NAME = "MedSeg confidence"
CONFIDENCE_SHOWN_BELOW = 0.95

# node reference roles and attributes set on the result segmentation
ROLE_INPUT = "MedSegInputVolume"
ROLE_CONFIDENCE = "MedSegConfidence"
ROLE_REGIONS = "MedSegRegionsSegmentation"
ROLE_ROI = "MedSegRegionROI"
VOLUME_SINGLE_FILE = 4  # vtkSlicerVolumesLogic loading option: read this file only
ATTR_MODEL = "MedSeg.Model"
ATTR_MODEL_VERSION = "MedSeg.ModelVersion"


@dataclass
class LoadedResult:
    segmentationNode: object = None
    confidenceNode: object = None
    regionsSegmentationNode: object = None
    roiNodes: list = field(default_factory=list)
    report: dict = field(default_factory=dict)


# ---- writing files for the child -------------------------------------------------------------------
def writeVolume(volumeNode, path):
    """Write ``volumeNode`` to ``path`` through a storage node of our own: the node's own storage
    (its file name, its "modified" state) stays untouched."""
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(str(path))
    storageNode.SetUseCompression(False)
    if not storageNode.WriteData(volumeNode):
        raise RuntimeError(f"could not write {volumeNode.GetName()} to {path}")
    return str(path)


def removeTemporaryNode(node):
    """Remove a node the module made only to read or write a file, with its display node."""
    displayNode = node.GetDisplayNode()
    if displayNode is not None:
        slicer.mrmlScene.RemoveNode(displayNode)
    slicer.mrmlScene.RemoveNode(node)


def segmentNames(segmentationNode):
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def writeCorrection(segmentationNode, referenceVolume, labelNames, path):
    """Write the segments of ``segmentationNode`` that name one of ``labelNames`` (the model's) to a
    ``.seg.nrrd`` on ``referenceVolume``'s grid; the others ("Low confidence", region boxes, the
    user's own) are left out, as the engine refuses names it does not know. Returns the names written.

    The copy that is written lives in the same frame as the segmentation (under its parent
    transform), so its labelmaps are written as they are, never resampled: under a rotated
    transform a resampling would change label voxels before the engine sees them. A segmentation
    and volume under different transforms are refused (harden one first)."""
    from .Commands import matching_segment_names

    names = matching_segment_names(segmentNames(segmentationNode), labelNames)
    if not names:
        raise ValueError(f"{segmentationNode.GetName()} has no segment named like the model's labels "
                         f"({', '.join(labelNames)})")
    if segmentationNode.GetTransformNodeID() != referenceVolume.GetTransformNodeID():
        raise ValueError(f"{segmentationNode.GetName()} and {referenceVolume.GetName()} are under different "
                         "transforms; put them under the same one (or harden both) to fine-tune")
    exportNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MedSeg correction export")
    try:
        if segmentationNode.GetTransformNodeID():
            exportNode.SetAndObserveTransformNodeID(segmentationNode.GetTransformNodeID())
        # a deep copy, then removal of the other segments: correct with shared labelmap layers too
        exported = exportNode.GetSegmentation()
        exported.DeepCopy(segmentationNode.GetSegmentation())
        for name in segmentNames(exportNode):
            if name not in names:
                exported.RemoveSegment(exported.GetSegmentIdBySegmentName(name))
        exportNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
        storageNode = slicer.vtkMRMLSegmentationStorageNode()
        storageNode.SetFileName(str(path))
        if not storageNode.WriteData(exportNode):
            raise RuntimeError(f"could not write the correction to {path}")
    finally:
        removeTemporaryNode(exportNode)
    return names


# ---- loading the child's outputs ---------------------------------------------------------------------
TERMINOLOGY_CONTEXT_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources",
                                        "Terminology", "SegmentationCategoryTypeModifier-SlicerMedSeg.term.json")


def loadTerminologyContext():
    """Load the project's terminology context (the "Low confidence" and region codes, RT targets)
    into Slicer's terminology logic, once, so Slicer can show and browse every segment's code."""
    logic = slicer.modules.terminologies.logic()
    with open(TERMINOLOGY_CONTEXT_FILE, encoding="utf-8") as f:
        name = json.load(f)["SegmentationCategoryTypeContextName"]
    names = vtk.vtkStringArray()
    logic.GetLoadedTerminologyNames(names)
    if name not in [names.GetValue(i) for i in range(names.GetNumberOfValues())]:
        if not logic.LoadContextFromFile(TERMINOLOGY_CONTEXT_FILE):
            raise RuntimeError(f"Slicer could not read {TERMINOLOGY_CONTEXT_FILE}")
    return name


def _studyItem(volumeNode):
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    return shNode, shNode.GetItemParent(shNode.GetItemByDataNode(volumeNode))


def _placeLike(node, volumeNode, parentItem=None):
    """Put ``node`` in the volume's study (or ``parentItem``) and under its parent transform."""
    shNode, studyItem = _studyItem(volumeNode)
    item = shNode.GetItemByDataNode(node)
    if item:
        shNode.SetItemParent(item, parentItem if parentItem is not None else studyItem)
    transformId = volumeNode.GetTransformNodeID()
    if transformId:
        node.SetAndObserveTransformNodeID(transformId)


def _forgetTemporaryFile(node):
    """The outputs lie in a temporary folder that is removed: drop the storage node, so that saving
    the scene writes the node afresh."""
    storageNode = node.GetStorageNode()
    if storageNode is not None:
        slicer.mrmlScene.RemoveNode(storageNode)


def confidenceColorNode():
    """A procedural colour table: red where unsure, through yellow, to green where sure."""
    colorNode = slicer.mrmlScene.GetFirstNodeByName(CONFIDENCE_COLOR_NODE_NAME)
    if colorNode is not None:
        return colorNode
    colorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLProceduralColorNode", CONFIDENCE_COLOR_NODE_NAME)
    colorNode.SetAttribute("Category", "SlicerMedSeg")
    transfer = vtk.vtkColorTransferFunction()
    transfer.AddRGBPoint(0.0, 0.85, 0.10, 0.10)
    transfer.AddRGBPoint(0.5, 1.00, 0.80, 0.00)
    transfer.AddRGBPoint(1.0, 0.10, 0.70, 0.25)
    colorNode.SetAndObserveColorTransferFunction(transfer)
    return colorNode


def loadSegmentation(path, name, inputVolume):
    """Read a ``.seg.nrrd`` of ``inputVolume``'s grid: the node goes under the volume's parent
    transform first, then takes the volume as reference geometry (both in the same local frame)."""
    node = slicer.modules.segmentations.logic().LoadSegmentationFromFile(str(path), False, name)
    if node is None:
        raise RuntimeError(f"Slicer could not read {path}")
    node.SetName(name)
    node.CreateDefaultDisplayNodes()
    _placeLike(node, inputVolume)
    node.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
    _forgetTemporaryFile(node)
    return node


def styleLowConfidence(segmentationNode):
    """Draw "Low confidence" as an outline only, hidden in 3D, so it never hides the organs."""
    segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(LOW_CONFIDENCE)
    displayNode = segmentationNode.GetDisplayNode()
    if not segmentId or displayNode is None:
        return None
    displayNode.SetSegmentOpacity2DFill(segmentId, 0.0)
    displayNode.SetSegmentOpacity2DOutline(segmentId, 1.0)
    displayNode.SetSegmentVisibility3D(segmentId, False)
    return segmentId


def loadConfidence(path, name, inputVolume, show=True):
    node = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), name, VOLUME_SINGLE_FILE)
    if node is None:
        raise RuntimeError(f"Slicer could not read {path}")
    node.SetName(name)
    displayNode = node.GetDisplayNode()
    displayNode.SetAndObserveColorNodeID(confidenceColorNode().GetID())
    displayNode.AutoWindowLevelOff()
    displayNode.SetWindowLevelMinMax(0.0, 1.0)
    displayNode.SetApplyThreshold(1)
    displayNode.SetLowerThreshold(0.0)
    displayNode.SetUpperThreshold(CONFIDENCE_SHOWN_BELOW)
    _placeLike(node, inputVolume)
    _forgetTemporaryFile(node)
    legend = slicer.modules.colors.logic().AddDefaultColorLegendDisplayNode(node)
    if legend is not None:
        legend.SetTitleText("Confidence")
        legend.SetVisibility(show)
    if show:
        slicer.util.setSliceViewerLayers(background=inputVolume, foreground=node, foregroundOpacity=0.5)
    return node


def loadRegions(roisPath, roisSegmentationPath, baseName, inputVolume, labelColors, show=True):
    """Markups ROIs (one per region) in a subject-hierarchy folder, and the box segmentation."""
    with open(roisPath, encoding="utf-8") as f:
        regions = json.load(f).get("regions", [])
    shNode, studyItem = _studyItem(inputVolume)
    folder = shNode.CreateFolderItem(studyItem, f"{baseName} regions")
    roiNodes = []
    counts = {}
    for region in regions:
        label = str(region.get("label", "region"))
        counts[label] = counts.get(label, 0) + 1
        center, size = lps_box_to_ras_center_size(region["box_mm"])
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", f"{label} region {counts[label]}")
        roi.SetCenter(center)
        roi.SetSize(size)
        roi.CreateDefaultDisplayNodes()
        score = region.get("score")
        roi.SetDescription(f"{label}: region {counts[label]} found by the model"
                           + (f", score {float(score):.2f}" if score is not None else ""))
        roi.SetAttribute("MedSeg.Label", label)
        roi.SetAttribute("MedSeg.Score", str(score))
        color = labelColors.get(label)
        if color is not None and roi.GetDisplayNode() is not None:
            roi.GetDisplayNode().SetSelectedColor(*color[:3])
            roi.GetDisplayNode().SetColor(*color[:3])
        _placeLike(roi, inputVolume, folder)
        roi.SetDisplayVisibility(bool(show))
        roiNodes.append(roi)
    boxes = None
    if roisSegmentationPath and os.path.exists(roisSegmentationPath):
        boxes = loadSegmentation(roisSegmentationPath, f"{baseName} region boxes", inputVolume)
        shNode.SetItemParent(shNode.GetItemByDataNode(boxes), folder)
        boxes.GetDisplayNode().SetOpacity2DFill(0.0)
        boxes.SetDisplayVisibility(bool(show))
    return roiNodes, boxes


def setRegionsVisible(segmentationNode, visible):
    """Show or hide the region ROIs and box segments of a result."""
    if segmentationNode is None:
        return
    for i in range(segmentationNode.GetNumberOfNodeReferences(ROLE_ROI)):
        roi = segmentationNode.GetNthNodeReference(ROLE_ROI, i)
        if roi is not None:
            roi.SetDisplayVisibility(bool(visible))
    boxes = segmentationNode.GetNodeReference(ROLE_REGIONS)
    if boxes is not None:
        boxes.SetDisplayVisibility(bool(visible))


def loadSegmentResults(outputs, inputVolume, modelName, modelVersion="", labelColors=None, showRegions=True,
                       showConfidence=True):
    """Load one case's ``segment`` outputs (the dict of the ``result`` event) into the scene."""
    loadTerminologyContext()  # so Slicer resolves the project's codes ("Low confidence", regions, RT targets)
    baseName = f"{inputVolume.GetName()} {modelName}"
    result = LoadedResult()
    if outputs.get("report") and os.path.exists(outputs["report"]):
        with open(outputs["report"], encoding="utf-8") as f:
            result.report = json.load(f)
    seg = loadSegmentation(outputs["segmentation"], baseName, inputVolume)
    seg.SetAttribute(ATTR_MODEL, modelName)
    seg.SetAttribute(ATTR_MODEL_VERSION, modelVersion or str(result.report.get("version", "")))
    seg.SetNodeReferenceID(ROLE_INPUT, inputVolume.GetID())
    styleLowConfidence(seg)
    result.segmentationNode = seg
    if outputs.get("confidence"):
        result.confidenceNode = loadConfidence(outputs["confidence"], f"{baseName} confidence", inputVolume,
                                               show=showConfidence)
        seg.SetNodeReferenceID(ROLE_CONFIDENCE, result.confidenceNode.GetID())
    if outputs.get("rois"):
        result.roiNodes, result.regionsSegmentationNode = loadRegions(
            outputs["rois"], outputs.get("rois_segmentation"), baseName, inputVolume, labelColors or {},
            show=showRegions)
        for roi in result.roiNodes:
            seg.AddNodeReferenceID(ROLE_ROI, roi.GetID())
        if result.regionsSegmentationNode is not None:
            seg.SetNodeReferenceID(ROLE_REGIONS, result.regionsSegmentationNode.GetID())
    return result


def segmentAt(segmentationNode, worldRAS, skip=(LOW_CONFIDENCE,)):
    """The name of the segment that holds the world RAS point (the first, where several overlap),
    or None; the segments named in ``skip`` are not organs. Reads one voxel per segment of the
    internal labelmaps, so it is quick enough for every placed point."""
    point = [float(v) for v in worldRAS]
    parent = segmentationNode.GetParentTransformNode()
    if parent is not None:
        worldToLocal = vtk.vtkGeneralTransform()
        parent.GetTransformFromWorld(worldToLocal)
        point = list(worldToLocal.TransformPoint(point))
    segmentation = segmentationNode.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        if segment.GetName() in skip:
            continue
        image = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentation.GetNthSegmentID(i))
        if image is None:
            continue
        toImage = vtk.vtkMatrix4x4()
        image.GetWorldToImageMatrix(toImage)
        ijk = [int(round(v)) for v in toImage.MultiplyPoint(point + [1.0])[:3]]
        extent = image.GetExtent()
        if all(extent[2 * a] <= ijk[a] <= extent[2 * a + 1] for a in range(3)):
            if image.GetScalarComponentAsDouble(ijk[0], ijk[1], ijk[2], 0) == segment.GetLabelValue():
                return segment.GetName()
    return None


def applyRefinement(segmentationNode, volumeNode, refinedPath, changes):
    """Copy a refine's result (``refinedPath``: its ``STEM.seg.nrrd``) into ``segmentationNode``,
    for each prompted organ only inside the region the engine reports as changed (``changes``,
    ``box_index`` ``[i0, j0, k0, i1, j1, k1)`` in ``volumeNode``'s voxels); everything else, other
    segments and the user's own among them, is left as it is. An organ the user had deleted comes
    back as a new segment with the model's name, colour and terminology. Returns the segment IDs
    changed."""
    import numpy as np

    from .Commands import normalize_segment_name

    refined = loadSegmentation(refinedPath, "MedSeg refine", volumeNode)
    changedIds = []
    try:
        target = segmentationNode.GetSegmentation()
        byKey = {normalize_segment_name(n): target.GetSegmentIdBySegmentName(n) for n in segmentNames(segmentationNode)}
        source = refined.GetSegmentation()
        for change in changes:
            box = change.get("box_index")
            if not box:
                continue
            sourceId = source.GetSegmentIdBySegmentName(change["label"])  # none: the organ was removed
            targetId = byKey.get(normalize_segment_name(change["label"]))
            if not targetId and not sourceId:
                continue
            shape = slicer.util.arrayFromVolume(volumeNode).shape
            if not targetId:  # deleted by the user: the model's segment comes back
                target.CopySegmentFromSegmentation(source, sourceId)
                targetId = sourceId
                byKey[normalize_segment_name(change["label"])] = targetId
                old = np.zeros(shape, dtype=np.uint8)
            else:
                old = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, targetId, volumeNode)
            new = (slicer.util.arrayFromSegmentBinaryLabelmap(refined, sourceId, volumeNode) if sourceId
                   else np.zeros(shape, dtype=np.uint8))
            i0, j0, k0, i1, j1, k1 = (int(v) for v in box)
            region = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
            old[region] = new[region]
            slicer.util.updateSegmentBinaryLabelmapFromArray(old, segmentationNode, targetId, volumeNode)
            changedIds.append(targetId)
    finally:
        removeTemporaryNode(refined)
    return changedIds


def reportSummary(report) -> Optional[str]:
    """A few lines for the log: volumes per label, low-confidence volume, device and time."""
    if not report:
        return None
    lines = []
    volumes = report.get("volumes_ml") or {}
    if volumes:
        lines.append("Volumes: " + ", ".join(f"{name} {ml:.1f} ml" for name, ml in volumes.items()))
    if report.get("low_confidence_ml") is not None:
        lines.append(f"Low confidence: {report['low_confidence_ml']:.1f} ml (threshold "
                     f"{report.get('confidence_threshold', 0.5)})")
    seconds = (report.get("seconds") or {}).get("total")
    if seconds is not None:
        lines.append(f"{report.get('model', '')} {report.get('version', '')} on {report.get('device', '?')}: "
                     f"{seconds:.1f} s")
    for warning in report.get("warnings") or []:
        lines.append(f"Warning: {warning}")
    return "\n".join(lines)
