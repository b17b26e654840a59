"""Command lines, worker requests and environments of the ``medseg`` child processes, built from
the parameters.

Pure Python: imports neither slicer nor qt. The child is always ``[python, "-m", "medseg_core", ...]``
with Slicer's own interpreter (PythonSlicer), so no ``medseg`` script needs to be on the PATH. The
module sends segment, fine-tune and refine to its long-lived worker as requests (``*_args``: the
``args`` of ``docs/protocol.md``); the command lines serve batch scripts and the tests.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Mapping, Optional, Sequence

from .Geometry import roi_argument
from .Parameters import FinetuneParameters, SegmentationParameters

CLI_DEVICE = {"auto": "auto", "gpu": "cuda", "cpu": "cpu"}
"""Panel device -> ``medseg --device``."""


def medseg_command(python: Optional[str] = None) -> list[str]:
    """The start of every command line: ``[python, "-m", "medseg_core"]``."""
    return [python or sys.executable, "-m", "medseg_core"]


def segment_command(params: SegmentationParameters, input_path: str, output_dir: str,
                    python: Optional[str] = None) -> list[str]:
    """``medseg segment INPUT --model M --output DIR --device D --overwrite --progress json [...]``."""
    params.validate()
    cmd = medseg_command(python) + ["segment", str(input_path), "--model", params.model, "--output", str(output_dir),
                                    "--device", CLI_DEVICE[params.device], "--overwrite", "--progress", "json"]
    if params.tta:
        cmd.append("--tta")
    if params.confidence:
        cmd += ["--confidence-threshold", repr(float(params.confidence_threshold))]
    else:
        cmd.append("--no-confidence")
    if params.roi_lps is not None:  # "--roi=..." as one argument: an LPS box often starts with "-"
        cmd.append("--roi=" + roi_argument(params.roi_lps))
    return cmd


def finetune_command(params: FinetuneParameters, cases: Sequence[tuple[str, str]],
                     python: Optional[str] = None) -> list[str]:
    """``medseg finetune --model M --image I --label L [--image --label ...] [--steps] [--name] ...``."""
    params.validate()
    if not cases:
        raise ValueError("fine-tuning needs at least one corrected case")
    cmd = medseg_command(python) + ["finetune", "--model", params.model]
    for image, label in cases:
        cmd += ["--image", str(image), "--label", str(label)]
    if int(params.steps) > 0:
        cmd += ["--steps", str(int(params.steps))]
    if params.lr is not None:
        cmd += ["--lr", repr(float(params.lr))]
    if params.name:
        cmd += ["--name", params.name]
    cmd += ["--device", CLI_DEVICE[params.device], "--progress", "json"]
    return cmd


def worker_command(python: Optional[str] = None) -> list[str]:
    """``medseg worker``: the session's long-lived child."""
    return medseg_command(python) + ["worker"]


def segment_args(params: SegmentationParameters, input_path: str, output_dir: str) -> dict:
    """The worker's ``segment`` args: the options of :func:`segment_command`."""
    params.validate()
    return {"inputs": [str(input_path)], "model": params.model, "output": str(output_dir),
            "device": CLI_DEVICE[params.device], "overwrite": True, "tta": bool(params.tta),
            "confidence": bool(params.confidence), "confidence_threshold": float(params.confidence_threshold),
            "roi": [float(v) for v in params.roi_lps] if params.roi_lps is not None else None}


def finetune_args(params: FinetuneParameters, cases: Sequence[tuple[str, str]]) -> dict:
    """The worker's ``finetune`` args: the options of :func:`finetune_command`."""
    params.validate()
    if not cases:
        raise ValueError("fine-tuning needs at least one corrected case")
    return {"model": params.model, "cases": [[str(i), str(lab)] for i, lab in cases],
            "steps": int(params.steps) if int(params.steps) > 0 else None,
            "lr": float(params.lr) if params.lr is not None else None, "name": params.name or None,
            "device": CLI_DEVICE[params.device]}


REFINE_KINDS = ("point", "negative", "box")
"""A refine prompt: "this organ is here", "not this component", "the organ is inside"."""


def refine_prompt(label: str, kind: str, lps) -> dict:
    """One prompt of a ``refine`` request: ``{"label": L, KIND: [LPS mm]}`` (a box: six numbers).

    >>> refine_prompt("Larynx", "point", [1, 2.5, -3])
    {'label': 'Larynx', 'point': [1.0, 2.5, -3.0]}
    """
    if kind not in REFINE_KINDS:
        raise ValueError(f"refine: the kind must be one of {', '.join(REFINE_KINDS)}, not {kind!r}")
    numbers = [float(v) for v in lps]
    if len(numbers) != (6 if kind == "box" else 3):
        raise ValueError(f"refine: a {kind} takes {6 if kind == 'box' else 3} numbers, got {len(numbers)}")
    if not label:
        raise ValueError("refine: pick the organ to refine")
    return {"label": str(label), kind: numbers}


def refine_args(model: str, device: str, input_path: str, labels_path: str, output_dir: str,
                prompts: Sequence[dict]) -> dict:
    """The worker's ``refine`` args (``device`` as the panel names it: auto, gpu or cpu)."""
    if not prompts:
        raise ValueError("refine: place a point (or a region) on the organ first")
    return {"input": str(input_path), "model": model, "labels": str(labels_path), "output": str(output_dir),
            "overwrite": True, "device": CLI_DEVICE[device], "prompts": list(prompts)}


def models_command(python: Optional[str] = None) -> list[str]:
    """``medseg models --json``."""
    return medseg_command(python) + ["models", "--json"]


def child_environment(device: str = "auto", base: Optional[Mapping[str, str]] = None,
                      pythonpath: Optional[str] = None) -> dict[str, str]:
    """The child's environment: a copy of ``base`` (default ``os.environ``).

    * ``device == "cpu"``: ``CUDA_VISIBLE_DEVICES=-1``, so not even a CUDA context is made;
    * ``PYTHONUNBUFFERED=1`` and UTF-8 I/O, so every progress line arrives at once;
    * ``pythonpath`` (a folder holding ``medseg_core``) is put first on ``PYTHONPATH``.
    """
    env = dict(os.environ if base is None else base)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    if pythonpath:
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(pythonpath) + (os.pathsep + old if old else "")
    return env


def normalize_segment_name(name: str) -> str:
    """The key ``medseg finetune`` matches segment names to model labels with: lower case, letters
    and digits only (the engine's ``medseg_core.labels.name_key``; the module does not import the
    engine, and a test holds the two rules together).

    >>> normalize_segment_name("Right_Parotid ") == normalize_segment_name("right-parotid")
    True
    """
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def matching_segment_names(segment_names: Sequence[str], label_names: Sequence[str]) -> list[str]:
    """The segments that name one of the model's labels: the ones a correction may hold (the
    engine refuses unknown names, such as "Low confidence")."""
    keys = {normalize_segment_name(n) for n in label_names}
    return [n for n in segment_names if normalize_segment_name(n) in keys]
