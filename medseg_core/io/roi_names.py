"""Clinical structure names matched to a model's labels (RT Structure Sets and DICOM SEG read as
fine-tuning corrections).

A planning system's structure set holds the organs under the names the clinic uses, beside
targets, planning-risk volumes and helper structures. A name is matched to a model label when
their :func:`roi_key` is the same:

* as segment names are matched (:func:`~medseg_core.labels.name_key`): case, spaces and
  underscores do not count (``"Spinal Cord"`` is ``SpinalCord``);
* laterality written first or last, in full or short, is the same side (AAPM TG-263 writes it
  last: ``"Parotid_L"``, ``"Lt Parotid"``, ``"Parotid Left"`` are ``LeftParotid``);
* a few usual synonyms (:data:`SYNONYMS`): ``"Cord"``, ``"Oesophagus"``, TG-263's
  ``"Bone_Mandible"``, ``"Glnd_Submand"`` ...

Derived structures are never taken for the organ (:func:`is_derived`): a planning-risk volume
(``"SpinalCord_PRV"``, ``"PRV_Brainstem_3mm"``), a margin (``"Cord+5mm"``, ``"Parotid_L_exp"``),
TG-263's helper and optimisation structures (``"z_Ring"``, ``"opt_Parotid"``, ``"Parotid_avoid"``).
Structures no label matches (``"External"``, ``"PTV70"`` for an organ model) are left out.
"""

from __future__ import annotations

import re

from ..labels import name_key

LEFT, RIGHT = {"l", "lt", "left", "lft", "sin"}, {"r", "rt", "right", "rgt", "dx"}

# roi_key of a clinical name -> roi_key of the name models use (keys without laterality)
SYNONYMS = {
    "cord": "spinalcord", "spinalcord": "spinalcord",
    "oesophagus": "esophagus", "esophagus": "esophagus",
    "bonemandible": "mandible", "mandible": "mandible",
    "brainstem": "brainstem", "brainstm": "brainstem",
    "parotidgland": "parotid", "glndparotid": "parotid",
    "glndsubmand": "submandibular", "submandibulargland": "submandibular", "submand": "submandibular",
    "larynxglottic": "larynx",
}

_DERIVED_TOKENS = re.compile(r"^(prv\w*|\w*\d+mm|mm|opt|avoid|ring|exp|expand|plus|minus|"
                             r"dose|wire|marker|artifact|artefact|couch)$")


def _tokens(name: str) -> list[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", str(name))  # "BrainStem_PRV" -> "Brain Stem PRV"
    return [t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t]


def is_derived(name: str) -> bool:
    """A structure made from an organ rather than the organ: a planning-risk volume, a margin, a
    helper. (Targets are not derived: a target model's labels are PTVs.)

    >>> [is_derived(n) for n in ("SpinalCord_PRV", "Cord+5mm", "z_Ring", "opt_Parotid_L", "Parotid_L", "Brainstem")]
    [True, True, True, True, False, False]
    """
    if re.match(r"\s*([zZ][_ -]|z[A-Z])", str(name)):  # TG-263: "z_Ring", "zPTVopt" are not for reporting
        return True
    if re.search(r"[+-]\s*\d", str(name)) or "prv" in name_key(name):  # "Cord+5mm", "Parotid-3", "CordPRV5"
        return True
    return any(_DERIVED_TOKENS.match(t) for t in _tokens(name))


def roi_key(name: str) -> str:
    """The key a structure name is matched by: the side first, then the organ's usual name.

    >>> [roi_key(n) for n in ("Parotid_L", "Lt Parotid", "LeftParotid", "Spinal Cord", "Cord", "Bone_Mandible")]
    ['leftparotid', 'leftparotid', 'leftparotid', 'spinalcord', 'spinalcord', 'mandible']
    """
    tokens = [name_key(t) for t in re.split(r"[^A-Za-z0-9]+", str(name)) if name_key(t)]
    side = ""
    if len(tokens) > 1 and tokens[0] in LEFT | RIGHT:
        side, tokens = ("left" if tokens[0] in LEFT else "right"), tokens[1:]
    elif len(tokens) > 1 and tokens[-1] in LEFT | RIGHT:
        side, tokens = ("left" if tokens[-1] in LEFT else "right"), tokens[:-1]
    organ = "".join(tokens)
    for prefix in ("left", "right"):  # "LeftParotid", one token
        if not side and organ.startswith(prefix) and len(organ) > len(prefix):
            side, organ = prefix, organ[len(prefix):]
    return side + SYNONYMS.get(organ, organ)


def match_rois(names, labels) -> dict[str, int]:
    """``{structure name: model label value}`` for the structures that are one of ``labels``
    (:class:`~medseg_core.labels.Label`); derived structures and unknown names are left out."""
    by_key = {roi_key(lab.name): lab.value for lab in labels}
    return {n: by_key[roi_key(n)] for n in names if not is_derived(n) and roi_key(n) in by_key}
