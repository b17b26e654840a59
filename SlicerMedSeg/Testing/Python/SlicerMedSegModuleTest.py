"""Tests that run inside 3D Slicer (they need the scene, the markups and the segmentations).

Run them with ctest in the extension's build tree (``slicer_add_python_unittest``), with the
module's "Reload and Test" button, or directly::

    Slicer --testing --no-splash --additional-module-paths SlicerMedSeg \\
        --python-script SlicerMedSeg/Testing/Python/SlicerMedSegModuleTest.py

The engine's packages must be installed in Slicer's Python first (nothing is installed in testing
mode): open the module once and press Refresh, or run (with the PyTorch extension installed)::

    Slicer --no-main-window --additional-module-paths SlicerMedSeg --python-code \\
        "import SlicerMedSeg; SlicerMedSeg.SlicerMedSegLogic().install.ensureReady(askConfirmation=False); slicer.util.exit()"

The phantom model runs on the CPU in a few seconds; fine-tuning takes 2 steps.

The same file runs outside Slicer, in the slicer-core tier of ``make test``
(``Testing/slicer_scene/test_scene_logic.py``), except the tests in ``NEEDS_QT`` (the panel). So it loads and
compares through Slicer's own logic and arrays only: voxels are compared on Slicer's grid, never
against SimpleITK's file order (Slicer's reader reverses the k axis of a left-handed image, as the
phantom's is).
"""

import os
import shutil
import tempfile
import time
import unittest

import numpy as np
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

PHANTOM_LABELS = ["Liver", "SpinalCord", "Tumour", "LeftGland", "RightGland"]
TESTS = ("test_segment_phantom", "test_cancel_leaves_scene_unchanged", "test_finetune_on_edited_segment",
         "test_refine_brings_a_deleted_organ_back", "test_new_model_is_selected_in_the_panel")
NEEDS_QT = ("test_new_model_is_selected_in_the_panel",)


class SlicerMedSegModuleTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()
        self.tempDir = tempfile.mkdtemp(prefix="medseg-slicer-test-")
        self.oldHome = os.environ.get("MEDSEG_HOME")
        os.environ["MEDSEG_HOME"] = os.path.join(self.tempDir, "home")  # fine-tuned models land here
        import SlicerMedSeg

        self.logic = SlicerMedSeg.SlicerMedSegLogic()
        self.assertTrue(self.logic.install.isReady(), "install the engine first (see this file's docstring)\n"
                        + self.logic.install.plan().describe())

    def tearDown(self):
        self.logic.shutdown()
        if self.oldHome is None:
            os.environ.pop("MEDSEG_HOME", None)
        else:
            os.environ["MEDSEG_HOME"] = self.oldHome
        shutil.rmtree(self.tempDir, ignore_errors=True)

    def runTest(self):
        for name in TESTS:
            self.setUp()
            try:
                getattr(self, name)()
            finally:
                self.tearDown()

    # ---- helpers --------------------------------------------------------------------------------
    def loadPhantom(self, seed=7):
        """The phantom (left-handed, oblique direction) and its truth, both read by Slicer's reader."""
        import SimpleITK as sitk
        from medseg_core.data.phantom import make_phantom

        phantom = make_phantom(seed=seed)
        path = os.path.join(self.tempDir, "phantom.nii.gz")
        sitk.WriteImage(phantom.image, path, True)
        sitk.WriteImage(phantom.label, os.path.join(self.tempDir, "truth.nii.gz"), True)
        volume = slicer.modules.volumes.logic().AddArchetypeVolume(path, "phantom", 0)
        return volume, phantom

    def truthArray(self, value):
        """The truth label ``value`` on the volume's grid as Slicer reads it (loaded, copied, removed)."""
        truth = slicer.modules.volumes.logic().AddArchetypeVolume(os.path.join(self.tempDir, "truth.nii.gz"),
                                                                   "truth", 1)
        try:
            return slicer.util.arrayFromVolume(truth) == value
        finally:
            slicer.mrmlScene.RemoveNode(truth)

    @staticmethod
    def voxelBoundsRAS(volumeNode, mask):
        """RAS bounds (xmin, xmax, ymin, ymax, zmin, zmax) of the voxel centres set in ``mask``
        (Slicer's array order of ``volumeNode``)."""
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        m = np.array([[ijkToRas.GetElement(r, c) for c in range(4)] for r in range(3)])
        ijk = np.argwhere(mask)[:, ::-1].astype(float)
        ras = ijk @ m[:, :3].T + m[:, 3]
        return [f(ras[:, axis]) for axis in range(3) for f in (np.min, np.max)]

    def segment(self, volume, **options):
        from SlicerMedSegLib.Parameters import SegmentationParameters

        events = []
        params = SegmentationParameters(model="phantom-unet", device="cpu", **options)
        outcome = self.logic.segment(volume, params, wait=True, on_event=events.append, askConfirmation=False)
        return outcome, events

    # ---- tests ----------------------------------------------------------------------------------
    def test_segment_phantom(self):
        self.delayDisplay("Segmenting the phantom")
        volume, phantom = self.loadPhantom()
        before = slicer.util.arrayFromVolume(volume).copy()
        storageFile = volume.GetStorageNode().GetFileName()
        outcome, events = self.segment(volume)
        self.assertTrue(outcome.ok, outcome.error)

        stages = [e.stage for e in events if e.kind == "stage"]
        self.assertEqual(stages[0], "load")
        self.assertIn("infer", stages)
        self.assertEqual([e.kind for e in events if e.kind in ("result", "error")], ["result"])

        seg = outcome.segmentationNode
        self.assertEqual(seg.GetName(), "phantom phantom-unet")
        names = [seg.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(seg.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(names, PHANTOM_LABELS + ["Low confidence"])
        liver = seg.GetSegmentation().GetSegment(seg.GetSegmentation().GetSegmentIdBySegmentName("Liver"))
        self.assertEqual(liver.GetName(), "Liver")
        if hasattr(liver, "GetTerminology"):  # Slicer 5.8+: the SNOMED-CT code the .seg.nrrd carries
            self.assertIn("10200004", liver.GetTerminology())
        liverArray = slicer.util.arrayFromSegmentBinaryLabelmap(
            seg, seg.GetSegmentation().GetSegmentIdBySegmentName("Liver"), volume)
        truth = self.truthArray(1)
        dice = 2 * np.logical_and(liverArray > 0, truth).sum() / ((liverArray > 0).sum() + truth.sum())
        self.assertGreater(dice, 0.9)

        # same study as the input
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(sh.GetItemParent(sh.GetItemByDataNode(seg)),
                         sh.GetItemParent(sh.GetItemByDataNode(volume)))

        conf = outcome.confidenceNode
        self.assertIsNotNone(conf)
        confArray = slicer.util.arrayFromVolume(conf)
        self.assertEqual(confArray.shape, before.shape)
        self.assertTrue(0.0 <= confArray.min() and confArray.max() <= 1.0)
        for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            composite = slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            self.assertEqual(composite.GetForegroundVolumeID(), conf.GetID())

        self.assertGreaterEqual(len(outcome.roiNodes), 2)  # LeftGland and RightGland
        for roi in outcome.roiNodes:
            self.assertEqual(roi.GetClassName(), "vtkMRMLMarkupsROINode")
        for gland in ("LeftGland", "RightGland"):  # each box holds its gland's voxels (not the layer's bounds)
            roi = [r for r in outcome.roiNodes if r.GetAttribute("MedSeg.Label") == gland][0]
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(
                seg, seg.GetSegmentation().GetSegmentIdBySegmentName(gland), volume) > 0
            self.assertGreater(mask.sum(), 10)
            bounds = self.voxelBoundsRAS(volume, mask)
            center = [0.0, 0.0, 0.0]
            roi.GetCenter(center)
            size = list(roi.GetSize())
            for axis in range(3):
                self.assertLessEqual(center[axis] - size[axis] / 2, bounds[2 * axis] + 1e-3)
                self.assertGreaterEqual(center[axis] + size[axis] / 2, bounds[2 * axis + 1] - 1e-3)
                self.assertLess(size[axis], bounds[2 * axis + 1] - bounds[2 * axis] + 4 * max(volume.GetSpacing()))

        # the input volume is untouched
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
        self.assertEqual(volume.GetStorageNode().GetFileName(), storageFile)

    def test_cancel_leaves_scene_unchanged(self):
        self.delayDisplay("Cancel")
        volume, _ = self.loadPhantom(seed=3)
        from SlicerMedSegLib.Parameters import SegmentationParameters

        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        self.logic.segmentation.listModels(wait=True, askConfirmation=False)
        job = self.logic.segment(volume, SegmentationParameters(model="phantom-unet", device="cpu", tta=True),
                                 wait=False, askConfirmation=False)
        job.runner.poll(timeout=5.0)  # the first line: the child is running
        start = time.monotonic()
        job.cancel()
        job.runner.wait(timeout=10)
        self.assertLess(time.monotonic() - start, 2.0)
        self.assertTrue(job.outcome.cancelled)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertFalse(os.path.exists(job.tempDir))

    def test_refine_brings_a_deleted_organ_back(self):
        self.delayDisplay("Refining a deleted organ from a point")
        volume, _ = self.loadPhantom()
        outcome, _ = self.segment(volume, confidence=False)
        self.assertTrue(outcome.ok, outcome.error)
        seg = outcome.segmentationNode
        segmentation = seg.GetSegmentation()
        glandId = segmentation.GetSegmentIdBySegmentName("LeftGland")
        gland = slicer.util.arrayFromSegmentBinaryLabelmap(seg, glandId, volume) > 0
        liver = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetSegmentIdBySegmentName("Liver"),
                                                           volume).copy()
        segmentation.RemoveSegment(glandId)
        bounds = self.voxelBoundsRAS(volume, gland)
        point = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "here")
        point.AddControlPoint(*[(bounds[2 * a] + bounds[2 * a + 1]) / 2 for a in range(3)])
        prompt = self.logic.segmentation.promptFor(point, volume, "LeftGland")
        result = self.logic.refine(seg, volume, [prompt], device="cpu", wait=True, askConfirmation=False)
        self.assertTrue(result.ok, result.error)
        backId = segmentation.GetSegmentIdBySegmentName("LeftGland")
        self.assertTrue(backId)
        back = slicer.util.arrayFromSegmentBinaryLabelmap(seg, backId, volume) > 0
        self.assertGreater(2 * np.logical_and(back, gland).sum() / (back.sum() + gland.sum()), 0.9)
        np.testing.assert_array_equal(
            slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetSegmentIdBySegmentName("Liver"), volume),
            liver)

    def test_finetune_on_edited_segment(self):
        self.delayDisplay("Fine-tuning on an edited segment")
        volume, _ = self.loadPhantom()
        outcome, _ = self.segment(volume)
        self.assertTrue(outcome.ok, outcome.error)
        seg = outcome.segmentationNode
        tumourId = seg.GetSegmentation().GetSegmentIdBySegmentName("Tumour")
        tumour = slicer.util.arrayFromSegmentBinaryLabelmap(seg, tumourId, volume)
        zs = np.nonzero(tumour.any(axis=(1, 2)))[0]
        tumour[zs[: len(zs) // 2]] = 0  # the "correction": the upper half was not tumour
        slicer.util.updateSegmentBinaryLabelmapFromArray(tumour, seg, tumourId, volume)

        from SlicerMedSegLib.Parameters import FinetuneParameters

        name = f"phantom-edited-{int(time.time())}"
        events = []
        result = self.logic.finetune(seg, volume, FinetuneParameters(steps=2, name=name, device="cpu"), wait=True,
                                     on_event=events.append, askConfirmation=False)
        self.assertTrue(result.ok, result.error)
        self.assertEqual(result.model, name)
        self.assertIn("finetune", [e.stage for e in events if e.kind == "stage"])
        names = [m.name for m in self.logic.segmentation.listModels(wait=True, askConfirmation=False)]
        self.assertIn(name, names)

    def test_new_model_is_selected_in_the_panel(self):
        """After fine-tuning the panel lists the new model and selects it (needs the Qt panel)."""
        from SlicerMedSegLib.SegmentationLogic import Outcome

        self.delayDisplay("The panel selects a new model")
        self.logic.segmentation.listModels(wait=True, askConfirmation=False)
        name = self.logic.segmentation.models[-1].name
        panel = slicer.modules.slicermedseg.widgetRepresentation().self().panel
        models = panel.logic.listModels(wait=True, askConfirmation=False)
        panel.pendingModelSelection = name
        panel.onModelsListed(Outcome(kind="models", ok=True, models=models))
        self.assertEqual(panel.currentModelName(), name)


def runTests():
    """For ``Slicer --python-script``: run the tests, then exit with their status."""
    suite = unittest.TestLoader().loadTestsFromTestCase(SlicerMedSegModuleTest)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    slicer.util.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    runTests()
