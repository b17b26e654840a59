"""Slicer's application, built from ``slicer-core`` as far as the module's non-GUI code needs it.

``slicer-core`` (PyPI, Kitware) is Slicer's own C++ core: the MRML scene and nodes, the logic of
the non-Qt modules and Slicer's ``slicer/util.py``. What it lacks is what Slicer's Qt application
(``qSlicerCoreApplication`` and the modules' Qt halves) creates at start-up. ``start()`` builds
those pieces the way Slicer does and puts them where the module's code finds them:

* ``slicer.mrmlScene``: a ``vtkMRMLScene`` with the default crosshair node;
* the application logic (``vtkSlicerApplicationLogic``) attached to the scene before any module
  logic, as ``qSlicerCoreApplication`` does (else the colour logic finds no files);
* ``slicer.modules.<name>.logic()`` for the module logics the code uses (colors, volumes,
  segmentations, subjecthierarchy, terminologies, markups, transforms, data), each given its
  share directory, the scene and the application logic, and registered with the application logic
  under its module name (so the segmentations logic finds the terminologies logic);
* Slicer's terminology files (the ``.term.json`` files that ``trame-slicer``'s wheel carries, the
  same files Slicer ships) loaded by the terminologies logic;
* the Red, Yellow and Green slice logics with their slice and slice-composite nodes, as the layout
  manager creates them;
* subject-hierarchy bookkeeping: every displayable or transform node added to the scene gets an
  item under the scene, as ``qSlicerSubjectHierarchyPluginLogic`` does on ``NodeAddedEvent``.

Emulated, because it is Qt (each a few lines below, none computes a result):

* ``slicer.app``: ``testingEnabled()``, ``temporaryPath`` and ``applicationLogic()``;
* ``qt.QTimer`` (for ``EventPump``): a timer the test fires by calling :func:`process_events`, as
  Qt's event loop would;
* ``slicer.ScriptedLoadableModule``: the base classes the module's files derive from (in Slicer a
  Python file over Qt widgets); the test base is ``unittest.TestCase`` with ``delayDisplay``
  printing its message.

Nothing else is emulated: nodes, storage, conversions, transforms and terminology lookups are
Slicer's own code.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import types
from pathlib import Path

SLICE_VIEWS = ("Red", "Yellow", "Green")


def terminology_directory() -> Path | None:
    """Slicer's terminology files, as installed by the ``trame-slicer`` wheel (not imported)."""
    spec = importlib.util.find_spec("trame_slicer")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "resources" / "terminologies"
    return folder if folder.is_dir() else None


class _Module:
    """``slicer.modules.<name>``: only ``logic()``."""

    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        return self._logic


class _App:
    """``slicer.app``: the three members the module's non-GUI code calls."""

    def __init__(self, application_logic, temporary_path: str):
        self._application_logic = application_logic
        self.temporaryPath = temporary_path

    def testingEnabled(self):
        return True

    def applicationLogic(self):
        return self._application_logic


class QTimer:
    """``qt.QTimer`` stand-in: started timers fire when the test calls :func:`process_events`."""

    active: list = []

    def __init__(self):
        self._callbacks = []
        self.timeout = types.SimpleNamespace(connect=self._callbacks.append)
        self.interval = 0

    def setInterval(self, ms):
        self.interval = ms

    def start(self):
        if self not in QTimer.active:
            QTimer.active.append(self)

    def stop(self):
        if self in QTimer.active:
            QTimer.active.remove(self)

    def isActive(self):
        return self in QTimer.active


def _scripted_loadable_module() -> types.ModuleType:
    import unittest

    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            print(message)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module


def process_events() -> None:
    """One turn of the event loop: fire every active timer once."""
    for timer in list(QTimer.active):
        for callback in list(timer._callbacks):
            callback()


