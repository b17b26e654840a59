"""Markups nodes as the engine's boxes and refine prompts: world RAS (what the user placed, under
any parent transform of the volume) -> LPS millimetres in the volume's own space (what ``medseg``
takes, ``--roi`` and ``--prompt``)."""

import slicer
import vtk

from . import Commands
from .Geometry import ras_bounds_to_lps_box, ras_to_lps_point


def worldToLocal(volumeNode):
    """World RAS -> the volume's own RAS (through its parent transform, if any)."""
    parent = volumeNode.GetParentTransformNode() if volumeNode is not None else None
    if parent is None:
        return lambda p: [float(v) for v in p]
    transform = vtk.vtkGeneralTransform()
    parent.GetTransformFromWorld(transform)
    return lambda p: list(transform.TransformPoint([float(v) for v in p]))


def roiBoxLPS(roiNode, volumeNode=None):
    """The ROI's bounds as the ``--roi`` LPS box, in the volume's own (untransformed) space: the
    bounding box of its eight corners there."""
    bounds = [0.0] * 6
    roiNode.GetRASBounds(bounds)
    if volumeNode is not None and volumeNode.GetParentTransformNode() is not None:
        toLocal = worldToLocal(volumeNode)
        corners = [toLocal([x, y, z]) for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]]
        bounds = [f(c[i] for c in corners) for i in range(3) for f in (min, max)]
    return ras_bounds_to_lps_box(bounds)


def pointLPS(worldRAS, volumeNode=None):
    """A world RAS point (a markups control point) in the volume's own LPS space."""
    return ras_to_lps_point(worldToLocal(volumeNode)(worldRAS))


def promptFor(markupsNode, volumeNode, label, kind="point"):
    """The refine prompt a markups node gives: an ROI is a box around ``label``; a point list
    gives its last placed point, as ``kind`` (``point`` or ``negative``). None when nothing is
    placed yet."""
    if markupsNode is None:
        return None
    if markupsNode.IsA("vtkMRMLMarkupsROINode"):
        return Commands.refine_prompt(label, "box", roiBoxLPS(markupsNode, volumeNode))
    for i in reversed(range(markupsNode.GetNumberOfControlPoints())):
        if markupsNode.GetNthControlPointPositionStatus(i) == slicer.vtkMRMLMarkupsNode.PositionDefined:
            position = [0.0, 0.0, 0.0]
            markupsNode.GetNthControlPointPositionWorld(i, position)
            return Commands.refine_prompt(label, kind, pointLPS(position, volumeNode))
    return None
