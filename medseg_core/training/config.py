"""The training configuration, read from a JSON file (every field optional but the network)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputError, read_json


def augment_options() -> list[str]:
    """What ``augment_kwargs`` may set: :class:`~medseg_core.data.augment.Augmenter`'s options, less
    those the trainer sets itself (the mirroring from the config, the spacing, the seed)."""
    import inspect

    from ..data.augment import Augmenter

    own = {"self", "mirror_axes", "swap", "spacing", "seed"}
    return [p for p in inspect.signature(Augmenter.__init__).parameters if p not in own]


@dataclass
class TrainConfig:
    name: str = "model"
    version: str = "1.0.0"
    description: str = ""
    network: dict = field(default_factory=lambda: {"name": "unet", "kwargs": {"spatial_dims": 3}})
    patch_size: list[int] = field(default_factory=lambda: [64, 64, 64])
    spacing: list[float] | None = None  # (x, y, z) mm; None: the dataset's median
    crop_to_body: bool = True
    resample_oblique: bool = False  # see PreprocessConfig: oblique grids onto axis-aligned ones
    margin_mm: float = 10.0
    batch_size: int = 2
    steps: int = 1000
    time_budget_s: float | None = None  # stop (and finish the LR schedule) after this much time
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    recipe: str = "dice_ce"  # see medseg_core/training/recipes/__init__.py
    recipe_kwargs: dict = field(default_factory=dict)
    fg_fraction: float = 0.67
    deep_supervision: bool = True
    mirror_axes: list[int] = field(default_factory=list)
    mirror_swap: list[list[int]] = field(default_factory=list)
    augment_kwargs: dict = field(default_factory=dict)  # more of data.augment.Augmenter (blur_p, affine_p, ...)
    init_from: str | None = None  # a model name or package whose weights start the run (same network)
    val_every: int = 250
    val_cases: int | None = None  # None: the whole validation split
    seed: int = 0
    amp: bool = True
    label_dir: str = "labelsTr"
    labels_key: str = "labels"
    small_organs: list[str] = field(default_factory=list)
    half_weights: bool = True

    @classmethod
    def read(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        data = read_json(path, "config file")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"{path}: unknown config keys: {', '.join(sorted(unknown))}")
        aug = data.get("augment_kwargs", {})
        if not isinstance(aug, dict):
            raise InputError(f"{path}: augment_kwargs must be an object, got {aug!r}")
        unknown = set(aug) - set(augment_options())
        if unknown:
            raise InputError(f"{path}: unknown augment_kwargs keys: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(augment_options())})")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)
