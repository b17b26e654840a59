"""SlicerMedSeg's engine: networks, losses, data, training, inference and model packages.

Pure Python (PyTorch, SimpleITK, numpy); nothing here imports Slicer or Qt. Heavy modules are
imported lazily so that ``import medseg_core`` stays cheap.
"""

__version__ = "0.1.0"
