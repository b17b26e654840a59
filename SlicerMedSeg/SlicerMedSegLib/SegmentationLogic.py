"""Segment, fine-tune and refine: one logic call each serves the panel, batch scripts and tests.

``logic.segment(volume, params, wait=False, on_event=cb, on_finished=done)`` writes the volume
to a temporary folder, sends a ``segment`` request to the session's long-lived ``medseg worker``
(``[PythonSlicer, -m, medseg_core, worker]``, started on first use, see ``WorkerClient``), reports
every protocol event to ``on_event`` (from Qt's event loop: a QTimer drains the worker's queue),
loads the outputs into the scene and calls ``on_finished(outcome)``; the temporary folder is
removed in every case. ``wait=True`` blocks and returns the outcome (batch scripts, tests).
``logic.finetune(segmentation, volume, params, ...)`` and ``logic.refine(segmentation, volume,
prompts, ...)`` work the same way. ``logic.cancel()`` ends the worker's whole process tree within
2 s; the next request starts a new one, as it does after a worker died.

The logic never imports the widget; it talks through callbacks and the ``Signal`` objects
``eventReceived`` and ``runFinished``.
"""

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import slicer

from . import Commands, MarkupsPrompts, SceneLoader
from .Models import intensity_stats, modality_warning, parse_models_json
from .Parameters import FinetuneParameters, SegmentationParameters
from .ProcessRunner import ProcessRunner
from .Protocol import FINETUNE_STAGES, REFINE_STAGES, SEGMENT_STAGES, Event
from .Signal import Signal
from .VolumeFiles import VolumeFiles
from .WorkerClient import WorkerClient



@dataclass
class Outcome:
    """How a run ended, and what it put in the scene."""

    kind: str  # "segment", "finetune", "refine" or "models"
    ok: bool = False
    cancelled: bool = False
    error: str = ""
    returncode: Optional[int] = None
    seconds: float = 0.0
    segmentationNode: object = None
    confidenceNode: object = None
    regionsSegmentationNode: object = None
    roiNodes: list = field(default_factory=list)
    report: dict = field(default_factory=dict)
    model: Optional[str] = None  # finetune: the new model's name
    modelPath: Optional[str] = None
    diceBefore: Optional[float] = None
    diceAfter: Optional[float] = None
    perLabel: dict = field(default_factory=dict)  # finetune: {organ: {"before", "after", "cases"}}
    models: list = field(default_factory=list)  # models: the ModelInfo list
    changes: list = field(default_factory=list)  # refine: per prompt, what changed (STEM_refine.json)


class Job:
    """One running child: ``cancel()``, ``done``, ``outcome``."""

    def __init__(self, runner, kind, stages, finalize, on_finished, tempDir=None):
        self.runner = runner
        self.kind = kind
        self.stages = stages
        self.tempDir = tempDir
        self.outcome: Optional[Outcome] = None
        self._finalize = finalize
        self._onFinished = on_finished
        self._pump = None
        runner.finished.connect(self._onRunnerFinished)

    @property
    def done(self):
        return self.outcome is not None

    def cancel(self):
        self.runner.cancel()

    def _onRunnerFinished(self, result):
        outcome = Outcome(kind=self.kind, cancelled=result.cancelled, error=result.error,
                          returncode=result.returncode, seconds=result.seconds)
        try:
            if result.ok:
                self._finalize(result, outcome)
                outcome.ok = not outcome.error
        except Exception as exc:  # loading into the scene failed: report it like a child's error
            outcome.ok, outcome.error = False, f"{type(exc).__name__}: {exc}"
        finally:
            if self.tempDir:
                shutil.rmtree(self.tempDir, ignore_errors=True)
        self.outcome = outcome
        if self._onFinished is not None:
            self._onFinished(outcome)


