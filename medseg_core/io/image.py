"""Reading and writing 3D images (volumes and labelmaps) with SimpleITK.

``read_image`` checks what an engine needs (one 3D scalar volume with finite voxels) and turns
every problem into an ``InputError`` whose message is one line starting with the path. Writers
go through ``atomic_output`` so that no half-written file is ever left under the final name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg_core.errors import InputError
from medseg_core.io.atomic import atomic_output
from medseg_core.io.dicom import read_dicom_folder
from medseg_core.io.door import check_regular_file, read_file, sitk_error_detail  # noqa: F401 (re-exported)

_FLOAT_TYPES = {sitk.sitkFloat32, sitk.sitkFloat64}
MIN_SIZE = 4
"""Voxels an image needs along at least two axes; fewer is a thumbnail or a damaged header."""


def _check_volume(image: sitk.Image, path: Path, min_size: int = 1) -> sitk.Image:
    """Returns ``image`` as a 3D scalar image, or raises InputError."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(a vector or color image); a scalar volume is needed")
    dimension = image.GetDimension()
    if dimension == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0
        image = sitk.Extract(image, size, [0, 0, 0, 0])
        dimension = 3
    if dimension == 3 and min_size > 1 and sorted(image.GetSize())[1] < min_size:
        size = " x ".join(str(n) for n in image.GetSize())
        raise InputError(f"{path}: is {size} voxels, too small to segment (at least {min_size} voxels along two "
                         f"axes, and more than one slice)")
    if dimension == 2 or (dimension == 3 and 1 in image.GetSize()):
        hint = " (give the folder of the DICOM series, not one file)" if path.suffix.lower() == ".dcm" else ""
        raise InputError(f"{path}: is 2D; a 3D volume is needed{hint}")
    if dimension != 3:
        raise InputError(f"{path}: is {dimension}D; a single 3D volume is needed")
    if image.GetPixelID() in _FLOAT_TYPES:
        voxels = sitk.GetArrayViewFromImage(image)
        if np.isnan(voxels).any():
            raise InputError(f"{path}: has NaN (not-a-number) voxels")
        if np.isinf(voxels).any():
            raise InputError(f"{path}: has infinite voxels")
    return image


def read_image(path: str | os.PathLike, min_size: int = 1) -> sitk.Image:
    """Reads a 3D scalar volume from a file or from a folder holding a DICOM series.

    Files are anything SimpleITK reads (.nii, .nii.gz, .nrrd, .mha, .mhd, ...). For a folder,
    the DICOM series with the most files is read. A constant image is accepted (see
    ``is_constant``).

    Args:
        path: image file or DICOM folder.
        min_size: voxels needed along at least two axes (``MIN_SIZE`` for an image to segment;
            a label or a cropped correction may be thinner).

    Returns:
        The 3D image (its pixel type as stored).

    Raises:
        InputError: missing path, unreadable or non-image file, no DICOM series, 2D, 4D or
            vector image, NaN or infinite voxels. The message is one line starting with the path.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: does not exist")
    check_regular_file(path)
    image = read_dicom_folder(path) if path.is_dir() else read_file(path)
    return _check_volume(image, path, min_size)


def channel_paths(path: Path, n_channels: int) -> list[Path]:
    """The files of a multi-channel case: ``CASE_0000.ext`` names its siblings ``CASE_0001.ext``..."""
    path = Path(path)
    if n_channels == 1:
        return [path]
    m = re.match(r"^(.*)_0000(\..+)$", path.name)
    if not m:
        raise InputError(f"{path}: the model takes {n_channels} channels; name the first CASE_0000.ext "
                         f"and put CASE_0001.ext ... beside it")
    return [path.with_name(f"{m.group(1)}_{c:04d}{m.group(2)}") for c in range(n_channels)]


def read_channels(path: str | os.PathLike, n_channels: int) -> list[sitk.Image]:
    """A case's channels (see :func:`channel_paths`), all on the first one's grid."""
    paths = channel_paths(Path(path), n_channels)
    images = [read_image(p, MIN_SIZE) for p in paths]
    for p, im in zip(paths[1:], images[1:]):
        if im.GetSize() != images[0].GetSize():
            raise InputError(f"{p}: channel grid {im.GetSize()} differs from {images[0].GetSize()}")
    return images


def is_constant(image: sitk.Image) -> bool:
    """Tells whether every voxel of a scalar image has the same value.

    Args:
        image: a scalar image.

    Returns:
        True if minimum == maximum.
    """
    extrema = sitk.MinimumMaximumImageFilter()
    extrema.Execute(image)
    return extrema.GetMinimum() == extrema.GetMaximum()


def write_image(image: sitk.Image, path: str | os.PathLike) -> None:
    """Writes an image atomically, with compression, in the format given by the extension.

    Args:
        image: the image.
        path: the output file; its folder must exist.

    Raises:
        InputError: the file cannot be written (one line starting with the path).
    """
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            sitk.WriteImage(image, str(tmp), True)
    except RuntimeError as error:
        raise InputError(f"{path}: cannot be written ({sitk_error_detail(error)})") from None
    except OSError as error:
        raise InputError(f"{path}: cannot be written ({error.strerror or error})") from None


def write_labelmap(label_image: sitk.Image, path: str | os.PathLike) -> None:
    """Writes a labelmap as uint8 (labels up to 255) or uint16, keeping its geometry.

    Args:
        label_image: integer labels (0 = background).
        path: the output file.

    Raises:
        ValueError: negative labels or labels above 65535.
        InputError: the file cannot be written.
    """
    extrema = sitk.MinimumMaximumImageFilter()
    extrema.Execute(label_image)
    if extrema.GetMinimum() < 0 or extrema.GetMaximum() > 65535:
        raise ValueError(f"labels must lie in 0..65535, not {extrema.GetMinimum()}..{extrema.GetMaximum()}")
    pixel_type = sitk.sitkUInt8 if extrema.GetMaximum() < 256 else sitk.sitkUInt16
    if label_image.GetPixelID() in _FLOAT_TYPES:
        label_image = sitk.Round(label_image)
    write_image(sitk.Cast(label_image, pixel_type), path)


def write_float_volume(image: sitk.Image, path: str | os.PathLike) -> None:
    """Writes a volume as float32 (e.g. probabilities), keeping its geometry.

    Args:
        image: a scalar image of any pixel type.
        path: the output file.

    Raises:
        InputError: the file cannot be written.
    """
    # a float32 image is written as it is: a cast would copy a full-size CT's map for nothing
    write_image(image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32), path)


def array_to_image(array_zyx: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Builds an image from a numpy array with the geometry of a reference image.

    Args:
        array_zyx: voxels in numpy order (z, y, x), like ``sitk.GetArrayFromImage`` returns;
            bool arrays become uint8.
        reference: image whose origin, spacing and direction are copied.

    Returns:
        The new image.

    Raises:
        ValueError: the array shape does not match the reference size.
    """
    array = np.asarray(array_zyx)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    expected = tuple(reversed(reference.GetSize()))
    if array.shape != expected:
        raise ValueError(f"array shape {array.shape} does not match the reference (z, y, x) shape {expected}")
    image = sitk.GetImageFromArray(array, isVector=False)
    image.CopyInformation(reference)
    return image
