"""``models``: the installed models, as ``medseg models --json`` prints them."""

from __future__ import annotations


def models_json() -> list[dict]:
    """One entry per installed model (bundled, then the user's): name, version, description,
    modality, channels, labels, network, source, path, validation, parent, small organs, the
    aliases a bundled model answers to, its lineage (``["name version", ...]``, parent first) and,
    for a fine-tuned model, the Dice of its corrections before and after and the organs it
    answers for with the fine-tuned weights (``finetune``)."""
    from ..models import aliases, list_models

    named = {}
    for alias, entry in aliases().items():
        named.setdefault(entry["model"], []).append(alias)
    out = []
    for m in list_models():
        c = m.card
        out.append({"name": c.name, "version": c.version, "description": c.description, "modality": c.modality,
                    "channels": c.channels, "labels": [lab.to_dict() for lab in c.labels],
                    "network": c.network.name, "source": m.source, "path": str(m.path),
                    "validation": c.validation, "parent": c.parent, "small_organs": c.small_organs,
                    "aliases": named.get(m.path.name, []) if m.source == "bundled" else [],
                    "lineage": lineage(c.parent), "finetune": _finetune_summary(c.training)})
    return out


def lineage(parent: dict | None) -> list[str]:
    """``["name version", ...]`` from the parent up to the first model, from a card's ``parent``.

    >>> lineage({"name": "a-ft", "version": "1+ft.2", "parent": {"name": "a", "version": "1"}})
    ['a-ft 1+ft.2', 'a 1']
    """
    out = []
    while isinstance(parent, dict) and len(out) < 100:
        out.append(f"{parent.get('name', '?')} {parent.get('version', '?')}")
        parent = parent.get("parent")
    return out


def _finetune_summary(training) -> dict | None:
    ft = training.get("finetune") if isinstance(training, dict) else None
    if not isinstance(ft, dict):
        return None
    return {"cases": len(ft.get("cases", [])), "dice_before": ft.get("dice_before"), "dice_after": ft.get("dice_after"),
            "generations": 1 + len(training.get("previous_finetunes", [])), "routed": ft.get("routed")}
