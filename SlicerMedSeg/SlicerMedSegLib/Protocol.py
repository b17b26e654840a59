"""The JSON-lines progress protocol of ``medseg ... --progress json`` (see docs/protocol.md):
parsing, overall progress with time left, and where the outputs are.

Pure Python: imports neither slicer nor qt.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

EVENT_KINDS = ("stage", "progress", "log", "result", "error")

SEGMENT_STAGES = ("load", "read", "preprocess", "infer", "resample", "write", "done")
FINETUNE_STAGES = ("load", "prepare", "evaluate", "finetune", "evaluate", "save")
REFINE_STAGES = ("read", "refine", "done")

# share of the wall time each stage usually takes (CPU, phantom to head-and-neck CT)
SEGMENT_WEIGHTS = {"load": 0.10, "read": 0.05, "preprocess": 0.15, "infer": 0.50, "resample": 0.10,
                   "write": 0.10, "done": 0.0}
FINETUNE_WEIGHTS = {"load": 0.05, "prepare": 0.10, "evaluate": 0.07, "finetune": 0.70, "save": 0.01}
REFINE_WEIGHTS = {"read": 0.1, "refine": 0.9, "done": 0.0}

STAGE_TITLES = {"load": "Loading the model", "read": "Reading the image", "preprocess": "Preparing the image",
                "infer": "Segmenting", "resample": "Back to the image grid", "write": "Writing the results",
                "done": "Done", "prepare": "Preparing the corrected cases",
                "evaluate": "Measuring Dice on the corrections", "finetune": "Fine-tuning",
                "save": "Saving the new model", "refine": "Refining"}


@dataclass
class Event:
    """One protocol event, or one line of the child that is not one (``kind == "log"``)."""

    kind: str
    stage: Optional[str] = None
    fraction: Optional[float] = None
    eta_s: Optional[float] = None
    message: str = ""
    outputs: Any = None
    code: Optional[int] = None
    source: str = "stdout"  # "stdout" or "stderr"
    raw: str = ""


def parse_line(line: str, source: str = "stdout") -> Optional[Event]:
    """One line of the child's output -> Event; ``None`` for a blank line.

    Lines that are not protocol JSON (stray prints, warnings, stderr) become ``log`` events.

    >>> parse_line('{"event": "progress", "stage": "infer", "fraction": 0.5, "eta_s": 3}').eta_s
    3.0
    >>> parse_line("medseg: warning: x", source="stderr").kind
    'log'
    """
    text = line.strip()
    if not text:
        return None
    if source == "stdout" and text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and obj.get("event") in EVENT_KINDS:
            fraction, eta, code = obj.get("fraction"), obj.get("eta_s"), obj.get("code")
            return Event(kind=obj["event"], stage=obj.get("stage"),
                         fraction=float(fraction) if isinstance(fraction, (int, float)) else None,
                         eta_s=float(eta) if isinstance(eta, (int, float)) else None,
                         message=str(obj.get("message") or ""), outputs=obj.get("outputs"),
                         code=int(code) if isinstance(code, (int, float)) else None, source=source, raw=text)
    return Event(kind="log", message=text, source=source, raw=text)


def format_seconds(seconds: Optional[float]) -> str:
    """``"about 12 s left"`` style text; empty when unknown.

    >>> format_seconds(75)
    'about 1 min 15 s left'
    """
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"about {max(s, 1)} s left"
    m, s = divmod(s, 60)
    if m < 60:
        return f"about {m} min {s} s left" if s else f"about {m} min left"
    h, m = divmod(m, 60)
    return f"about {h} h {m} min left"


class ProgressTracker:
    """Turns protocol events into an overall percentage and a status line (stage and time left).

    ``plan`` is the expected order of stages (a stage may come back, as ``evaluate`` does in
    fine-tuning); ``weights`` their share of the run. The time left comes from the child's
    ``eta_s`` where given, otherwise from the stage's own pace.
    """

    def __init__(self, plan=SEGMENT_STAGES, weights=None, clock=time.monotonic):
        self.plan = list(plan)
        weights = dict(weights or {SEGMENT_STAGES: SEGMENT_WEIGHTS, REFINE_STAGES: REFINE_WEIGHTS}.get(
            tuple(plan), FINETUNE_WEIGHTS))
        total = sum(weights.get(s, 0.0) for s in self.plan) or 1.0
        self.weights = [weights.get(s, 0.0) / total for s in self.plan]
        self.clock = clock
        self.position = -1
        self.stage: Optional[str] = None
        self.fraction = 0.0
        self.eta_s: Optional[float] = None
        self.message = ""
        self.stage_started = clock()
        self.started = clock()

    def _enter(self, stage: str) -> None:
        """A new stage began: move to its next occurrence in the plan (unknown stages keep the
        position, so the bar never goes back)."""
        for i in range(self.position + 1, len(self.plan)):
            if self.plan[i] == stage:
                self.position = i
                break
        self.stage = stage
        self.stage_started = self.clock()
        self.fraction = 0.0
        self.eta_s = None

    def update(self, event: Event) -> bool:
        """Take one event; returns True when the display should change."""
        if event.kind == "stage" and event.stage:
            if event.stage != self.stage:
                self._enter(event.stage)
            self.message = event.message
            return True
        if event.kind == "progress" and event.stage:
            if event.stage != self.stage:
                self._enter(event.stage)
            if event.fraction is not None:
                self.fraction = min(1.0, max(0.0, event.fraction))
            self.eta_s = event.eta_s
            if event.message:
                self.message = event.message
            return True
        if event.kind == "result":
            self.position, self.fraction, self.eta_s = len(self.plan) - 1, 1.0, 0.0
            self.message = event.message
            return True
        return False

    @property
    def overall(self) -> float:
        """0..1 over the whole run."""
        if self.position < 0:
            return 0.0
        done = sum(self.weights[: self.position])
        return min(1.0, done + self.weights[self.position] * self.fraction)

    def stage_eta(self) -> Optional[float]:
        if self.eta_s is not None:
            return self.eta_s
        elapsed = self.clock() - self.stage_started
        if self.fraction >= 0.05 and elapsed > 1.0:
            return elapsed * (1.0 - self.fraction) / self.fraction
        return None

    def status_text(self) -> str:
        """E.g. ``"Segmenting (pass 1/2) - 40 % - about 12 s left"``."""
        if self.stage is None:
            return "Starting..."
        title = STAGE_TITLES.get(self.stage, self.stage)
        text = title + (f" ({self.message})" if self.message and self.message != self.stage else "")
        text += f" - {int(round(100 * self.fraction))} %"
        eta = format_seconds(self.stage_eta())
        return text + (f" - {eta}" if eta else "")


# The engine's medseg_core.io.naming.OUTPUT_SUFFIXES (the module does not import the engine; a
# test holds the two equal).
SEGMENT_OUTPUT_SUFFIXES = {"labels": "_labels.nii.gz", "segmentation": ".seg.nrrd", "report": "_report.json",
                           "confidence": "_confidence.nii.gz", "rois": "_rois.json",
                           "rois_segmentation": "_rois.seg.nrrd", "dicom_seg": "_seg.dcm",
                           "dicom_rtstruct": "_rtstruct.dcm"}


PATH_KEYS = frozenset(SEGMENT_OUTPUT_SUFFIXES) | {"model"}
"""The keys of ``result`` outputs that hold file or folder paths (segment's kinds, finetune's model)."""


def resolve_outputs(outputs: Any, cwd: Optional[str] = None) -> Any:
    """The ``outputs`` of a ``result`` event with every relative path made absolute against the
    child's working folder (the child reports paths as it was given them).

    >>> resolve_outputs([{"labels": "out/a_labels.nii.gz"}], "/tmp/x")[0]["labels"].replace(os.sep, "/")[-26:]
    '/tmp/x/out/a_labels.nii.gz'
    """
    base = Path(cwd or os.getcwd())
    if isinstance(outputs, list):
        return [resolve_outputs(o, cwd) for o in outputs]
    if isinstance(outputs, dict):
        out = {}
        for key, value in outputs.items():
            if key in PATH_KEYS and isinstance(value, str) and value and not os.path.isabs(value):
                value = str(base / value)
            out[key] = value
        return out
    return outputs


def discover_segment_outputs(output_dir: str, stem: str) -> dict[str, str]:
    """The ``segment`` outputs of ``stem`` that exist in ``output_dir`` (for a run whose result line
    was lost); the kinds are those of the ``result`` event."""
    found = {}
    for kind, suffix in SEGMENT_OUTPUT_SUFFIXES.items():
        path = Path(output_dir) / f"{stem}{suffix}"
        if path.is_file():
            found[kind] = str(path.resolve())
    return found


def stderr_error(lines) -> str:
    """The line that says why a child failed: its last ``medseg: error`` line (the CLI's one-line
    errors), else its last non-blank stderr line, else empty.

    >>> stderr_error(["Traceback ...", "medseg: error: x.nii: cut short", "bye"])
    'medseg: error: x.nii: cut short'
    """
    lines = [ln for ln in lines if ln.strip()]
    own = [ln for ln in lines if ln.startswith("medseg: error")]
    return (own or lines or [""])[-1]


@dataclass
class RunResult:
    """How a child process ended.

    Attributes:
        returncode: the exit code (130 when interrupted; negative: killed by that signal on POSIX).
        cancelled: Cancel was asked for, or the child reported an interruption.
        outputs: the ``outputs`` of the ``result`` event, paths made absolute.
        error: the child's own message when it failed (its ``error`` event, else its last stderr
            line), or empty.
        stdout: the stdout lines that were not protocol events (``models --json`` prints there).
        seconds: wall time.
    """

    returncode: Optional[int]
    cancelled: bool = False
    outputs: Any = None
    error: str = ""
    error_code: Optional[int] = None
    stdout: str = ""
    stderr_tail: list = field(default_factory=list)
    seconds: float = 0.0
    result_message: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.cancelled and not self.error