class SlicerCoreApp:
    """The scene, the application logic and the module logics (see the module docstring)."""

    def __init__(self, temporary_path: str | None = None):
        import slicer

        self.slicer = slicer
        self.temporary_path = temporary_path or tempfile.mkdtemp(prefix="medseg-slicer-core-")
        self.scene = slicer.vtkMRMLScene()
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        self.scene.AddNode(crosshair)

        self.application_logic = slicer.vtkSlicerApplicationLogic()
        self.application_logic.SetHomeDirectory(self.temporary_path)  # no colour-table files there
        self.application_logic.SetShareDirectory("share")  # relative to the home directory
        self.application_logic.SetMRMLScene(self.scene)

        import vtk

        self.application_logic.SetSliceLogics(vtk.vtkCollection())
        self.application_logic.SetViewLogics(vtk.vtkCollection())
        self.logics = {}
        colors = self._register("colors", slicer.vtkSlicerColorLogic())
        self.application_logic.SetColorLogic(colors)
        colors.AddDefaultColorNodes()
        terminologies = terminology_directory()
        self._register("terminologies", slicer.vtkSlicerTerminologiesModuleLogic(), share=terminologies)
        self._register("volumes", slicer.vtkSlicerVolumesLogic())
        self._register("segmentations", slicer.vtkSlicerSegmentationsModuleLogic())
        self._register("subjecthierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic())
        self._register("markups", slicer.vtkSlicerMarkupsLogic())
        self._register("transforms", slicer.vtkSlicerTransformLogic())
        self._register("data", slicer.vtkSlicerDataModuleLogic())
        self.slice_logics = {}
        self._add_slice_views()
        self._observe_node_added()
        self.scene.AddObserver(slicer.vtkMRMLScene.EndCloseEvent, lambda *args: self._add_slice_views())

    _MODULE_NAMES = {"colors": "Colors", "terminologies": "Terminologies", "volumes": "Volumes",
                     "segmentations": "Segmentations", "subjecthierarchy": "SubjectHierarchy",
                     "markups": "Markups", "transforms": "Transforms", "data": "Data"}

    def _register(self, name, logic, share: Path | None = None):
        if share is not None:
            logic.SetModuleShareDirectory(str(share))
        logic.SetMRMLApplicationLogic(self.application_logic)
        logic.SetMRMLScene(self.scene)
        self.application_logic.SetModuleLogic(self._MODULE_NAMES[name], logic)
        self.logics[name] = logic
        return logic

    def _add_slice_views(self):
        """The layout's three slice views (slice node + slice-composite node each)."""
        import slicer

        for name in SLICE_VIEWS:
            logic = self.slice_logics.get(name)
            if logic is None:
                logic = slicer.vtkMRMLSliceLogic()
                logic.SetMRMLApplicationLogic(self.application_logic)
                logic.SetMRMLScene(self.scene)
                self.application_logic.GetSliceLogics().AddItem(logic)
                self.slice_logics[name] = logic
            if logic.GetSliceNode() is None or self.scene.GetNodeByID(logic.GetSliceNode().GetID()) is None:
                logic.AddSliceNode(name)

    def _observe_node_added(self):
        """Subject-hierarchy items for new nodes, as the subject-hierarchy plugins add them."""
        import slicer
        import vtk

        @vtk.calldata_type(vtk.VTK_OBJECT)
        def on_node_added(scene, event, node):
            if not isinstance(node, (slicer.vtkMRMLDisplayableNode, slicer.vtkMRMLTransformNode)):
                return
            if node.GetHideFromEditors() or scene.IsImporting() or scene.IsRestoring():
                return  # a scene being read brings its own hierarchy
            sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
            if sh is not None and not sh.GetItemByDataNode(node):
                sh.CreateItem(sh.GetSceneItemID(), node)

        self._node_added_callback = on_node_added  # keep it alive
        self.scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, on_node_added)

    def install(self):
        """Put the scene, the module logics and the application pieces where Slicer code looks."""
        slicer = self.slicer
        slicer.mrmlScene = self.scene
        slicer.modules = types.SimpleNamespace(**{name: _Module(logic) for name, logic in self.logics.items()})
        slicer.app = _App(self.application_logic, self.temporary_path)
        if "qt" not in sys.modules:
            sys.modules["qt"] = types.SimpleNamespace(QTimer=QTimer)
        if "slicer.ScriptedLoadableModule" not in sys.modules:
            sys.modules["slicer.ScriptedLoadableModule"] = slicer.ScriptedLoadableModule = _scripted_loadable_module()
        return self
