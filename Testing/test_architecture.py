"""The package's shape, as docs/architectures.md draws it: layers that import only downwards, no
import cycle, the worker beneath the command line (never importing it), and files short enough
to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "medseg_core"

# bottom to top; a module may import from its own layer's other packages only where noted
LAYERS = [
    {"medseg_core", "medseg_core.errors", "medseg_core.labels", "medseg_core.progress"},
    {"medseg_core.nets", "medseg_core.losses", "medseg_core.metrics", "medseg_core.io"},
    {"medseg_core.data"},
    {"medseg_core.models"},
    {"medseg_core.inference"},
    {"medseg_core.training"},
    {"medseg_core.segment", "medseg_core.evaluate", "medseg_core.demo"},
    {"medseg_core.commands"},
    {"medseg_core.worker"},    # a face over the commands, JSON lines
    {"medseg_core.cli"},       # the other face, argparse; `medseg worker` starts the worker
    {"medseg_core.__main__"},
]
LEAVES = LAYERS[1]  # nets, losses, metrics and io import none of each other


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its file (a function's import
    counts), relative imports resolved, ``from pkg import submodule`` taken as the submodule."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [node.module or ""])
                    .rstrip(".") if node.level else node.module or "")
            subs = [f"{base}.{a.name}" for a in node.names]
            names = subs if all(s in MODULES for s in subs) else [base]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _layer(module: str) -> tuple[int, str]:
    best = None
    for rank, group in enumerate(LAYERS):
        for top in group:
            if (module == top or module.startswith(top + ".")) and (best is None or len(top) > len(best[1])):
                best = (rank, top)
    assert best is not None, f"{module} is in no layer of LAYERS"
    return best


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_only_downwards(module):
    rank, top = _layer(module)
    for other in GRAPH[module]:
        other_rank, other_top = _layer(other)
        assert other_rank <= rank, f"{module} (layer {rank}) imports {other} (layer {other_rank})"
        if other_rank == rank and other_top != top:
            assert top not in LEAVES, f"{module} imports its neighbour {other}"


def test_no_import_cycle():
    seen, done, cycles = set(), set(), []

    def visit(node, trail):
        seen.add(node)
        for nxt in sorted(GRAPH[node]):
            if nxt in trail:
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in seen:
                visit(nxt, trail + [nxt])
        done.add(node)

    for m in sorted(GRAPH):
        if m not in seen:
            visit(m, [m])
    assert not cycles, cycles


def test_the_layers_check_what_they_claim():
    """The checker itself: it sees function-level and relative imports, and a lower layer is lower."""
    assert "medseg_core.inference.predictor" in GRAPH["medseg_core.segment"]  # imported inside segment_files
    assert "medseg_core.commands.checks" in GRAPH["medseg_core.commands.segment"]  # `from . import checks`
    assert _layer("medseg_core.io.atomic")[0] < _layer("medseg_core.data.cache")[0] < _layer("medseg_core.cli")[0]


@pytest.mark.parametrize("folder", ["medseg_core", "SlicerMedSeg", "Testing", "benchmarks", "tools"])
def test_no_file_over_400_lines(folder):
    long = {str(p.relative_to(REPO)): n for p in (REPO / folder).rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long
