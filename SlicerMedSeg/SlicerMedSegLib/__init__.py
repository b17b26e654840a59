"""SlicerMedSeg's module library.

Pure Python, importable and tested without Slicer: ``Signal``, ``Parameters``, ``Geometry``,
``Models``, ``Commands``, ``Protocol``, ``ProcessRunner``, ``Requirements``.
Slicer only: ``EventPump`` (qt.QTimer), ``InstallLogic``, ``SceneLoader``, ``SegmentationLogic``,
``Widget``. Nothing is imported here, so importing a pure module never pulls in Slicer.
"""
