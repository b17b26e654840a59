"""Errors with the exit codes of the ``medseg`` command line.

Every error carries one line for the user that names the file and the problem.
"""

import json
from pathlib import Path

EXIT_OK = 0
EXIT_INPUT = 2
EXIT_MODEL = 3
EXIT_CANCELLED = 130


class MedSegError(Exception):
    """Base class; ``exit_code`` is what ``medseg`` returns."""

    exit_code = 1


class InputError(MedSegError):
    """Bad input or usage: a missing, unreadable or unusable file, an output that exists."""

    exit_code = EXIT_INPUT


class ModelError(MedSegError):
    """A model that cannot be found, read, verified or built."""

    exit_code = EXIT_MODEL


def read_json(path: str | Path, what: str, error: type[MedSegError] = InputError):
    """The parsed content of a JSON file, or ``error`` with one line naming the file.

    Args:
        path: the file.
        what: what the file is, for the message ("config file", "model card", ...).
        error: the error class raised for a missing or malformed file.

    Raises:
        error: "<path>: <what> not found" or "<path>: <what> is not valid JSON (<why>, line N)".
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: {what} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
