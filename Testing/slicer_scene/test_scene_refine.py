"""Refine through the module's logic in a real scene: the user deleted an organ, places a markups
point on it (world RAS, the volume under a rotated transform) and refines; the organ comes back
only inside the reported region, every other segment (the user's own too) stays voxel for voxel,
and the worker that segmented the volume answers the refine without reading the volume again."""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk
from scene_helpers import TRANSFORMS, load_volume, transform_points, under_transform, world_matrix


def _dice(a, b):
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_a_point_on_a_deleted_organ_brings_it_back_and_changes_nothing_else(mrml, cases, make_logic):
    import slicer
    from SlicerMedSegLib import Commands, SceneLoader
    from SlicerMedSegLib.Parameters import SegmentationParameters

    case = cases["oblique-left-handed"]
    volume = load_volume(case["source"], "phantom")
    under_transform(volume, TRANSFORMS["rotated"])
    logic = make_logic()
    outcome = logic.segment(volume, SegmentationParameters(model="phantom-unet", device="cpu", confidence=False),
                            wait=True)
    assert outcome.ok, outcome.error
    seg = outcome.segmentationNode
    segmentation = seg.GetSegmentation()
    gland = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetSegmentIdBySegmentName("LeftGland"),
                                                       volume) > 0
    # the user's own segment, drawn over the gland's neighbourhood, and the model's other organs
    mine = segmentation.AddEmptySegment("", "my note")
    note = np.zeros(gland.shape, dtype=np.uint8)
    note[:3, :3, :3] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(note, seg, mine, volume)
    others = {name: slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetSegmentIdBySegmentName(name),
                                                               volume).copy()
              for name in ("Liver", "SpinalCord", "Tumour", "RightGland", "my note")}
    segmentation.RemoveSegment(segmentation.GetSegmentIdBySegmentName("LeftGland"))

    # the point the user places: the gland's centre, in world RAS through the rotated transform
    kji = np.argwhere(gland).mean(0)
    ijk_to_ras = vtk_matrix(volume)
    local_ras = (ijk_to_ras @ np.r_[kji[::-1], 1.0])[:3]
    world = transform_points(world_matrix(volume), local_ras[None])[0]
    fiducial = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "here")
    fiducial.AddControlPoint(*world)
    prompt = logic.promptFor(fiducial, volume, "LeftGland")
    lps = prompt["point"]
    np.testing.assert_allclose(lps, [-local_ras[0], -local_ras[1], local_ras[2]], atol=1e-4)
    assert SceneLoader.segmentAt(seg, world) is None  # the gland was deleted: nothing under the point
    liver_kji = np.argwhere(others["Liver"] > 0).mean(0).round()
    liver_world = transform_points(world_matrix(volume), (ijk_to_ras @ np.r_[liver_kji[::-1], 1.0])[:3][None])[0]
    assert SceneLoader.segmentAt(seg, liver_world) == "Liver"  # the panel preselects the organ under a point

    path = logic.volumeFile(volume)
    written_at = os.stat(path).st_mtime_ns
    edited = []
    result = logic.refine(seg, volume, [prompt], device="cpu", wait=True, before_edit=lambda: edited.append(True))
    assert result.ok, result.error
    assert edited == [True]  # the panel's undo hook ran once, before the change
    assert logic.worker.starts == 1  # the same worker segmented and refined
    assert logic.volumeFile(volume) == path and os.stat(path).st_mtime_ns == written_at  # not written again
    back_id = segmentation.GetSegmentIdBySegmentName("LeftGland")
    assert back_id, "the deleted organ did not come back"
    back = slicer.util.arrayFromSegmentBinaryLabelmap(seg, back_id, volume) > 0
    assert _dice(back, gland) > 0.9
    (change,) = result.changes
    i0, j0, k0, i1, j1, k1 = change["box_index"]
    inside = np.zeros(gland.shape, dtype=bool)
    inside[k0:k1, j0:j1, i0:i1] = True
    assert not (back & ~inside).any()  # nothing outside the reported region
    segment = segmentation.GetSegment(back_id)
    assert segment.GetName() == "LeftGland" and max(segment.GetColor()) > 0  # the model's name and colour
    for name, before in others.items():
        now = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetSegmentIdBySegmentName(name), volume)
        np.testing.assert_array_equal(now, before, err_msg=name)

    # a negative point on the gland removes it again; a point outside the volume is a clear error
    result = logic.refine(seg, volume, [Commands.refine_prompt("LeftGland", "negative", lps)], device="cpu", wait=True)
    assert result.ok and not slicer.util.arrayFromSegmentBinaryLabelmap(seg, back_id, volume).any()
    far = [v + 1000.0 for v in lps]
    result = logic.refine(seg, volume, [Commands.refine_prompt("LeftGland", "point", far)], device="cpu", wait=True)
    assert not result.ok and result.returncode == 2 and "outside the image" in result.error
    assert logic.worker.starts == 1


