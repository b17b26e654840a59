"""The model card: everything needed to rebuild, run and judge a model, as JSON.

A card has typed sections for what running the model needs, and free records for where it came
from:

* ``preprocessing`` (:class:`~medseg_core.data.preprocess_config.PreprocessConfig`): the model
  grid's spacing (x, y, z) in mm, orientation, body crop and per-channel normalisation;
* ``network`` (:class:`NetworkSpec`): a registered network's name and keyword arguments;
* ``inference`` (:class:`InferenceSpec`): the window (``patch_size``, array order (z, y, x) for
  3D, (y, x) for 2D) and the test-time flips with the label pairs they swap;
* ``weights`` (:class:`WeightsRecord`): the safetensors file, its SHA-256, dtype and size;
* ``training``, ``validation`` and ``parent``: records (how it was trained, how it scored, what
  it was fine-tuned from), read by people and reports, never needed to run the model.

``labels`` exclude background (value 0). Format 1 cards (``patch_size`` at the top, the flips
only inside ``training.config``, untyped sections) are read as well; they are written as
format 2.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..data.preprocess_config import PreprocessConfig
from ..errors import ModelError, read_json
from ..labels import Label

CARD_FORMAT = 2
WEIGHTS_FILE = "weights.safetensors"


@dataclass
class NetworkSpec:
    """A network as the registry builds it: ``build_network(name, **kwargs)``."""

    name: str
    kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkSpec":
        if not isinstance(d.get("name"), str) or not isinstance(d.get("kwargs", {}), dict):
            raise ValueError(f"network must be {{'name': str, 'kwargs': dict}}, got {d!r}")
        return cls(d["name"], dict(d.get("kwargs", {})))


@dataclass
class InferenceSpec:
    """What running the model needs beyond its network and preprocessing.

    Attributes:
        patch_size: the sliding window, array order, as trained.
        mirror_axes: axes of the model-grid volume (0, 1, 2 = z, y, x, for 2D models too) flipped
            for test-time augmentation (those the model was trained with); empty: no flips.
        mirror_swap: label pairs exchanged when the last of ``mirror_axes`` (left-right) is flipped.
        largest_component: label values of which only the largest connected component is kept
            (chosen per organ on the validation split, as nnU-Net does; ``tools/choose_postprocessing.py``).
        int8: the network quantised to int8 for OpenVINO (``tools/quantize_int8.py``), which runs it on
            a CPU without native bf16: ``{"files": {file name: SHA-256}, ...}`` (an IR's ``.xml`` and
            ``.bin`` in the package), with how it was calibrated and validated; empty: none.
    """

    patch_size: list[int]
    mirror_axes: list[int] = field(default_factory=list)
    mirror_swap: list[list[int]] = field(default_factory=list)
    largest_component: list[int] = field(default_factory=list)
    int8: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"patch_size": list(self.patch_size), "mirror_axes": list(self.mirror_axes),
             "mirror_swap": [list(p) for p in self.mirror_swap]}
        if self.largest_component:  # absent means none: older cards keep their form
            d["largest_component"] = [int(v) for v in self.largest_component]
        if self.int8:
            d["int8"] = dict(self.int8)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InferenceSpec":
        patch = d.get("patch_size")
        if (not isinstance(patch, list) or len(patch) not in (2, 3)
                or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in patch)):
            raise ValueError(f"patch_size must be 2 or 3 positive whole numbers, got {patch!r}")
        axes = [int(a) for a in d.get("mirror_axes") or []]
        if any(not 0 <= a <= 2 for a in axes):
            raise ValueError(f"mirror_axes {axes} must be volume axes 0, 1 or 2")
        swap = [[int(a), int(b)] for a, b in d.get("mirror_swap") or []]
        largest = d.get("largest_component") or []
        if not isinstance(largest, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                    for v in largest):
            raise ValueError(f"largest_component must be a list of label values, got {largest!r}")
        int8 = d.get("int8") or {}
        files = int8.get("files") if isinstance(int8, dict) else None
        if int8 and (not isinstance(files, dict) or sorted(Path(f).suffix for f in files) != [".bin", ".xml"]
                     or not all(isinstance(h, str) and len(h) == 64 for h in files.values())):
            raise ValueError("int8.files must name an OpenVINO .xml and .bin, each with its SHA-256")
        return cls(list(patch), axes, swap, list(largest), dict(int8))


@dataclass
class WeightsRecord:
    """The weights file of a package and what :func:`~medseg_core.models.package.save_package` measured."""

    file: str = WEIGHTS_FILE
    sha256: str | None = None
    dtype: str = "float32"
    parameters: int = 0

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "dtype": self.dtype, "parameters": self.parameters}

    @classmethod
    def from_dict(cls, d: dict) -> "WeightsRecord":
        return cls(str(d.get("file", WEIGHTS_FILE)), d.get("sha256"), str(d.get("dtype", "float32")),
                   int(d.get("parameters", 0)))


@dataclass
class ModelCard:
    name: str
    version: str
    description: str
    modality: str
    channels: list[str]
    labels: list[Label]
    preprocessing: PreprocessConfig
    network: NetworkSpec
    inference: InferenceSpec
    weights: WeightsRecord = field(default_factory=WeightsRecord)
    training: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    small_organs: list[str] = field(default_factory=list)
    parent: dict | None = None
    format: int = CARD_FORMAT

    @property
    def num_classes(self) -> int:
        return 1 + len(self.labels)

    @property
    def patch_size(self) -> list[int]:
        """The window the model runs on (``inference.patch_size``)."""
        return self.inference.patch_size

    @property
    def spatial_dims(self) -> int:
        return int(self.network.kwargs.get("spatial_dims", len(self.inference.patch_size)))

    def label_names(self) -> dict[int, str]:
        return {lab.value: lab.name for lab in self.labels}

    def to_dict(self) -> dict:
        return {"format": CARD_FORMAT, "name": self.name, "version": self.version, "description": self.description,
                "modality": self.modality, "channels": list(self.channels),
                "labels": [lab.to_dict() for lab in self.labels], "small_organs": list(self.small_organs),
                "preprocessing": self.preprocessing.to_dict(), "network": self.network.to_dict(),
                "inference": self.inference.to_dict(), "weights": self.weights.to_dict(),
                "training": self.training, "validation": self.validation, "parent": self.parent}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict, source: str = "card.json") -> "ModelCard":
        """A card from its JSON form, format 1 or 2; anything malformed is a one-line ``ModelError``."""
        try:
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            fmt = int(d.get("format", 1))
            if fmt not in (1, CARD_FORMAT):
                raise ValueError(f"format {fmt} is not known to this version of medseg (it reads 1 and {CARD_FORMAT})")
            labels = [Label.from_dict(x) for x in d["labels"]]
            if not labels:
                raise ValueError("it names no labels")
            if fmt == 1:  # the flips were only in the training record
                config = (d.get("training") or {}).get("config") or {}
                inference = {"patch_size": d.get("patch_size"), "mirror_axes": config.get("mirror_axes"),
                             "mirror_swap": config.get("mirror_swap")}
            else:
                inference = d["inference"]
            preprocessing = PreprocessConfig.from_dict(d["preprocessing"])
            spacing = preprocessing.spacing
            if spacing is not None and (len(spacing) != 3
                                        or not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0
                                                   for s in spacing)):
                raise ValueError(f"preprocessing spacing must be 3 positive numbers (mm) or null, got {spacing!r}")
            return cls(name=str(d["name"]), version=str(d["version"]), description=str(d.get("description", "")),
                       modality=str(d["modality"]), channels=[str(c) for c in d["channels"]], labels=labels,
                       preprocessing=preprocessing, network=NetworkSpec.from_dict(d["network"]),
                       inference=InferenceSpec.from_dict(inference),
                       weights=WeightsRecord.from_dict(d.get("weights") or {}), training=dict(d.get("training") or {}),
                       validation=dict(d.get("validation") or {}), small_organs=list(d.get("small_organs") or []),
                       parent=d.get("parent"))
        except KeyError as exc:
            raise ModelError(f"{source}: invalid model card (missing {exc})") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{source}: invalid model card ({exc})") from None

    @classmethod
    def read(cls, path: str | Path) -> "ModelCard":
        path = Path(path)
        return cls.from_dict(read_json(path, "model card", ModelError), str(path))
