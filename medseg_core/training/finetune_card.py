"""What a fine-tuned model's card says of where it came from: lineage, the corrections (with
their SHA-256), and Dice before and after on them."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from ..models.card import ModelCard
from ..models.package import sha256_file


def new_card(pkg, name: str, stamp: str, record: dict) -> ModelCard:
    """The fine-tuned model's card: the parent's, renamed and re-versioned, with where it came from."""
    parent = pkg.card
    card = ModelCard.from_dict(parent.to_dict(), str(pkg.path))
    card.name = name
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