def vtk_matrix(volume) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_the_refined_labels_match_the_engine_output_on_the_volume_grid(mrml, cases, make_logic):
    """What the engine wrote and what the scene holds agree voxel for voxel in the changed box."""
    import slicer
    from SlicerMedSegLib.Parameters import SegmentationParameters

    case = cases["identity"]
    volume = load_volume(case["source"], "phantom")
    logic = make_logic()
    seg = logic.segment(volume, SegmentationParameters(model="phantom-unet", device="cpu", confidence=False),
                        wait=True).segmentationNode
    tumour_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Tumour")
    tumour = slicer.util.arrayFromSegmentBinaryLabelmap(seg, tumour_id, volume) > 0
    kji = np.argwhere(tumour).mean(0)
    cut = tumour.copy()
    cut[: int(kji[0])] = False  # the user erased half of it
    slicer.util.updateSegmentBinaryLabelmapFromArray(cut.astype(np.uint8), seg, tumour_id, volume)
    local_ras = (vtk_matrix(volume) @ np.r_[kji[::-1], 1.0])[:3]
    box = np.r_[-local_ras[:2], local_ras[2]]
    half = 20.0
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "around the tumour")
    roi.SetCenter(*local_ras)
    roi.SetSize(2 * half, 2 * half, 2 * half)
    prompt = logic.promptFor(roi, volume, "Tumour")
    np.testing.assert_allclose(prompt["box"], list(box - half) + list(box + half), atol=1e-4)
    out = []
    result = logic.refine(seg, volume, [prompt], device="cpu", wait=True,
                          before_edit=lambda: out.append(result_labels(logic)))
    assert result.ok, result.error
    now = slicer.util.arrayFromSegmentBinaryLabelmap(seg, tumour_id, volume) > 0
    engine = out[0] == 3  # the phantom's tumour value
    change, = result.changes
    assert change["voxels_added"] > 0  # the erased half came back
    i0, j0, k0, i1, j1, k1 = change["box_index"]
    np.testing.assert_array_equal(now[k0:k1, j0:j1, i0:i1], engine[k0:k1, j0:j1, i0:i1])
    outside = np.ones_like(now)
    outside[k0:k1, j0:j1, i0:i1] = False
    np.testing.assert_array_equal(now[outside], cut[outside])
    assert _dice(now, tumour) > 0.9


def result_labels(logic):
    """The labelmap the engine wrote for the refine being applied (read before its folder goes)."""
    labels = logic.job.runner.result.outputs["outputs"]["labels"]
    return sitk.GetArrayFromImage(sitk.ReadImage(labels))


def test_volume_files_are_written_once_rewritten_when_changed_and_the_oldest_removed(mrml, cases, make_logic):
    import os

    import slicer

    logic = make_logic()
    volumes = [load_volume(cases[name]["source"], name) for name in list(cases)[:3]]
    first = logic.volumeFile(volumes[0])
    os.utime(first, ns=(1, 1))  # a stamp no write leaves
    assert logic.volumeFile(volumes[0]) == first and os.stat(first).st_mtime_ns == 1  # unchanged: not rewritten
    array = slicer.util.arrayFromVolume(volumes[0])
    array[0, 0, 0] += 1
    slicer.util.arrayFromVolumeModified(volumes[0])
    assert logic.volumeFile(volumes[0]) == first and os.stat(first).st_mtime_ns != 1  # its voxels changed
    second, third = logic.volumeFile(volumes[1]), logic.volumeFile(volumes[2])
    assert os.path.isfile(second) and os.path.isfile(third) and not os.path.exists(first)  # two are kept
    assert not [f for f in os.listdir(os.path.dirname(third)) if ".tmp" in f]
    logic.shutdown()
    assert not os.path.exists(os.path.dirname(third))
