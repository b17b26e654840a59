"""Building blocks of the papers' networks (deformable convolution, CoordConv, CoordPool, ASPP,
DenseASPP, squeeze-and-excitation), each for 2D and 3D.

Note: the name ``deform_conv`` here is the FUNCTION; the backend switch of its module is set with
:func:`set_torchvision_backend`.
"""

from .aspp import ASPP, DenseASPP
from .coord import AddCoords, CoordPool, add_coords
from .deform_conv import DeformConv, deform_conv, set_torchvision_backend
from .se import PreActSEResBlock, SqueezeExcitation

__all__ = ["ASPP", "AddCoords", "CoordPool", "DeformConv", "DenseASPP", "PreActSEResBlock",
           "SqueezeExcitation", "add_coords", "deform_conv", "set_torchvision_backend"]
