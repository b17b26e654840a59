"""Image, labelmap and Slicer segmentation input/output.

Every reader turns bad input into ``InputError`` with a one-line message naming the file; every
writer is atomic (temporary name, then rename), so no half-written output is ever left behind.

Names are imported on first use, so ``medseg_core.io.terminology`` (used when writing model
cards) works on a machine without SimpleITK, such as a GPU training node fed from a cache.
"""

from importlib import import_module

_EXPORTS = {
    "OutputSet": "atomic", "atomic_output": "atomic", "check_writable_dir": "atomic",
    "array_to_image": "image", "channel_paths": "image", "is_constant": "image", "read_channels": "image",
    "read_image": "image", "write_float_volume": "image",
    "write_image": "image", "write_labelmap": "image",
    "read_correction": "corrections", "read_segmentation": "segmentation", "write_segmentation": "segmentation",
    "default_color": "terminology", "terminology_for": "terminology",
    "OUTPUT_SUFFIXES": "naming", "output_paths": "naming", "stem_of": "naming",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
