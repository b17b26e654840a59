"""The module panel: input, model, options, Apply/Cancel with progress and log, fine-tuning.

It holds the logic; the logic never holds it (it reports through callbacks).
"""

import time

import qt
import slicer
from slicer.util import VTKObservationMixin

from . import Parameters
from .Parameters import DEVICES, FinetuneParameters, SegmentationParameters
from .Protocol import FINETUNE_STAGES, SEGMENT_STAGES, ProgressTracker
from .SceneLoader import ATTR_MODEL, ROLE_INPUT, reportSummary, setRegionsVisible
from .SegmentationLogic import Outcome

MODEL_ROLE = qt.Qt.UserRole


class MedSegPanel(VTKObservationMixin):
    def __init__(self, moduleWidget, logic):
        VTKObservationMixin.__init__(self)
        self.moduleWidget = moduleWidget
        self.logic = logic
        self.ui = None
        self.tracker = None
        self.runningKind = None  # "segment" or "finetune" while a child runs
        self.lastResult = None
        self.pendingModelSelection = None
        self._restoring = False

    # ---- construction -----------------------------------------------------------------------------
    def setup(self):
        uiWidget = slicer.util.loadUI(self.moduleWidget.resourcePath("UI/SlicerMedSeg.ui"))
        self.moduleWidget.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.setVisible(False)
        self.ui.modalityWarningLabel.setVisible(False)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.onRefreshModels)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.saveSettings)
        self.ui.ttaCheckBox.connect("toggled(bool)", self.saveSettings)
        self.ui.confidenceCheckBox.connect("toggled(bool)", self.onConfidenceToggled)
        self.ui.confidenceThresholdSpinBox.connect("valueChanged(double)", self.saveSettings)
        self.ui.regionsCheckBox.connect("toggled(bool)", self.onRegionsToggled)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.correctionSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onCorrectionChanged)
        self.ui.finetuneVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.ui.stepsSpinBox.connect("valueChanged(int)", self.saveSettings)
        self.ui.finetuneButton.connect("clicked(bool)", self.onFinetuneButton)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.restoreSettings()
        self.updateButtons()

    def enter(self):
        """Panel shown: list the models if the packages are already there (never install here)."""
        if self.ui.modelComboBox.count == 0 and self.logic.installLogic is not None and \
                self.logic.installLogic.isReady():
            self.refreshModels(askConfirmation=False)

    def cleanup(self):
        self.logic.cancel()
        self.removeObservers()

    # ---- settings -----------------------------------------------------------------------------------
    def segmentationParameters(self):
        return SegmentationParameters(
            model=self.currentModelName(), device=DEVICES[max(0, self.ui.deviceComboBox.currentIndex)],
            tta=self.ui.ttaCheckBox.checked, confidence=self.ui.confidenceCheckBox.checked,
            confidence_threshold=self.ui.confidenceThresholdSpinBox.value, show_regions=self.ui.regionsCheckBox.checked)

    def finetuneParameters(self):
        segmentation = self.ui.correctionSelector.currentNode()
        parent = segmentation.GetAttribute(ATTR_MODEL) if segmentation is not None else None
        return FinetuneParameters(model=parent or self.currentModelName(), steps=self.ui.stepsSpinBox.value,
                                  name=self.ui.modelNameLineEdit.text.strip(),
                                  device=DEVICES[max(0, self.ui.deviceComboBox.currentIndex)])

    def saveSettings(self, *unused):
        if self._restoring or self.ui is None:
            return
        settings = qt.QSettings()
        Parameters.save(self.segmentationParameters(), settings)
        Parameters.save(self.finetuneParameters(), settings)

    def restoreSettings(self):
        settings = qt.QSettings()
        seg = Parameters.load(SegmentationParameters, settings)
        ft = Parameters.load(FinetuneParameters, settings)
        self._restoring = True
        try:
            self.ui.deviceComboBox.setCurrentIndex(DEVICES.index(seg.device))
            self.ui.ttaCheckBox.setChecked(seg.tta)
            self.ui.confidenceCheckBox.setChecked(seg.confidence)
            self.ui.confidenceThresholdSpinBox.setValue(seg.confidence_threshold)
            self.ui.regionsCheckBox.setChecked(seg.show_regions)
            self.ui.stepsSpinBox.setValue(ft.steps)
            self.pendingModelSelection = seg.model or None
        finally:
            self._restoring = False

    # ---- models -------------------------------------------------------------------------------------
    def currentModelName(self):
        index = self.ui.modelComboBox.currentIndex
        return self.ui.modelComboBox.itemData(index, MODEL_ROLE) if index >= 0 else ""

    def onRefreshModels(self, *unused):
        with slicer.util.tryWithErrorDisplay("Could not list the models.", waitCursor=True):
            self.refreshModels(askConfirmation=True)

    def refreshModels(self, select=None, askConfirmation=True):
        """List the models in a child process (installing the packages first if the user agrees)."""
        if select:
            self.pendingModelSelection = select
        self.ui.refreshModelsButton.setEnabled(False)
        self.ui.modelInfoLabel.setText("Reading the installed models...")
        try:
            self.logic.listModels(wait=False, on_finished=self.onModelsListed, askConfirmation=askConfirmation)
        except Exception:
            self.ui.refreshModelsButton.setEnabled(True)
            self.ui.modelInfoLabel.setText("Models not loaded: press Refresh.")
            raise

    def onModelsListed(self, outcome):
        self.ui.refreshModelsButton.setEnabled(True)
        if not outcome.ok:
            self.ui.modelInfoLabel.setText(f"Could not list the models: {outcome.error}")
            self.appendLog(f"medseg models: {outcome.error}")
            return
        wanted = self.pendingModelSelection or self.currentModelName()
        self.pendingModelSelection = None
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        try:
            combo.clear()
            for model in outcome.models:
                combo.addItem(model.displayText(), model.name)
                combo.setItemData(combo.count - 1, model.summary(), qt.Qt.ToolTipRole)
            names = [m.name for m in outcome.models]
            combo.setCurrentIndex(names.index(wanted) if wanted in names else (0 if names else -1))
        finally:
            combo.blockSignals(False)
        self.onModelChanged()

    def onModelChanged(self, *unused):
        model = self.logic.modelInfo(self.currentModelName())
        self.ui.modelInfoLabel.setText(model.summary() if model is not None else "No model.")
        self.updateModalityWarning()
        self.saveSettings()
        self.updateButtons()

    def updateModalityWarning(self):
        text = ""
        try:
            text = self.logic.modalityWarning(self.ui.inputVolumeSelector.currentNode(), self.currentModelName())
        except Exception as exc:  # a volume without readable voxels: say so rather than fail
            text = f"Could not check the intensities: {exc}"
        self.ui.modalityWarningLabel.setText(text)
        self.ui.modalityWarningLabel.setVisible(bool(text))

    # ---- options ------------------------------------------------------------------------------------
    def onInputChanged(self, *unused):
        self.updateModalityWarning()
        self.updateButtons()

    def onConfidenceToggled(self, checked):
        self.ui.confidenceThresholdSpinBox.setEnabled(checked)
        self.saveSettings()

    def onRegionsToggled(self, checked):
        setRegionsVisible(self.lastResult, checked)
        self.saveSettings()

    def onCorrectionChanged(self, node):
        volume = node.GetNodeReference(ROLE_INPUT) if node is not None else None
        if volume is not None:
            self.ui.finetuneVolumeSelector.setCurrentNode(volume)
        self.updateButtons()

    def onSceneEndClose(self, caller, event):
        self.lastResult = None
        self.updateButtons()

    def updateButtons(self, *unused):
        running = self.runningKind is not None
        canSegment = self.ui.inputVolumeSelector.currentNode() is not None and \
            (bool(self.currentModelName()) or self.ui.modelComboBox.count == 0)
        canFinetune = self.ui.correctionSelector.currentNode() is not None and \
            self.ui.finetuneVolumeSelector.currentNode() is not None
        self.ui.applyButton.setText("Cancel" if self.runningKind == "segment" else "Apply")
        self.ui.applyButton.setEnabled(self.runningKind == "segment" or (not running and canSegment))
        self.ui.finetuneButton.setText("Cancel" if self.runningKind == "finetune" else "Fine-tune")
        self.ui.finetuneButton.setEnabled(self.runningKind == "finetune" or (not running and canFinetune))
        for widget in (self.ui.inputVolumeSelector, self.ui.modelComboBox, self.ui.refreshModelsButton,
                       self.ui.optionsCollapsibleButton, self.ui.correctionSelector, self.ui.finetuneVolumeSelector,
                       self.ui.stepsSpinBox, self.ui.modelNameLineEdit):
            widget.setEnabled(not running)

    # ---- running ------------------------------------------------------------------------------------
    def appendLog(self, text):
        self.ui.logTextEdit.appendPlainText(time.strftime("%H:%M:%S ") + text)

    def startRun(self, kind):
        self.runningKind = kind
        self.tracker = ProgressTracker(SEGMENT_STAGES if kind == "segment" else FINETUNE_STAGES)
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(True)
        self.ui.statusLabel.setText("Starting...")
        self.updateButtons()

    def endRun(self, status):
        self.runningKind = None
        self.ui.progressBar.setVisible(False)
        self.ui.statusLabel.setText(status)
        self.updateButtons()

    def onEvent(self, event):
        """Every event of the child: the bar and status line follow, the log keeps the messages."""
        if event.kind in ("stage", "log", "result", "error"):
            prefix = f"[{event.stage}] " if event.stage else ("stderr: " if event.source == "stderr" else "")
            if event.message:
                self.appendLog(prefix + event.message)
        if self.tracker is not None and self.tracker.update(event):
            self.ui.progressBar.setValue(int(1000 * self.tracker.overall))
            self.ui.statusLabel.setText(self.tracker.status_text())

    def onApplyButton(self, *unused):
        if self.runningKind == "segment":
            self.ui.statusLabel.setText("Cancelling...")
            self.logic.cancel()
            return
        with slicer.util.tryWithErrorDisplay("Could not start the segmentation.", waitCursor=True):
            if not self.logic.models:
                self.logic.listModels(wait=True)
                self.onModelsListed(Outcome(kind="models", ok=True, models=self.logic.models))
            params = self.segmentationParameters()
            self.startRun("segment")
            try:
                self.logic.segment(self.ui.inputVolumeSelector.currentNode(), params,
                                   roiNode=self.ui.roiSelector.currentNode(), wait=False, on_event=self.onEvent,
                                   on_finished=self.onSegmentFinished)
            except Exception:
                self.endRun("Not started.")
                raise

    def onSegmentFinished(self, outcome):
        if outcome.cancelled:
            self.endRun("Cancelled: nothing was added to the scene.")
            self.appendLog("Cancelled.")
            return
        if not outcome.ok:
            self.endRun(f"Failed: {outcome.error}")
            slicer.util.errorDisplay(f"Segmentation failed:\n{outcome.error}", windowTitle="SlicerMedSeg")
            return
        self.lastResult = outcome.segmentationNode
        summary = reportSummary(outcome.report)
        if summary:
            self.appendLog(summary)
        self.ui.correctionSelector.setCurrentNode(outcome.segmentationNode)
        self.ui.finetuneVolumeSelector.setCurrentNode(self.ui.inputVolumeSelector.currentNode())
        hint = " Review the 'Low confidence' outline and the red overlay, correct in the Segment Editor, " \
               "then fine-tune." if outcome.confidenceNode is not None else ""
        self.endRun(f"Done in {outcome.seconds:.1f} s.{hint}")

    def onFinetuneButton(self, *unused):
        if self.runningKind == "finetune":
            self.ui.statusLabel.setText("Cancelling...")
            self.logic.cancel()
            return
        with slicer.util.tryWithErrorDisplay("Could not start fine-tuning.", waitCursor=True):
            params = self.finetuneParameters()
            self.startRun("finetune")
            try:
                self.logic.finetune(self.ui.correctionSelector.currentNode(),
                                    self.ui.finetuneVolumeSelector.currentNode(), params, wait=False,
                                    on_event=self.onEvent, on_finished=self.onFinetuneFinished)
            except Exception:
                self.endRun("Not started.")
                raise

    def onFinetuneFinished(self, outcome):
        if outcome.cancelled:
            self.endRun("Fine-tuning cancelled: no model was written.")
            return
        if not outcome.ok:
            self.endRun(f"Fine-tuning failed: {outcome.error}")
            slicer.util.errorDisplay(f"Fine-tuning failed:\n{outcome.error}", windowTitle="SlicerMedSeg")
            return
        dice = ""
        if outcome.diceBefore is not None and outcome.diceAfter is not None:
            dice = f" Dice on your correction: {outcome.diceBefore:.3f} before, {outcome.diceAfter:.3f} after."
        self.appendLog(f"New model {outcome.model} in {outcome.modelPath}.{dice}")
        self.endRun(f"New model {outcome.model}.{dice} It is selected: press Apply to re-run.")
        self.ui.modelNameLineEdit.setText("")
        self.refreshModels(select=outcome.model, askConfirmation=False)
