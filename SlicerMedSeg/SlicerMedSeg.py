"""SlicerMedSeg: segment CT and MRI with deep networks, see where the model is unsure, correct it
and fine-tune it on the corrections. The work happens in ``SlicerMedSegLib``; the engine runs
in one long-lived child process (``PythonSlicer -m medseg_core worker``), so Slicer never freezes,
Cancel works and a refine answers at once.
"""

import os

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)


class SlicerMedSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerMedSeg developers"]
        self.parent.helpText = (
            "Segment organs and tumours with a deep network, review the 'Low confidence' segment and the "
            "confidence overlay, correct the result in the Segment Editor and fine-tune the model on your "
            "corrections. The first use installs PyTorch (through the PyTorch extension) and the engine, "
            "after asking. See the project's README, section 'For clinicians'.")
        self.parent.acknowledgementText = "The MedSeg engine (medseg_core) runs in a separate process."


class SlicerMedSegWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from SlicerMedSegLib.Widget import MedSegPanel

        self.logic = SlicerMedSegLogic()
        self.panel = MedSegPanel(self, self.logic.segmentation)
        self.panel.setup()
        slicer.app.connect("aboutToQuit()", self.logic.segmentation.shutdown)

    def enter(self):
        self.panel.enter()

    def cleanup(self):
        self.panel.cleanup()


class SlicerMedSegLogic(ScriptedLoadableModuleLogic):
    """Entry point for scripts: ``SlicerMedSegLogic().segmentation.segment(volume, params, wait=True)``."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from SlicerMedSegLib.InstallLogic import InstallLogic
        from SlicerMedSegLib.SegmentationLogic import SegmentationLogic

        moduleDir = os.path.dirname(os.path.abspath(__file__))
        self.install = InstallLogic(moduleDir)
        self.segmentation = SegmentationLogic(moduleDir, installLogic=self.install)

    def segment(self, inputVolume, params, **kwargs):
        return self.segmentation.segment(inputVolume, params, **kwargs)

    def finetune(self, segmentationNode, referenceVolume, params, **kwargs):
        return self.segmentation.finetune(segmentationNode, referenceVolume, params, **kwargs)

    def refine(self, segmentationNode, volumeNode, prompts, **kwargs):
        return self.segmentation.refine(segmentationNode, volumeNode, prompts, **kwargs)

    def cancel(self):
        self.segmentation.cancel()

    def shutdown(self):
        """Cancel what runs and end the session's medseg worker."""
        self.segmentation.shutdown()


class SlicerMedSegTest(ScriptedLoadableModuleTest):
    """Reload and Test: runs Testing/Python/SlicerMedSegModuleTest.py (source tree), else a smoke
    test of the model list."""

    def runTest(self):
        import importlib.util
        import unittest

        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Testing", "Python",
                            "SlicerMedSegModuleTest.py")
        if not os.path.exists(path):
            slicer.mrmlScene.Clear()
            models = SlicerMedSegLogic().segmentation.listModels(wait=True, askConfirmation=False)
            self.assertTrue(any(m.name == "phantom-unet" for m in models))
            self.delayDisplay("Model list read; the full tests are in the source tree.")
            return
        spec = importlib.util.spec_from_file_location("SlicerMedSegModuleTest", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        suite = unittest.TestLoader().loadTestsFromTestCase(module.SlicerMedSegModuleTest)
        result = unittest.TextTestRunner(verbosity=2).run(suite)
        self.assertTrue(result.wasSuccessful(), "SlicerMedSegModuleTest failed")
