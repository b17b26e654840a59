"""Installs what the engine needs into Slicer's Python, on first use, after one confirmation.

Nothing is installed when the module is imported or its panel opened: ``ensureReady`` is called
when the user first presses Apply, Fine-tune or refreshes the model list. One dialog lists
everything (``Requirements.InstallPlan.describe``); then:

1. torch through the PyTorch extension (``PyTorchUtilsLogic().installTorch(...)``), which picks
   the CUDA build matching the driver;
2. the engine's requirements through pip with a constraints file pinning Slicer's numpy,
   SimpleITK, requests and torch (``slicer.packaging.pip_ensure`` on Slicer 5.12+, else
   ``slicer.util.pip_install``);
3. ``medseg_core`` itself, ``--no-deps``, from the engine bundled with the extension.

A restart is offered when a package that was already imported changed version.
"""

import importlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import slicer

from . import Requirements


class InstallLogic:
    def __init__(self, moduleDir):
        self.moduleDir = Path(moduleDir)
        self.requirementsPath = self.moduleDir / "Resources" / "requirements.txt"

    # ---- what is there ----------------------------------------------------------------------------
    def requirements(self):
        return Requirements.read_requirements(self.requirementsPath)

    def engineSource(self):
        return Requirements.find_engine_source(self.moduleDir)

    def plan(self):
        importlib.invalidate_caches()
        return Requirements.make_plan(self.requirements(), Requirements.installed_versions(), self.engineSource())

    def isReady(self):
        return self.plan().empty

    def enginePythonPath(self):
        """A folder to put on the child's PYTHONPATH when ``medseg_core`` is not installed but its
        source is at hand (a source-tree checkout used with --additional-module-paths)."""
        if importlib.util.find_spec("medseg_core") is not None:
            return None
        source = self.engineSource()
        return str(source) if source is not None and source.is_dir() else None

    # ---- installing -------------------------------------------------------------------------------
    def ensureReady(self, askConfirmation=True):
        """Install what is missing. Returns True when everything is there, False when the user
        declined. Raises RuntimeError when something cannot be installed."""
        plan = self.plan()
        if plan.empty:
            return True
        if plan.problems and plan.torch is None and not plan.packages and plan.engine is None:
            raise RuntimeError("\n".join(plan.problems))
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(plan.describe(), "SlicerMedSeg: install"):
            return False
        importedBefore = self._importedVersions()
        with slicer.util.WaitCursor():
            if plan.torch is not None:
                self.installTorch(plan.torch)
            if plan.packages:
                self.pipInstall(plan.packages)
            if plan.engine is not None:
                self.installEngine(plan.engine)
        importlib.invalidate_caches()
        after = self.plan()
        if not after.empty:
            raise RuntimeError("Installation did not complete:\n" + after.describe())
        self._offerRestart(importedBefore)
        return True

    def installTorch(self, requirement):
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("SlicerMedSeg needs the PyTorch extension: install 'PyTorch' from the Extensions "
                               "Manager, restart Slicer and try again.") from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        # The user has just confirmed the whole list (torch included): no second dialog here.
        torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=requirement)
        if torch is None:
            raise RuntimeError("PyTorch was not installed (see the Python console for the reason).")
        logging.info(f"SlicerMedSeg: torch {getattr(torch, '__version__', '?')} installed")

    def pipInstall(self, packages):
        """pip-install ``packages`` without replacing Slicer's own numpy, SimpleITK, requests or torch."""
        constraints = Requirements.constraints_text(Requirements.installed_versions())
        handle, constraintsPath = tempfile.mkstemp(prefix="medseg-constraints-", suffix=".txt")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as f:
                f.write(constraints)
            if hasattr(slicer, "packaging") and hasattr(slicer.packaging, "pip_ensure"):  # Slicer 5.12+
                slicer.packaging.pip_ensure(list(packages), constraints=constraintsPath, prompt_install=False,
                                            prompt_restart=False, requester="SlicerMedSeg", skip_in_testing=False)
            else:
                slicer.util.pip_install(list(packages) + ["-c", constraintsPath])
        finally:
            try:
                os.remove(constraintsPath)
            except OSError:
                pass

    @staticmethod
    def installEngine(source):
        """pip-install ``medseg_core`` without its dependencies (installed above, under constraints).
        A source folder is copied first: pip builds in place, and the extension's folder may be
        read-only."""
        if Path(source).is_dir():
            with tempfile.TemporaryDirectory(prefix="medseg-engine-") as tmp:
                copy = Path(tmp) / "engine"
                shutil.copytree(Path(source) / "medseg_core", copy / "medseg_core",
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                for name in ("pyproject.toml", "README.md", "LICENSE"):
                    if (Path(source) / name).is_file():
                        shutil.copy2(Path(source) / name, copy / name)
                slicer.util.pip_install(["--no-deps", "--upgrade", str(copy)])
        else:
            slicer.util.pip_install(["--no-deps", "--upgrade", str(source)])

    @staticmethod
    def _importedVersions():
        versions = Requirements.installed_versions()
        imported = {Requirements.canonical(name.split(".")[0]) for name in list(sys.modules)}
        return {name: v for name, v in versions.items() if name in imported}

    def _offerRestart(self, importedBefore):
        now = Requirements.installed_versions()
        changed = sorted(name for name, v in importedBefore.items() if now.get(name) != v)
        if not changed:
            return
        if slicer.util.confirmYesNoDisplay(
                f"Packages already in use were updated ({', '.join(changed)}). Restart Slicer now to use them?",
                "SlicerMedSeg: restart"):
            slicer.util.restart()
