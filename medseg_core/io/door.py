"""Checks at the door: a damaged or odd image file is refused before any library reads it.

ITK's NIfTI reader fills a file cut short with zeros, reads a header whose data offset points past
the end as an all-zero image, turns NaN and infinite voxels into 0 and a pixel spacing of 0 into
1 mm, and quietly straightens a sheared grid; ITK and its libraries print their own messages on
stderr. So, before SimpleITK sees a file:

* it must be a regular file (a FIFO named ``x.nii.gz`` would block the read forever);
* a NIfTI file's header must be coherent: positive sizes, positive finite spacings, an orthogonal
  grid, and as many data bytes as the header promises (``.nii.gz`` is decompressed as a stream to
  count them, which also catches a damaged gzip stream); float voxels must be finite.

:func:`quiet_stderr` keeps the libraries' messages off the terminal (the error line names the
problem instead).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import re
import stat
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import InputError

CHUNK = 1 << 20
# NIfTI datatype codes of floating-point voxels -> numpy dtype (complex types are refused by the reader)
_FLOAT_CODES = {16: np.float32, 64: np.float64}


def sitk_error_detail(error: Exception) -> str:
    """Condenses a (multi-line) SimpleITK/ITK error message into one short line.

    Args:
        error: the exception raised by SimpleITK.

    Returns:
        The ``sitk::ERROR`` text when present, else the whole message, on one line.
    """
    text = str(error)
    match = re.search(r"sitk::ERROR:\s*(.*)", text, flags=re.S)
    if match:
        text = match.group(1)
    text = " ".join(text.split())
    return text[:200] + ("..." if len(text) > 200 else "")


def check_regular_file(path: Path) -> None:
    """A path that is neither a folder nor a regular file (a FIFO, a device) is refused."""
    mode = path.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputError(f"{path}: is not a regular file (a pipe or a device); give an image file")


def read_file(path: Path):
    """One image file through the door: a regular file, NIfTI checks, library messages kept off
    stderr; SimpleITK's failure as a one-line InputError naming the file."""
    check_regular_file(path)
    data_check = nifti_header_check(path) if is_nifti(path) else None
    if data_check is None:
        return _sitk_read(path)
    # the header is sound, so ITK may read the file while its data is counted (and its floats
    # checked) in a thread: decompressing a full-size CT a second time cost 0.3 s; ITK's image
    # is returned only once the count agrees (ITK would read a file cut short as zeros)
    with ThreadPoolExecutor(1) as pool:
        counted = pool.submit(data_check)
        try:
            image = _sitk_read(path)
        finally:
            counted.result()  # its error, if any, is the one to give
    return image


def _sitk_read(path: Path):
    import SimpleITK as sitk

    try:
        with quiet_stderr():
            return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{path}: cannot be read as an image ({sitk_error_detail(error)})") from None


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".nii", ".nii.gz", ".hdr", ".img", ".hdr.gz", ".img.gz"))


def check_nifti(path: Path) -> None:
    """Raises a one-line InputError when a NIfTI file is damaged or odd (see the module's text)."""
    data_check = nifti_header_check(path)
    if data_check is not None:
        data_check()


def nifti_header_check(path: Path) -> Callable[[], None] | None:
    """Checks a NIfTI file's header (a one-line InputError when it is odd) and returns the check
    of its data (``() -> None``, raising likewise), or None when there is nothing to check or the
    reader's own error will name the problem."""
    name = path.name.lower()
    header_path = path
    if name.endswith((".img", ".img.gz")):  # the pair's header holds the geometry
        header_path = path.with_name(path.name[: -len(".img.gz") if name.endswith(".gz") else -len(".img")]
                                     + (".hdr.gz" if name.endswith(".gz") else ".hdr"))
        if not header_path.exists():
            return None  # let the reader say what is missing
    head = _read_head(header_path)
    if head is None:
        return None  # too short or not NIfTI at all: the reader's own error names it
    h = _parse(head, header_path)
    pair = name.endswith((".hdr", ".img", ".hdr.gz", ".img.gz"))
    data_path = path if not pair else header_path.with_name(
        header_path.name.replace(".hdr", ".img"))
    offset = 0 if pair else h["vox_offset"]
    return functools.partial(_check_data, data_path, offset, h)


