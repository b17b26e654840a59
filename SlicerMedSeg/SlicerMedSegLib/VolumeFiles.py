"""The volumes the module writes for its worker: each once, rewritten only when it changed."""

import os
import shutil

import vtk

from .SceneLoader import writeVolume


class VolumeFiles:
    """The volumes written for the worker, one file per volume node in one folder (made by
    ``makeFolder()`` on first use), rewritten only when the volume's voxels or geometry changed:
    the worker keeps the images it read by path and modification time, so a refine after a
    segment of the same volume reads nothing. The last ``keep`` volumes are kept (the worker keeps
    as many images); older files are removed."""

    def __init__(self, makeFolder, keep=2):
        self.makeFolder = makeFolder
        self.keep = keep
        self.folder = None
        self.files = {}  # node ID -> (volumeVersion, path), oldest first

    def path(self, volumeNode):
        version = volumeVersion(volumeNode)
        known = self.files.pop(volumeNode.GetID(), None)
        if known is not None and known[0] == version and os.path.isfile(known[1]):
            self.files[volumeNode.GetID()] = known
            return known[1]
        if not self.folder or not os.path.isdir(self.folder):
            self.folder = self.makeFolder()
        path = os.path.join(self.folder, f"{volumeNode.GetID()}.nrrd")
        staged = path + ".tmp.nrrd"  # the worker never sees a half-written image
        try:
            writeVolume(volumeNode, staged)
            os.replace(staged, path)
        except Exception:
            if os.path.exists(staged):
                os.remove(staged)
            raise
        self.files[volumeNode.GetID()] = (version, path)
        while len(self.files) > self.keep:
            _, oldPath = self.files.pop(next(iter(self.files)))  # the least recently used
            if os.path.isfile(oldPath):
                os.remove(oldPath)
        return path

    def clear(self):
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder, self.files = None, {}


def volumeVersion(volumeNode):
    """What a written copy of ``volumeNode`` depends on: its voxels' modification time and its
    IJK-to-RAS matrix (equal versions: the copy is still the volume)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return volumeNode.GetImageData().GetMTime(), tuple(matrix.GetElement(r, c) for r in range(4) for c in range(4))
