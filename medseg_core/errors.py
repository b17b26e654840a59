"""Errors with the exit codes of the ``medseg`` command line.

Every error carries one line for the user that names the file and the problem.
"""

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
