"""Model packages: a folder with ``card.json`` and ``weights.safetensors``."""

from .card import ModelCard
from .package import (
    ModelPackage,
    aliases,
    bundled_dir,
    find_model,
    list_models,
    load_package,
    save_package,
    user_models_dir,
)

__all__ = ["ModelCard", "ModelPackage", "aliases", "bundled_dir", "find_model", "list_models", "load_package",
           "save_package", "user_models_dir"]
