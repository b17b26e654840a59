"""The model card: everything needed to rebuild, run and judge a model, as JSON.

Spacing is in SimpleITK's (x, y, z) order, in mm; ``patch_size`` is in array order (z, y, x) for
3D and (y, x) for 2D; ``labels`` exclude background (value 0).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ModelError, read_json
from ..labels import Label

CARD_FORMAT = 1


@dataclass
class ModelCard:
    name: str
    version: str
    description: str
    modality: str
    channels: list[str]
    labels: list[Label]
    preprocessing: dict
    patch_size: list[int]
    network: dict
    weights: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    small_organs: list[str] = field(default_factory=list)
    parent: dict | None = None
    format: int = CARD_FORMAT

    @property
    def num_classes(self) -> int:
        return 1 + len(self.labels)

    @property
    def spatial_dims(self) -> int:
        return int(self.network.get("kwargs", {}).get("spatial_dims", len(self.patch_size)))

    def label_names(self) -> dict[int, str]:
        return {lab.value: lab.name for lab in self.labels}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = [lab.to_dict() for lab in self.labels]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict, source: str = "card.json") -> "ModelCard":
        try:
            d = dict(d)
            d["labels"] = [Label.from_dict(x) for x in d["labels"]]
            known = set(cls.__dataclass_fields__)
            return cls(**{k: v for k, v in d.items() if k in known})
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{source}: invalid model card ({exc})") from None

    @classmethod
    def read(cls, path: str | Path) -> "ModelCard":
        path = Path(path)
        return cls.from_dict(read_json(path, "model card", ModelError), str(path))