class SegmentationLogic:
    """Runs ``medseg`` in a child process and loads its results.

    Args:
        moduleDir: the module's folder (for the bundled engine and the requirements).
        installLogic: an ``InstallLogic`` (or a stand-in); ``None`` skips the dependency check.
        python: the interpreter of the child (default: Slicer's PythonSlicer).
    """

    def __init__(self, moduleDir=None, installLogic=None, python=None):
        self.moduleDir = moduleDir
        self.installLogic = installLogic
        self.python = python or self.slicerPython()
        self.eventReceived = Signal("kind", "event")
        self.runFinished = Signal("outcome")
        self.job: Optional[Job] = None  # the running segment, finetune or refine
        self._sideJobs = set()  # model listings, which may run beside it
        self.models = []
        self._worker: Optional[WorkerClient] = None
        self.volumeFiles = VolumeFiles(lambda: self._tempDir("medseg-volumes-"))

    # ---- environment ----------------------------------------------------------------------------
    @staticmethod
    def slicerPython():
        """PythonSlicer (Slicer's Python with Slicer's environment); ``sys.executable`` elsewhere."""
        found = shutil.which("PythonSlicer")
        if found:
            return found
        folder = os.path.dirname(sys.executable)
        for name in ("PythonSlicer", "PythonSlicer.exe"):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
        return sys.executable

    def environment(self, device="auto"):
        pythonpath = self.installLogic.enginePythonPath() if self.installLogic is not None else None
        return Commands.child_environment(device, pythonpath=pythonpath)

    def ensureDependencies(self, askConfirmation=True):
        """Install what is missing (one dialog unless ``askConfirmation`` is False). In testing mode
        nothing is installed: a missing package is an error."""
        if self.installLogic is None:
            return True
        if slicer.app.testingEnabled():
            plan = self.installLogic.plan()
            if not plan.empty:
                raise RuntimeError("Testing mode installs nothing; install first:\n" + plan.describe())
            return True
        if not self.installLogic.ensureReady(askConfirmation=askConfirmation):
            raise RuntimeError("SlicerMedSeg cannot run without its Python packages (installation declined).")
        return True

    @property
    def busy(self):
        return self.job is not None and not self.job.done

    def cancel(self):
        """End the running child's whole process tree (no-op when idle)."""
        if self.busy:
            self.job.cancel()

    @property
    def worker(self) -> WorkerClient:
        """The session's ``medseg worker``: it starts with the first request that needs it."""
        if self._worker is None:
            self._worker = WorkerClient(Commands.worker_command(self.python), env=self.environment())
        return self._worker

    def shutdown(self):
        """End the worker (the module's cleanup and Slicer's exit) and forget the cached volumes."""
        self.cancel()
        if self._worker is not None:
            self._worker.shutdown()
        self.volumeFiles.clear()

    @staticmethod
    def _tempDir(prefix):
        base = slicer.app.temporaryPath if slicer.app is not None else None
        return tempfile.mkdtemp(prefix=prefix, dir=base if base and os.path.isdir(base) else None)

    def _start(self, kind, runner, stages, finalize, wait, on_event, on_finished, tempDir=None, exclusive=True):
        """Run ``runner`` (a ``ProcessRunner`` or a worker request) as the job ``kind``."""
        if exclusive and self.busy:
            raise RuntimeError("SlicerMedSeg is already running; cancel it first.")
        if on_event is not None:
            runner.eventReceived.connect(on_event)
        runner.eventReceived.connect(lambda event: self.eventReceived.emit(kind, event))

        def finished(outcome):
            self._sideJobs.discard(job)
            if on_finished is not None:
                on_finished(outcome)
            self.runFinished.emit(outcome)

        job = Job(runner, kind, stages, finalize, finished, tempDir=tempDir)
        if exclusive:
            self.job = job
        else:
            self._sideJobs.add(job)  # keeps the job (and its timer) alive until it ends
        if on_event is not None:
            on_event(Event(kind="log", message=runner.describe(), source="command"))
        runner.start()
        if wait:
            if not job.done:
                runner.wait()
            return job.outcome
        if not job.done:
            from .EventPump import EventPump

            job._pump = EventPump(runner).start()
        return job

    # ---- models ---------------------------------------------------------------------------------
    def listModels(self, wait=True, on_finished=None, askConfirmation=True):
        """``medseg models --json`` -> ModelInfo list (also kept in ``self.models``)."""
        self.ensureDependencies(askConfirmation)

        def finalize(result, outcome):
            outcome.models = parse_models_json(result.stdout)
            self.models = outcome.models

        runner = ProcessRunner(Commands.models_command(self.python), env=self.environment(), protocol=False)
        outcome = self._start("models", runner, (), finalize, wait, None, on_finished, exclusive=False)
        if wait:
            if not outcome.ok:
                raise RuntimeError(f"Could not list the models: {outcome.error}")
            return outcome.models
        return outcome

    def modelInfo(self, name):
        return next((m for m in self.models if m.name == name), None)

    def _installedModel(self, name, askConfirmation, hint=""):
        """The model called ``name`` once dependencies are in place and the list is read; a
        ValueError naming it when it is not installed."""
        self.ensureDependencies(askConfirmation)
        if not self.models:
            self.listModels(wait=True, askConfirmation=False)
        model = self.modelInfo(name)
        if model is None:
            raise ValueError(f"Model {name} is not installed{hint}.")
        return model

    # ---- checks ---------------------------------------------------------------------------------
    @staticmethod
    def volumeStats(volumeNode):
        array = slicer.util.arrayFromVolume(volumeNode)
        step = max(1, int(round((array.size / 2e6) ** (1 / 3))))  # about 2 M voxels at most
        return intensity_stats(array[::step, ::step, ::step])

    def modalityWarning(self, volumeNode, modelName):
        """A warning when the volume does not look like the model's modality (empty when fine)."""
        model = self.modelInfo(modelName)
        if volumeNode is None or model is None or volumeNode.GetImageData() is None:
            return ""
        return modality_warning(model.modality, self.volumeStats(volumeNode))

    # markups nodes -> the engine's boxes and prompts, in the volume's own LPS space (MarkupsPrompts)
    roiBoxLPS = staticmethod(MarkupsPrompts.roiBoxLPS)
    pointLPS = staticmethod(MarkupsPrompts.pointLPS)
    promptFor = staticmethod(MarkupsPrompts.promptFor)

    # ---- segment --------------------------------------------------------------------------------
    def segment(self, inputVolume, params: SegmentationParameters, roiNode=None, wait=False, on_event=None,
                on_finished=None, askConfirmation=True):
        """Segment ``inputVolume`` (never modified). Returns the Outcome with ``wait=True``, else the Job."""
        if inputVolume is None or inputVolume.GetImageData() is None:
            raise ValueError("Select an input volume.")
        if inputVolume.GetImageData().GetNumberOfScalarComponents() != 1:
            raise ValueError(f"{inputVolume.GetName()} has several components per voxel; select a scalar volume.")
        if roiNode is not None:
            params.roi_lps = self.roiBoxLPS(roiNode, inputVolume)
        params.validate()
        model = self._installedModel(params.model, askConfirmation, " (refresh the model list)")
        if len(model.channels) > 1:
            raise ValueError(f"{model.name} takes {len(model.channels)} images ({', '.join(model.channels)}); "
                             "run it with the medseg command line.")
        tempDir = self._tempDir("medseg-segment-")
        try:
            inputPath = self.volumeFile(inputVolume)  # the file a later refine of this volume reuses
            outputDir = os.path.join(tempDir, "output")
            request = self.worker.request("segment", Commands.segment_args(params, inputPath, outputDir))
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        labelColors = model.labelColors

        def finalize(result, outcome):
            reports = result.outputs.get("reports") if isinstance(result.outputs, dict) else None
            outputs = reports[0].get("outputs") if reports else None
            if not outputs:
                from .Protocol import discover_segment_outputs

                outputs = discover_segment_outputs(outputDir, os.path.basename(inputPath)[:-len(".nrrd")])
            if not outputs.get("segmentation"):
                outcome.error = "medseg finished without writing a segmentation"
                return
            loaded = SceneLoader.loadSegmentResults(
                outputs, inputVolume, params.model, model.version, labelColors,
                showRegions=params.show_regions, showConfidence=params.confidence)
            outcome.segmentationNode = loaded.segmentationNode
            outcome.confidenceNode = loaded.confidenceNode
            outcome.regionsSegmentationNode = loaded.regionsSegmentationNode
            outcome.roiNodes = loaded.roiNodes
            outcome.report = loaded.report

        return self._start("segment", request, SEGMENT_STAGES, finalize, wait, on_event, on_finished, tempDir=tempDir)

    # ---- fine-tune ------------------------------------------------------------------------------
    def finetune(self, segmentationNode, referenceVolume, params: FinetuneParameters, wait=False, on_event=None,
                 on_finished=None, askConfirmation=True):
        """Fine-tune ``params.model`` on ``segmentationNode`` (as corrected) over ``referenceVolume``.
        The outcome names the new model (``outcome.model``); refresh the list to see it."""
        if segmentationNode is None:
            raise ValueError("Select the corrected segmentation.")
        if referenceVolume is None or referenceVolume.GetImageData() is None:
            raise ValueError("Select the volume the segmentation corrects.")
        if not params.model:
            params.model = segmentationNode.GetAttribute(SceneLoader.ATTR_MODEL) or ""
        params.validate()
        model = self._installedModel(params.model, askConfirmation)
        tempDir = self._tempDir("medseg-finetune-")
        try:
            imagePath = SceneLoader.writeVolume(referenceVolume, os.path.join(tempDir, "image.nrrd"))
            labelPath = os.path.join(tempDir, "correction.seg.nrrd")
            written = SceneLoader.writeCorrection(segmentationNode, referenceVolume, model.labelNames, labelPath)
            request = self.worker.request("finetune", Commands.finetune_args(params, [(imagePath, labelPath)]))
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        if on_event is not None:
            on_event(Event(kind="log", message=f"Correction: {', '.join(written)}", source="command"))

        def finalize(result, outcome):
            out = result.outputs if isinstance(result.outputs, dict) else {}
            outcome.model, outcome.modelPath = out.get("name"), out.get("model")
            outcome.diceBefore, outcome.diceAfter = out.get("dice_before"), out.get("dice_after")
            outcome.perLabel = out.get("per_label") if isinstance(out.get("per_label"), dict) else {}
            self.models = []  # the list changed: the next listModels() reads it again

        return self._start("finetune", request, FINETUNE_STAGES, finalize, wait, on_event, on_finished,
                           tempDir=tempDir)

    # ---- refine ---------------------------------------------------------------------------------
    def volumeFile(self, volumeNode):
        """``volumeNode`` as the file the worker reads (``VolumeFiles``: written once,
        rewritten only when it changed)."""
        return self.volumeFiles.path(volumeNode)

    def refine(self, segmentationNode, volumeNode, prompts, device="auto", wait=False, on_event=None,
               on_finished=None, before_edit=None, askConfirmation=True):
        """Re-segment the prompted organs of ``segmentationNode`` (a result over ``volumeNode``,
        perhaps edited) with the model that made it. ``prompts`` are ``Commands.refine_prompt``
        dicts (LPS mm, in the volume's own space). Each prompted segment changes only inside the
        region the engine reports (``outcome.changes``); the others are untouched. ``before_edit()``
        is called just before the segments change (the panel saves the Segment Editor's undo state)."""
        if segmentationNode is None:
            raise ValueError("Select the segmentation to refine.")
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError("Select the volume the segmentation was made on.")
        modelName = segmentationNode.GetAttribute(SceneLoader.ATTR_MODEL) or ""
        if not modelName:
            raise ValueError(f"{segmentationNode.GetName()} was not made by a MedSeg model; segment the volume first.")
        model = self._installedModel(modelName, askConfirmation)
        inputPath = self.volumeFile(volumeNode)
        tempDir = self._tempDir("medseg-refine-")
        try:
            labelsPath = os.path.join(tempDir, "current.seg.nrrd")
            SceneLoader.writeCorrection(segmentationNode, volumeNode, model.labelNames, labelsPath)
            outputDir = os.path.join(tempDir, "output")
            request = self.worker.request("refine", Commands.refine_args(modelName, device, inputPath, labelsPath,
                                                                         outputDir, prompts))
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise

        def finalize(result, outcome):
            record = result.outputs if isinstance(result.outputs, dict) else {}
            outcome.changes = record.get("changes", [])
            outcome.report = record
            if any(c.get("box_index") for c in outcome.changes):
                if before_edit is not None:
                    before_edit()
                SceneLoader.applyRefinement(segmentationNode, volumeNode, record["outputs"]["segmentation"],
                                            outcome.changes)
            outcome.segmentationNode = segmentationNode

        return self._start("refine", request, REFINE_STAGES, finalize, wait, on_event, on_finished, tempDir=tempDir)
