"""Argument checks shared by the requests: each returns the value in its canonical type or raises
one ``InputError`` line naming the option and the problem.

>>> fraction("--confidence-threshold", "0.25")
0.25
>>> roi("--roi", [0, 0, 0, 10, 10, 5])
[0.0, 0.0, 0.0, 10.0, 10.0, 5.0]
>>> count("--batch-size", 0)
Traceback (most recent call last):
...
medseg_core.errors.InputError: --batch-size 0: must be a whole number of at least 1
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from ..errors import InputError

DEVICES = ("auto", "cpu", "cuda", "gpu", "mps")
RUNTIMES = ("auto", "torch", "openvino")  # see medseg_core/inference/runtime.py
DICOM_OUTPUTS = ("seg", "rtstruct")  # see medseg_core/io/dicom_seg.py and medseg_core/io/rtstruct.py


def device(option: str, value) -> str:
    if value not in DEVICES:
        raise InputError(f"{option} {value!r}: expected one of {', '.join(DEVICES)}")
    return value


def runtime(option: str, value) -> str:
    if value not in RUNTIMES:
        raise InputError(f"{option} {value!r}: expected one of {', '.join(RUNTIMES)}")
    return value


def dicom_outputs(option: str, value) -> list[str]:
    """The DICOM objects to write: a list, or their comma-separated text (``"seg,rtstruct"``); none: ``[]``."""
    kinds = [k.strip().lower() for k in value.split(",")] if isinstance(value, str) else value
    if not isinstance(kinds, (list, tuple)) or not all(isinstance(k, str) for k in kinds):
        raise InputError(f"{option} {value!r}: expected a list of {', '.join(DICOM_OUTPUTS)}")
    for k in kinds:
        if k not in DICOM_OUTPUTS:
            raise InputError(f"{option} {k!r}: expected {' or '.join(DICOM_OUTPUTS)}, or both separated by a comma")
    return sorted(set(kinds))


def flag(option: str, value) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{option} {value!r}: expected true or false")
    return value


def text(option: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{option} {value!r}: expected a non-empty text")
    return value


def path(option: str, value) -> str:
    """A path as text (``str`` or ``os.PathLike``), not empty."""
    return text(option, str(value) if hasattr(value, "__fspath__") else value)


def optional_path(option: str, value) -> str | None:
    return None if value is None else path(option, value)


def paths(option: str, value) -> list[str]:
    """A non-empty list of path texts (one text alone is refused: a list is asked for)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise InputError(f"{option} {value!r}: expected a non-empty list of paths")
    return [path(option, v) for v in value]


def number(option: str, value) -> float:
    if isinstance(value, bool):
        raise InputError(f"{option} {value!r}: expected a number")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{option} {value!r}: expected a number") from None
    if not math.isfinite(out):
        raise InputError(f"{option} {value!r}: expected a finite number")
    return out


def fraction(option: str, value) -> float:
    out = number(option, value)
    if not 0.0 <= out <= 1.0:
        raise InputError(f"{option} {out}: must be within [0, 1]")
    return out


def count(option: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{option} {value!r}: must be a whole number of at least {minimum}")
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{option} {value!r}: must be a whole number of at least {minimum}") from None
    if out != float(value) or out < minimum:
        raise InputError(f"{option} {value}: must be a whole number of at least {minimum}")
    return out


def roi(option: str, value) -> list[float]:
    """An LPS box ``x0,y0,z0,x1,y1,z1`` (mm), as text or as six numbers."""
    shown = value if isinstance(value, str) else ",".join(map(str, value)) if isinstance(value, Sequence) else value
    problem = f"{option} {shown}: expected six numbers x0,y0,z0,x1,y1,z1 in LPS millimetres"
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, (bytes, dict)) or not isinstance(items, Sequence) or len(items) != 6:
        raise InputError(problem)
    try:
        box = [number(option, v) for v in items]
    except InputError:
        raise InputError(problem) from None
    if any(a == b for a, b in zip(box[:3], box[3:])):
        raise InputError(f"{option} {shown}: the box is empty along one axis")
    return box


def request_from_dict(cls, command: str, args):
    """A request dataclass from a worker request's ``args``: unknown or missing keys are refused."""
    if not isinstance(args, dict):
        raise InputError(f"{command}: args must be an object, got {args!r}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise InputError(f"{command}: unknown argument(s) {', '.join(unknown)} (known: {', '.join(known)})")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in args]
    if missing:
        raise InputError(f"{command}: missing argument(s) {', '.join(missing)}")
    return cls(**args)
