"""``models``: the installed models, as ``medseg models --json`` prints them."""

from __future__ import annotations


def models_json() -> list[dict]:
    """One entry per installed model (bundled, then the user's): name, version, description,
    modality, channels, labels, network, source, path, validation, parent, small organs and the
    aliases a bundled model answers to."""
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
                    "aliases": named.get(m.path.name, []) if m.source == "bundled" else []})
    return out