def _read_head(path: Path) -> bytes | None:
    try:
        with _open(path) as f:
            head = f.read(540)
    except gzip.BadGzipFile:
        raise InputError(f"{path}: cannot be read as an image (it is not gzip-compressed, as its name says)") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: the file is damaged ({_reason(exc)})") from None
    if len(head) < 348:
        return None
    return head


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _parse(head: bytes, path: Path) -> dict:
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size in (348, 540):
            break
    else:
        raise InputError(f"{path}: is not a NIfTI file (its header size field is wrong)")
    if size == 348:
        dims = struct.unpack(endian + "8h", head[40:56])
        datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
        pixdim = struct.unpack(endian + "8f", head[76:108])
        vox_offset = struct.unpack(endian + "f", head[108:112])[0]
        sform_code = struct.unpack(endian + "h", head[254:256])[0]
        srow = np.array(struct.unpack(endian + "12f", head[280:328]), dtype=np.float64).reshape(3, 4)
    else:
        if len(head) < 540:
            raise InputError(f"{path}: the NIfTI-2 header is cut short")
        datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
        dims = struct.unpack(endian + "8q", head[16:80])
        pixdim = struct.unpack(endian + "8d", head[104:168])
        vox_offset = struct.unpack(endian + "q", head[168:176])[0]
        sform_code = struct.unpack(endian + "i", head[348:352])[0]
        srow = np.array(struct.unpack(endian + "12d", head[400:496]), dtype=np.float64).reshape(3, 4)
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise InputError(f"{path}: the NIfTI header gives {ndim} dimensions (1 to 7 are possible)")
    sizes = dims[1:ndim + 1]
    if any(s < 1 for s in sizes):
        raise InputError(f"{path}: the NIfTI header gives a size of {min(sizes)} voxels along an axis")
    if bitpix <= 0 or bitpix % 8:
        raise InputError(f"{path}: the NIfTI header gives {bitpix} bits per voxel")
    spacing = pixdim[1:min(ndim, 3) + 1]
    bad = [s for s in spacing if not (np.isfinite(s) and s > 0)]
    if bad:
        raise InputError(f"{path}: the NIfTI header gives a voxel spacing of {bad[0]:g} mm; spacings must be "
                         f"positive (it would be read as 1 mm)")
    if sform_code > 0 and ndim >= 3:
        _check_orthogonal(srow[:, :3], path)
    return {"sizes": sizes, "datatype": datatype, "bitpix": bitpix, "vox_offset": int(vox_offset), "endian": endian}


def _check_orthogonal(matrix: np.ndarray, path: Path) -> None:
    norms = np.linalg.norm(matrix, axis=0)
    if not np.all(np.isfinite(matrix)) or np.any(norms <= 0):
        raise InputError(f"{path}: the NIfTI sform gives a voxel axis of zero length")
    axes = matrix / norms
    if np.abs(axes.T @ axes - np.eye(3)).max() > 1e-3:
        raise InputError(f"{path}: the image grid is sheared (its sform axes are not orthogonal); resample it "
                         f"onto an orthogonal grid first")


def _check_data(path: Path, offset: int, h: dict) -> None:
    nbytes = int(np.prod([int(s) for s in h["sizes"]], dtype=np.float64)) * (h["bitpix"] // 8)
    need = offset + nbytes
    compressed = path.name.lower().endswith(".gz")
    if not compressed:
        have = path.stat().st_size
        if have < need:
            raise InputError(f"{path}: the file is cut short ({have} bytes; its header promises {need})")
    dtype = _FLOAT_CODES.get(h["datatype"])
    if not compressed and dtype is None:
        return
    seen, tail, bad = 0, b"", None
    item = np.dtype(dtype).itemsize if dtype is not None else 1
    try:
        with _open(path) as f:
            while True:
                block = f.read(CHUNK)
                if not block:
                    break
                start, seen = seen, seen + len(block)
                if dtype is None or seen <= offset or bad:
                    continue
                data = tail + block[max(0, offset - start):]
                usable = len(data) - len(data) % item
                values = np.frombuffer(data[:usable], dtype=np.dtype(dtype).newbyteorder(h["endian"]))
                if not np.isfinite(values).all():
                    bad = "NaN" if np.isnan(values).any() else "infinite"
                tail = data[usable:]
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: the file is damaged ({_reason(exc)})") from None
    if seen < need:
        raise InputError(f"{path}: the file is cut short ({seen} bytes once decompressed; its header promises {need})")
    if bad:
        raise InputError(f"{path}: has {bad} voxels" if bad != "NaN" else f"{path}: has NaN (not-a-number) voxels")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the compressed stream ends early"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:120]


@contextlib.contextmanager
def quiet_stderr() -> Iterator[list[str]]:
    """Sends what C and C++ libraries print on stderr (file descriptor 2) to a list of lines instead
    of the terminal, for the duration of the block; Python's own ``sys.stderr`` is left alone when
    it is not the terminal's descriptor (pytest's capture, for example)."""
    lines: list[str] = []
    try:
        fd = 2
        saved = os.dup(fd)
    except OSError:  # no stderr at all
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield lines
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            lines.extend(ln for ln in sink.read().decode("utf-8", "replace").splitlines() if ln.strip())
