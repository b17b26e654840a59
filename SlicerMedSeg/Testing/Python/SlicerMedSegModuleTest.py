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
"""

import os
import shutil
import tempfile
import time
import unittest

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

PHANTOM_LABELS = ["Liver", "SpinalCord", "Tumour", "LeftGland", "RightGland"]


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
        self.logic.cancel()
        if self.oldHome is None:
            os.environ.pop("MEDSEG_HOME", None)
        else:
            os.environ["MEDSEG_HOME"] = self.oldHome
        shutil.rmtree(self.tempDir, ignore_errors=True)

    def runTest(self):
        for name in ("test_segment_phantom", "test_cancel_leaves_scene_unchanged", "test_finetune_on_edited_segment"):
            self.setUp()
            try:
                getattr(self, name)()
            finally:
                self.tearDown()

    # ---- helpers --------------------------------------------------------------------------------
    def loadPhantom(self, seed=7):
        import SimpleITK as sitk
        from medseg_core.data.phantom import make_phantom

        phantom = make_phantom(seed=seed)
        path = os.path.join(self.tempDir, "phantom.nii.gz")
        sitk.WriteImage(phantom.image, path, True)
        volume = slicer.util.loadVolume(path)
        volume.SetName("phantom")
        return volume, phantom

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
        import SimpleITK as sitk

        truth = sitk.GetArrayFromImage(phantom.label) == 1
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
        layout = slicer.app.layoutManager()
        fg = layout.sliceWidget("Red").sliceLogic().GetSliceCompositeNode().GetForegroundVolumeID()
        self.assertEqual(fg, conf.GetID())

        self.assertGreaterEqual(len(outcome.roiNodes), 2)  # LeftGland and RightGland
        for roi in outcome.roiNodes:
            self.assertEqual(roi.GetClassName(), "vtkMRMLMarkupsROINode")
        left = [r for r in outcome.roiNodes if r.GetAttribute("MedSeg.Label") == "LeftGland"][0]
        glandId = seg.GetSegmentation().GetSegmentIdBySegmentName("LeftGland")
        center = [0.0, 0.0, 0.0]
        left.GetCenter(center)
        bounds = [0.0] * 6
        seg.GetSegmentation().GetSegment(glandId).GetBounds(bounds)
        for axis in range(3):  # the ROI (RAS) lies on the gland (RAS)
            self.assertLess(bounds[2 * axis] - 2.0, center[axis])
            self.assertLess(center[axis], bounds[2 * axis + 1] + 2.0)

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

        # and in the panel's list, selected
        from SlicerMedSegLib.SegmentationLogic import Outcome

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
