"""All-or-nothing file output: write under a hidden temporary name, then rename.

A crash, an exception or Ctrl+C while writing never leaves a half-written file under the final
name: the temporary file is deleted instead. The temporary file lies in the final file's folder
(so that the rename stays on one file system) and keeps the final file's extension (so that
writers that pick the format from the name, like SimpleITK's, write the right format).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from medseg_core.errors import InputError
from medseg_core.io.naming import COMPOUND_EXTENSIONS


def split_extension(name: str) -> tuple[str, str]:
    """Splits a file name into stem and extension, keeping compound extensions whole.

    Args:
        name: a file name (no folder), e.g. ``"ct.nii.gz"``.

    Returns:
        ``(stem, extension)``, e.g. ``("ct", ".nii.gz")``; the extension may be ``""``.
    """
    lower = name.lower()
    for ext in COMPOUND_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext):]
    stem, ext = os.path.splitext(name)
    return stem, ext


# Every temporary output not yet renamed or removed, so that an emergency exit (a SIGTERM whose
# handler cannot wait for the main thread) can still remove them: see ``remove_live_temporaries``.
LIVE_TEMPORARIES: set[Path] = set()


def remove_live_temporaries() -> None:
    """Delete every temporary output still pending (files and folders)."""
    for path in list(LIVE_TEMPORARIES):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)
        LIVE_TEMPORARIES.discard(path)


def temporary_path(final_path: str | os.PathLike) -> Path:
    """Returns an unused hidden name next to ``final_path``: ``.STEM.tmp-<random>EXT``.

    Args:
        final_path: the path the output will finally have.

    Returns:
        A path in the same folder that does not exist yet (the file is not created).
    """
    final_path = Path(final_path)
    stem, ext = split_extension(final_path.name)
    while True:
        candidate = final_path.with_name(f".{stem}.tmp-{secrets.token_hex(4)}{ext}")
        if not candidate.exists():
            LIVE_TEMPORARIES.add(candidate)
            return candidate


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    LIVE_TEMPORARIES.discard(path)


@contextlib.contextmanager
def atomic_output(final_path: str | os.PathLike) -> Iterator[Path]:
    """Context manager for writing one file atomically.

    The body writes to the yielded temporary path. On normal exit the temporary file replaces
    ``final_path`` (``os.replace``); on any exception, including ``KeyboardInterrupt``, it is
    deleted and the exception propagates.

    Args:
        final_path: where the file must end up.

    Yields:
        The temporary path to write to.

    Example::

        with atomic_output("out/ct.nii.gz") as tmp:
            sitk.WriteImage(image, str(tmp))
    """
    final_path = Path(final_path)
    tmp = temporary_path(final_path)
    try:
        yield tmp
    except BaseException:
        _remove_quietly(tmp)
        raise
    if not tmp.exists():
        raise FileNotFoundError(f"{final_path}: nothing was written to the temporary file {tmp.name}")
    try:
        os.replace(tmp, final_path)
        LIVE_TEMPORARIES.discard(tmp)
    except BaseException:
        _remove_quietly(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(final_path: str | os.PathLike) -> Iterator[Path]:
    """Context manager for writing a folder (a model package, a resume point) all or nothing.

    The body fills the yielded hidden temporary folder beside ``final_path``. On normal exit it
    takes ``final_path``'s place; an existing ``final_path`` is moved aside first and removed only
    once the new folder is in place. On any exception the temporary folder is removed and
    ``final_path`` is left as it was.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.tmp-", dir=final_path.parent))
    LIVE_TEMPORARIES.add(tmp)
    try:
        yield tmp
        if final_path.exists():
            old = final_path.with_name(f".{final_path.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final_path, old)
            os.replace(tmp, final_path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        LIVE_TEMPORARIES.discard(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: a reader sees the old file or the new one,
    never a part. The folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


class OutputSet:
    """Several outputs written all-or-nothing.

    ``stage(final)`` hands out a temporary path for each output; ``commit()`` renames them all to
    their final names once every one has been written; ``abort()`` deletes them all. Used as a
    context manager it commits on normal exit and aborts on any exception (``KeyboardInterrupt``
    and ``SystemExit`` included).

    The renames themselves happen one after another: if the file system fails in the middle of
    ``commit()`` (a rare event, since all files are complete and on the same file system), the
    outputs renamed so far stay and the rest are deleted.

    Example::

        with OutputSet() as outputs:
            sitk.WriteImage(seg, str(outputs.stage("out/seg.nii.gz")))
            sitk.WriteImage(prob, str(outputs.stage("out/prob.nii.gz")))
    """

    def __init__(self) -> None:
        self._pairs: list[tuple[Path, Path]] = []  # (temporary, final)
        self._closed = False

    def stage(self, final_path: str | os.PathLike) -> Path:
        """Registers an output and returns the temporary path to write it to.

        Args:
            final_path: where the output must end up.

        Returns:
            The temporary path (not created).

        Raises:
            RuntimeError: the set was already committed or aborted.
            ValueError: the same final path was staged twice.
        """
        if self._closed:
            raise RuntimeError("OutputSet already committed or aborted")
        final_path = Path(final_path)
        if any(final.resolve() == final_path.resolve() for _, final in self._pairs):
            raise ValueError(f"{final_path}: staged twice")
        tmp = temporary_path(final_path)
        self._pairs.append((tmp, final_path))
        return tmp

    @property
    def staged(self) -> list[tuple[Path, Path]]:
        """The ``(temporary, final)`` path pairs staged so far."""
        return list(self._pairs)

    def commit(self) -> None:
        """Renames every temporary file to its final name.

        Raises:
            FileNotFoundError: a staged output was never written; nothing is renamed and all
                temporary files are deleted.
        """
        if self._closed:
            return
        missing = [final for tmp, final in self._pairs if not tmp.exists()]
        if missing:
            self.abort()
            raise FileNotFoundError(f"{missing[0]}: staged output was never written")
        try:
            for tmp, final in self._pairs:
                os.replace(tmp, final)
                LIVE_TEMPORARIES.discard(tmp)
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def abort(self) -> None:
        """Deletes every temporary file; no final file is touched."""
        for tmp, _ in self._pairs:
            _remove_quietly(tmp)
        self._closed = True

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Makes sure an output folder exists and can be written to, creating it if missing.

    Args:
        path: the folder.

    Returns:
        The folder as a ``Path``.

    Raises:
        InputError: the folder cannot be created or written to (one line naming the folder).
    """
    path = Path(path)
    message = f"{path}: output folder is not writable"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        raise InputError(message) from None
    if not path.is_dir():
        raise InputError(message)
    try:
        with tempfile.TemporaryFile(dir=path, prefix=".medseg-write-test-"):
            pass
    except OSError:
        raise InputError(message) from None
    return path


def check_outputs(paths, overwrite: bool) -> None:
    """Every planned output can be (re)placed: none is a folder or special file, and none exists
    unless ``overwrite``. Raises a one-line InputError naming the first that cannot."""
    for path in map(Path, paths):
        if path.is_dir() or (path.exists() and not path.is_file()):
            raise InputError(f"{path}: an output name is taken by a folder or a special file; move it away")
        if path.exists() and not overwrite:
            raise InputError(f"{path}: output exists (use --overwrite to replace it)")


def check_output_folder(path: str | os.PathLike) -> Path:
    """``path`` could be created and written (its nearest existing ancestor is a writable folder);
    creates nothing. Raises a one-line InputError naming the folder."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{path}: output folder is not writable" if probe == path or probe.exists()
                         else f"{path}: cannot be created")
    return path


@contextlib.contextmanager
def output_folder(path: str | os.PathLike) -> Iterator[Callable[[], Path]]:
    """An output folder that exists only once something is written to it.

    On entry it checks that ``path`` could be created and written (its nearest existing ancestor
    is a writable folder), creating nothing. The body calls the yielded ``make()`` just before
    its first write. If the body fails, the folders ``make()`` created are removed again when they
    are still empty, so a refused run leaves no trace.

    Raises:
        InputError: the folder cannot be created or written to (one line naming the folder).
    """
    path = check_output_folder(path)
    created: list[Path] = []

    def make() -> Path:
        if not path.is_dir():
            missing = [p for p in [path, *path.parents] if not p.exists()]
            check_writable_dir(path)
            created.extend(missing)
        return path

    try:
        yield make
    except BaseException:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
