"""What has to be installed into Slicer's Python before the first run, and how, without touching
the packages Slicer ships.

Pure Python: imports neither slicer nor qt (``InstallLogic`` does the installing).

* torch comes from the PyTorch extension's installer (it picks the build that matches the GPU
  driver; plain pip gives a CPU-only build on Windows);
* the engine's other requirements (``Resources/requirements.txt``) come from pip, with a
  constraints file that pins the installed numpy, SimpleITK, requests and torch, so pip never
  replaces them;
* ``medseg_core`` itself is pip-installed with ``--no-deps`` from the engine bundled with the
  extension (a wheel if there is one, else its source folder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

PROTECTED = ("numpy", "simpleitk", "requests", "torch")
"""Packages Slicer (or the PyTorch extension) owns: never installed, upgraded or replaced by pip here."""

TORCH_REQUIREMENT = ">=2.2,<3"
ENGINE_DISTRIBUTION = "medseg-core"
ENGINE_FOLDER = "MedSegEngine"
"""Folder beside the module's scripts where the extension package puts the engine (see CMakeLists.txt)."""


def canonical(name: str) -> str:
    """PEP 503 name: ``SimpleITK`` -> ``simpleitk``, ``medseg_core`` -> ``medseg-core``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    """The distribution name of a requirement line (``"pynrrd>=1.0"`` -> ``"pynrrd"``)."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if not m:
        raise ValueError(f"not a requirement: {req!r}")
    return canonical(m.group(1))


def read_requirements(path) -> list[str]:
    """Requirement lines of a requirements file (comments, blank lines and pip options skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(line)
    return out


def satisfied(req: str, installed: Mapping[str, str]) -> bool:
    """Whether ``installed`` ({canonical name: version}) satisfies ``req``.

    Uses ``packaging`` (Slicer ships it) for the version test; without it, presence is enough.
    """
    name = requirement_name(req)
    version = installed.get(name)
    if version is None:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return True
    try:
        return Requirement(req).specifier.contains(version, prereleases=True)
    except Exception:  # an unparsable version: trust what is there
        return True


def constraints_text(installed: Mapping[str, str]) -> str:
    """A pip constraints file pinning the protected packages that are installed."""
    return "".join(f"{name}=={installed[name]}\n" for name in PROTECTED if name in installed)


def installed_versions() -> dict[str, str]:
    """{canonical distribution name: version} of this interpreter."""
    import importlib.metadata

    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out[canonical(name)] = dist.version
    return out


def engine_version_in(source: Path) -> Optional[str]:
    """``__version__`` of the bundled engine (source folder or wheel name)."""
    if source.suffix == ".whl":
        parts = source.name.split("-")
        return parts[1] if len(parts) > 1 else None
    init = source / "medseg_core" / "__init__.py"
    if init.is_file():
        m = re.search(r"__version__\s*=\s*[\"']([^\"']+)[\"']", init.read_text(encoding="utf-8"))
        return m.group(1) if m else None
    return None


def find_engine_source(module_dir) -> Optional[Path]:
    """The engine to install: a wheel or source folder in ``<module dir>/MedSegEngine`` (installed
    extension), else the repository root above the module (source tree)."""
    module_dir = Path(module_dir)
    bundled = module_dir / ENGINE_FOLDER
    wheels = sorted(bundled.glob("medseg_core-*.whl")) if bundled.is_dir() else []
    if wheels:
        return wheels[-1]
    for candidate in (bundled, module_dir.parent):
        if (candidate / "pyproject.toml").is_file() and (candidate / "medseg_core" / "__init__.py").is_file():
            return candidate
    return None


@dataclass
class InstallPlan:
    """What will be installed; empty when everything is there."""

    torch: Optional[str] = None  # the torch requirement to hand to the PyTorch extension
    packages: list = field(default_factory=list)  # pip requirement lines
    engine: Optional[Path] = None  # wheel or source folder to pip-install with --no-deps
    engine_version: Optional[str] = None
    problems: list = field(default_factory=list)  # what cannot be installed from here

    @property
    def empty(self) -> bool:
        return self.torch is None and not self.packages and self.engine is None

    def describe(self) -> str:
        """The text of the one confirmation dialog."""
        lines = ["SlicerMedSeg needs these Python packages in Slicer:", ""]
        if self.torch is not None:
            lines.append(f"- PyTorch (torch{self.torch}), through the PyTorch extension, which picks the build "
                         "matching your GPU driver (a download of up to a few GB)")
        for req in self.packages:
            lines.append(f"- {req} (pip)")
        if self.engine is not None:
            lines.append(f"- medseg_core {self.engine_version or ''} (the segmentation engine, from the extension)")
        lines += ["", "Slicer's own numpy, SimpleITK and requests are kept as they are. "
                  "Installing takes a few minutes; Slicer may ask to restart afterwards."]
        for problem in self.problems:
            lines += ["", problem]
        return "\n".join(lines)


def make_plan(requirements: Sequence[str], installed: Mapping[str, str], engine_source: Optional[Path],
              torch_requirement: str = TORCH_REQUIREMENT) -> InstallPlan:
    """What is missing from ``installed`` ({canonical name: version})."""
    plan = InstallPlan()
    if not satisfied("torch" + torch_requirement, installed):
        plan.torch = torch_requirement
    plan.packages = [r for r in requirements if requirement_name(r) not in PROTECTED and not satisfied(r, installed)]
    bundled_version = engine_version_in(engine_source) if engine_source is not None else None
    have = installed.get(ENGINE_DISTRIBUTION)
    if have is None or (bundled_version is not None and have != bundled_version):
        if engine_source is None:
            if have is None:
                plan.problems.append("The segmentation engine (medseg_core) is not bundled with this module; "
                                     "install it with: PythonSlicer -m pip install medseg-core")
        else:
            plan.engine, plan.engine_version = engine_source, bundled_version
    return plan
