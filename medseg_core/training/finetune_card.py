"""What a fine-tuned model's card says of where it came from (lineage, the corrections with
their SHA-256, Dice before and after on them) and the name it is saved under."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError
from ..models.card import ModelCard
from ..models.package import find_model, sha256_file, user_models_dir


def new_card(pkg, name: str, stamp: str, record: dict) -> ModelCard:
    """The fine-tuned model's card: the parent's, renamed and re-versioned, with where it came from."""
    parent = pkg.card
    card = ModelCard.from_dict(parent.to_dict(), str(pkg.path))
    card.name = name
    card.inference.int8 = {}  # the parent's int8 network is not this model's (its files stay with the parent)
    sep = "." if "+" in parent.version else "+"  # one '+' only (semantic versioning)
    card.version = f"{parent.version}{sep}ft.{stamp.replace('-', '')}"
    order = list(parent.label_names().values())
    trained = sorted({n for c in record["cases"] for n in c["labels_trained"]}, key=order.index)
    card.description = (f"{parent.name} {parent.version} fine-tuned on {len(record['cases'])} corrected case(s) "
                        f"({', '.join(trained)}); {record['steps']} steps. " + (parent.description or "")).strip()
    card.parent = {"name": parent.name, "version": parent.version, "weights_sha256": parent.weights.sha256,
                   "path": str(pkg.path), "source": pkg.source}
    if parent.parent:
        card.parent["parent"] = parent.parent
    training = dict(parent.training)
    if "finetune" in training:
        training["previous_finetunes"] = list(training.get("previous_finetunes", [])) + [training["finetune"]]
    training["finetune"] = record
    card.training = training
    # The parent's validation figures do not describe this model: keep them, out of the way.
    card.validation = {"parent": parent.validation,
                       "note": "not re-validated after fine-tuning; 'parent' holds the parent's figures"}
    return card


def summarise(per_case: list[dict[int, float]], names: dict[int, str]) -> tuple[float, dict[str, tuple[float, int]]]:
    per_label = {}
    for v, name in names.items():
        vals = [d[v] for d in per_case if v in d]
        if vals:
            per_label[name] = (float(np.mean(vals)), len(vals))
    mean = float(np.mean([d for d, _ in per_label.values()])) if per_label else float("nan")
    return mean, per_label


def rounded(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def sha256_path(path: Path) -> str:
    """SHA-256 of a file; of a folder (a DICOM series), over its files' names and contents."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def check_name(name: str) -> str:
    """``name`` if it is a plain folder name that no user or bundled model has; else one line."""
    if not name or name.startswith(".") or any(c in name for c in "/\\:") or name != name.strip():
        raise InputError(f"--name {name!r}: a model name must be a plain folder name (no slashes, "
                         f"not starting with a dot)")
    if (user_models_dir() / name).exists():
        raise InputError(f"{user_models_dir() / name}: a model named {name!r} already exists; choose another --name")
    try:
        find_model(name)
    except ModelError:
        return name
    raise InputError(f"--name {name}: a model of that name already exists (a bundled one); choose another --name")


def default_name(parent: str, stamp: str) -> str:
    """``PARENT-ft-STAMP``, with a counter if a run in the same second took it."""
    base = f"{parent}-ft-{stamp}"
    name, n = base, 1
    while (user_models_dir() / name).exists():  # two runs in the same second
        n += 1
        name = f"{base}-{n}"
    return name
