"""Label descriptions shared by model cards, datasets and segmentation files."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field


def name_key(name: str) -> str:
    """The key names are matched by (segments to model labels, names to terminology codes): lower
    case, letters and digits only. The Slicer module's ``Commands.normalize_segment_name`` applies
    the same rule (a test holds the two together).

    >>> name_key("Right_Parotid "), name_key("right-parotid"), name_key("Spinal cord")
    ('rightparotid', 'rightparotid', 'spinalcord')
    """
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


@dataclass(frozen=True)
class Label:
    """One foreground label of a segmentation.

    Attributes:
        value: the voxel value in the labelmap (1..N; 0 is background).
        name: the segment name shown to the user (e.g. ``"Brainstem"``).
        color: RGB in [0, 1].
        terminology: optional DICOM/SNOMED-CT coding, a dict with keys ``category`` and ``type``
            (each ``[scheme, code, meaning]``) and optionally ``anatomicRegion``.
    """

    value: int
    name: str
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    terminology: dict | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["color"] = [round(float(c), 4) for c in self.color]
        if d["terminology"] is None:
            del d["terminology"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Label":
        return cls(int(d["value"]), str(d["name"]), tuple(float(c) for c in d.get("color", (0.5, 0.5, 0.5))),
                   d.get("terminology"))
