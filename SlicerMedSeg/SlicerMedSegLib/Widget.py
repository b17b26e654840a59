"""The module panel: input, model, options, Apply/Cancel with progress and log, refine, fine-tuning.

A binding only: it connects the widgets' signals and copies values between the widgets and the
pure-Python decisions of ``Panel`` (enabled states, button texts, progress and time left, the model
list, the modality warning, the fine-tune defaults, how a run ended), which the tests drive. It
holds the logic; the logic never holds it (it reports through callbacks).
"""

import time

import qt
import slicer
from slicer.util import VTKObservationMixin

from . import Panel, Parameters
from .Parameters import DEVICES, FinetuneParameters, SegmentationParameters
from .SceneLoader import ATTR_MODEL, ROLE_INPUT, reportSummary, segmentAt, setRegionsVisible
from .SegmentationLogic import Outcome

MODEL_ROLE = qt.Qt.UserRole


class MedSegPanel(VTKObservationMixin):
    def __init__(self, moduleWidget, logic):
        VTKObservationMixin.__init__(self)
        self.moduleWidget = moduleWidget
        self.logic = logic
        self.ui = None
        self.tracker = None
        self.runningKind = None  # "segment", "finetune" or "refine" while the worker runs one
        self.promptNode = None  # the markups node observed for placed points
        self.lastResult = None
        self.pendingModelSelection = None
        self._restoring = False

    # ---- construction -----------------------------------------------------------------------------
    def setup(self):
        uiWidget = slicer.util.loadUI(self.moduleWidget.resourcePath("UI/SlicerMedSeg.ui"))
        self.moduleWidget.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.ui.progressBar.setRange(0, Panel.PROGRESS_STEPS)
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
        self.ui.refineSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onRefineSegmentationChanged)
        self.ui.refinePromptSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onRefinePromptChanged)
        self.ui.refineOrganComboBox.connect("currentIndexChanged(int)", self.updateButtons)
        self.ui.refineKindComboBox.connect("currentIndexChanged(int)", self.updateButtons)
        self.ui.refineButton.connect("clicked(bool)", self.onRefineButton)
        self.ui.refinePlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        # Enter refines while the section is open (the point is placed in a view, which keeps the focus)
        self.refineShortcut = qt.QShortcut(qt.QKeySequence(qt.Qt.Key_Return), slicer.util.mainWindow())
        self.refineShortcut.connect("activated()", self.onRefineShortcut)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.restoreSettings()
        self.updateButtons()

    def enter(self):
        """Panel shown: list the models if the packages are already there (never install here)."""
        if self.ui.modelComboBox.count == 0 and self.logic.installLogic is not None and \
                self.logic.installLogic.isReady():
            self.refreshModels(askConfirmation=False)

    def cleanup(self):
        self.logic.shutdown()
        self.refineShortcut.setEnabled(False)
        self.removeObservers()

    # ---- settings -----------------------------------------------------------------------------------
    def segmentationParameters(self):
        return Panel.segmentationParameters(
            self.currentModelName(), self.ui.deviceComboBox.currentIndex, self.ui.ttaCheckBox.checked,
            self.ui.confidenceCheckBox.checked, self.ui.confidenceThresholdSpinBox.value,
            self.ui.regionsCheckBox.checked)

    def finetuneParameters(self):
        segmentation = self.ui.correctionSelector.currentNode()
        return Panel.finetuneParameters(segmentation.GetAttribute(ATTR_MODEL) if segmentation is not None else None,
                                        self.currentModelName(), self.ui.stepsSpinBox.value,
                                        self.ui.modelNameLineEdit.text, self.ui.deviceComboBox.currentIndex)

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
            entries = Panel.modelEntries(outcome.models)
            for entry in entries:
                combo.addItem(entry.text, entry.name)
                combo.setItemData(combo.count - 1, entry.tooltip, qt.Qt.ToolTipRole)
            combo.setCurrentIndex(Panel.modelIndex([e.name for e in entries], wanted))
        finally:
            combo.blockSignals(False)
        self.onModelChanged()
        self.onRefineSegmentationChanged(self.ui.refineSegmentationSelector.currentNode())

    def onModelChanged(self, *unused):
        self.ui.modelInfoLabel.setText(Panel.modelInfoText(self.logic.modelInfo(self.currentModelName())))
        self.updateModalityWarning()
        self.saveSettings()
        self.updateButtons()

    def updateModalityWarning(self):
        text = Panel.modalityWarning(lambda: self.logic.modalityWarning(self.ui.inputVolumeSelector.currentNode(),
                                                                        self.currentModelName()))
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

    # ---- refine -------------------------------------------------------------------------------------
    def refineVolume(self):
        """The volume the segmentation to refine was made on (else the input volume)."""
        segmentation = self.ui.refineSegmentationSelector.currentNode()
        volume = segmentation.GetNodeReference(ROLE_INPUT) if segmentation is not None else None
        return volume or self.ui.inputVolumeSelector.currentNode()

    def onRefineSegmentationChanged(self, node):
        """The organs offered are the labels of the model that made the segmentation (an organ the
        user deleted can be brought back)."""
        model = self.logic.modelInfo(node.GetAttribute(ATTR_MODEL) or "") if node is not None else None
        combo = self.ui.refineOrganComboBox
        current = combo.currentText
        combo.blockSignals(True)
        try:
            combo.clear()
            organs = model.labelNames if model is not None else []
            for name in organs:
                combo.addItem(name)
            combo.setCurrentIndex(Panel.organIndex(organs, None, current))
        finally:
            combo.blockSignals(False)
        self.updateButtons()

    def onRefinePromptChanged(self, node):
        if self.promptNode is not None:
            self.removeObserver(self.promptNode, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                                self.onRefinePointPlaced)
        self.promptNode = node
        self.ui.refinePlaceWidget.setCurrentNode(node)
        if node is not None and node.IsA("vtkMRMLMarkupsFiducialNode"):
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onRefinePointPlaced)
        self.updateButtons()

    def onRefinePointPlaced(self, caller=None, event=None):
        """A point was placed: preselect the organ of the segment under it."""
        segmentation = self.ui.refineSegmentationSelector.currentNode()
        prompt = self.logic.promptFor(self.promptNode, self.refineVolume(), "?") if segmentation is not None else None
        if prompt is not None and "point" in prompt:
            position = [0.0, 0.0, 0.0]
            self.promptNode.GetNthControlPointPositionWorld(self.promptNode.GetNumberOfControlPoints() - 1, position)
            organs = [self.ui.refineOrganComboBox.itemText(i) for i in range(self.ui.refineOrganComboBox.count)]
            index = Panel.organIndex(organs, segmentAt(segmentation, position), self.ui.refineOrganComboBox.currentText)
            self.ui.refineOrganComboBox.setCurrentIndex(index)
        self.updateButtons()

    def refinePrompt(self):
        node = self.promptNode
        if node is None:
            return None
        kind = Panel.refineKind(node.IsA("vtkMRMLMarkupsROINode"), self.ui.refineKindComboBox.currentIndex)
        return self.logic.promptFor(node, self.refineVolume(), self.ui.refineOrganComboBox.currentText,
                                    "negative" if kind == "negative" else "point")

    def canRefine(self):
        try:
            hasPrompt = self.refinePrompt() is not None
        except ValueError:
            hasPrompt = False
        return Panel.refineReady(self.ui.refineSegmentationSelector.currentNode() is not None,
                                 self.refineVolume() is not None, hasPrompt, self.ui.refineOrganComboBox.currentText)

    def saveUndoState(self, segmentationNode):
        """One undo step in the Segment Editor for the refine, when the editor shows this segmentation."""
        module = getattr(slicer.modules, "segmenteditor", None)
        widget = module.widgetRepresentation() if module is not None else None
        editor = getattr(widget.self(), "editor", None) if widget is not None else None
        if editor is not None and editor.segmentationNode() == segmentationNode:
            editor.saveStateForUndo()

    def onRefineShortcut(self):
        if not self.ui.refineCollapsibleButton.collapsed and self.ui.refineButton.enabled:
            self.onRefineButton()

    def onRefineButton(self, *unused):
        if self.runningKind == Panel.REFINE:
            self.ui.statusLabel.setText("Cancelling...")
            self.logic.cancel()
            return
        with slicer.util.tryWithErrorDisplay("Could not start the refine.", waitCursor=True):
            segmentation = self.ui.refineSegmentationSelector.currentNode()
            prompt = self.refinePrompt()
            if prompt is None:
                raise ValueError("Place a point on the organ (or a region of interest around it) first.")
            self.startRun(Panel.REFINE)
            try:
                self.logic.refine(segmentation, self.refineVolume(), [prompt],
                                  device=Parameters.DEVICES[max(0, self.ui.deviceComboBox.currentIndex)], wait=False,
                                  on_event=self.onEvent, on_finished=self.onRefineFinished,
                                  before_edit=lambda: self.saveUndoState(segmentation))
            except Exception:
                self.endRun("Not started.")
                raise

    def onRefineFinished(self, outcome):
        self.finish(Panel.refineEnding(outcome), "SlicerMedSeg")

    def updateButtons(self, *unused):
        state = Panel.buttons(self.runningKind, self.ui.inputVolumeSelector.currentNode() is not None,
                              self.currentModelName(), self.ui.modelComboBox.count,
                              self.ui.correctionSelector.currentNode() is not None,
                              self.ui.finetuneVolumeSelector.currentNode() is not None, self.canRefine())
        self.ui.applyButton.setText(state.applyText)
        self.ui.applyButton.setEnabled(state.applyEnabled)
        self.ui.finetuneButton.setText(state.finetuneText)
        self.ui.finetuneButton.setEnabled(state.finetuneEnabled)
        self.ui.refineButton.setText(state.refineText)
        self.ui.refineButton.setEnabled(state.refineEnabled)
        for widget in (self.ui.inputVolumeSelector, self.ui.modelComboBox, self.ui.refreshModelsButton,
                       self.ui.optionsCollapsibleButton, self.ui.correctionSelector, self.ui.finetuneVolumeSelector,
                       self.ui.stepsSpinBox, self.ui.modelNameLineEdit, self.ui.refineSegmentationSelector,
                       self.ui.refinePromptSelector, self.ui.refineOrganComboBox, self.ui.refineKindComboBox):
            widget.setEnabled(state.inputsEnabled)

    # ---- running ------------------------------------------------------------------------------------
    def appendLog(self, text):
        self.ui.logTextEdit.appendPlainText(time.strftime("%H:%M:%S ") + text)

    def startRun(self, kind):
        self.runningKind = kind
        self.tracker = Panel.tracker(kind)
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
        line = Panel.logLine(event)
        if line:
            self.appendLog(line)
        if self.tracker is not None and self.tracker.update(event):
            value, text = Panel.progress(self.tracker)
            self.ui.progressBar.setValue(value)
            self.ui.statusLabel.setText(text)

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

    def finish(self, ending, title):
        for line in ending.log:
            self.appendLog(line)
        self.endRun(ending.status)
        if ending.errorDialog:
            slicer.util.errorDisplay(ending.errorDialog, windowTitle=title)

    def onSegmentFinished(self, outcome):
        if outcome.ok:
            self.lastResult = outcome.segmentationNode
            self.ui.correctionSelector.setCurrentNode(outcome.segmentationNode)
            self.ui.refineSegmentationSelector.setCurrentNode(outcome.segmentationNode)
            self.ui.finetuneVolumeSelector.setCurrentNode(self.ui.inputVolumeSelector.currentNode())
        self.finish(Panel.segmentEnding(outcome, reportSummary(outcome.report) if outcome.ok else None), "SlicerMedSeg")

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
        ending = Panel.finetuneEnding(outcome)
        self.finish(ending, "SlicerMedSeg")
        if ending.selectModel:
            self.ui.modelNameLineEdit.setText("")
            self.refreshModels(select=ending.selectModel, askConfirmation=False)
