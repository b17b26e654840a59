"""Reading, verifying, writing and finding model packages.

A package is a folder ``NAME/`` with ``card.json`` and ``weights.safetensors``; the card holds the
weights' SHA-256, checked before the weights are read. Weights are never unpickled.

Search order for a name: the user folder (``$MEDSEG_HOME/models`` or ``~/.medseg/models``), then
the models bundled with the package; a path to a package folder is taken as is.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import ModelError
from ..io.atomic import atomic_folder, write_text_atomic
from .card import WEIGHTS_FILE, ModelCard, WeightsRecord

if TYPE_CHECKING:  # PyTorch loads where weights are read: a run on an exported network needs none
    import torch

WEIGHTS = WEIGHTS_FILE
CARD = "card.json"
ALIASES = "aliases.json"


def bundled_dir() -> Path:
    return Path(__file__).resolve().parent / "bundled"


def user_models_dir() -> Path:
    home = os.environ.get("MEDSEG_HOME")
    return (Path(home) if home else Path.home() / ".medseg") / "models"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ModelPackage:
    """A model card with the folder it came from; ``source`` is "bundled", "user" or "path"."""

    card: ModelCard
    path: Path
    source: str

    def verify_weights(self) -> Path:
        """The weights file, once its SHA-256 matches the card's (a clear error when not)."""
        wfile = self.path / self.card.weights.file
        if not wfile.is_file():
            raise ModelError(f"{wfile}: weights file is missing")
        expected = self.card.weights.sha256
        actual = sha256_file(wfile)
        if expected != actual:
            raise ModelError(f"{wfile}: SHA-256 {actual[:12]}... does not match the card's "
                             f"{str(expected)[:12]}...; the file is corrupted or was replaced")
        return wfile

    def int8_xml(self) -> Path | None:
        """The int8 OpenVINO network the card records (``inference.int8``), its files' SHA-256
        checked (a clear error when one is missing or changed); None where the card has none."""
        files = self.card.inference.int8.get("files") or {}
        for name, expected in files.items():
            path = self.path / name
            if not path.is_file():
                raise ModelError(f"{path}: the card's int8 network file is missing")
            if sha256_file(path) != expected:
                raise ModelError(f"{path}: SHA-256 does not match the card's; the file is corrupted or was replaced")
        return next((self.path / n for n in files if n.endswith(".xml")), None)

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        """Verify the SHA-256 and read the weights as float32 tensors (safetensors only)."""
        from safetensors.torch import load_file

        wfile = self.verify_weights()
        try:
            state = load_file(str(wfile))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"{wfile}: cannot read weights ({exc})") from None
        return dequantize(state)

    def build(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The network in eval mode on ``device`` with the package's weights."""
        from ..nets import build_network

        spec = self.card.network
        try:
            net = build_network(spec.name, **spec.kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{self.path / CARD}: cannot build network ({exc})") from None
        try:
            net.load_state_dict(self.load_state_dict())
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelError(f"{self.path / WEIGHTS}: weights do not fit the network ({first})") from None
        return net.to(device).eval()


def load_package(path: str | Path, source: str = "path") -> ModelPackage:
    path = Path(path)
    if not (path / CARD).is_file():
        raise ModelError(f"{path}: not a model package (no {CARD})")
    return ModelPackage(ModelCard.read(path / CARD), path, source)


def list_models() -> list[ModelPackage]:
    """All packages, user ones first; a user package shadows a bundled one of the same name."""
    found: dict[str, ModelPackage] = {}
    for root, source in ((user_models_dir(), "user"), (bundled_dir(), "bundled")):
        if not root.is_dir():
            continue
        for sub in sorted(root.iterdir()):
            if (sub / CARD).is_file() and sub.name not in found and not sub.name.startswith("."):
                try:
                    found[sub.name] = load_package(sub, source)
                except ModelError:
                    continue
    return list(found.values())


def aliases() -> dict[str, dict]:
    """Bundled aliases, ``{alias: {"model": name, "why": reason}}`` (``bundled/aliases.json``);
    e.g. ``hn-oar`` names the bundled head-and-neck model that did best on validation."""
    path = bundled_dir() / ALIASES
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def find_model(name_or_path: str) -> ModelPackage:
    """A package by name (user folder, then bundled, then a bundled alias) or by folder path."""
    p = Path(name_or_path).expanduser()
    if (p / CARD).is_file():
        return load_package(p, "path")
    for root, source in ((user_models_dir(), "user"), (bundled_dir(), "bundled")):
        if (root / name_or_path / CARD).is_file():
            return load_package(root / name_or_path, source)
    alias = aliases().get(name_or_path)
    if alias and (bundled_dir() / alias["model"] / CARD).is_file():
        return load_package(bundled_dir() / alias["model"], "bundled")
    known = ", ".join([m.card.name for m in list_models()] + list(aliases())) or "none"
    raise ModelError(f"{name_or_path}: unknown model; known models: {known}")


INT8_SCALE = ".__int8_scale__"
INT8_MIN_NUMEL = 1024


def quantize_int8(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Symmetric int8 per output channel for the large weight tensors, float16 for the rest.

    A floating tensor with two or more dimensions and at least ``INT8_MIN_NUMEL`` values
    (convolution and linear weights) is stored as int8 ``round(w / s)`` with one float32 scale
    ``s = max|w| / 127`` per output channel, under ``name + INT8_SCALE``; biases and norms keep
    float16. About half the size of float16; :func:`dequantize` reverses it.
    """
    import torch

    out = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if v.is_floating_point() and v.dim() >= 2 and v.numel() >= INT8_MIN_NUMEL:
            w = v.float()
            scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp_min(1e-12) / 127.0
            out[k] = torch.round(w / scale).clamp(-127, 127).to(torch.int8).contiguous()
            out[k + INT8_SCALE] = scale.flatten().contiguous()
        else:
            out[k] = (v.half() if v.is_floating_point() else v).contiguous()
    return out


def dequantize(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 tensors from a stored state dict (float16, float32 or :func:`quantize_int8`)."""
    out = {}
    for k, v in state.items():
        if k.endswith(INT8_SCALE):
            continue
        scale = state.get(k + INT8_SCALE)
        if scale is not None:
            out[k] = v.float() * scale.float().view(-1, *([1] * (v.dim() - 1)))
        else:
            out[k] = v.float() if v.is_floating_point() else v
    return out


def save_package(card: ModelCard, state_dict: dict[str, torch.Tensor], dest: str | Path,
                 half: bool = False, overwrite: bool = False, int8: bool = False,
                 before_rename: Callable[[ModelPackage], None] | None = None) -> ModelPackage:
    """Write a package atomically: a temporary sibling folder renamed to ``dest`` at the end.

    Args:
        half: store floating weights as float16 (halves the size; loading casts back to float32).
        overwrite: replace an existing ``dest`` (the old folder is removed only after the new one
            is complete).
        int8: store the large weights as int8 with per-channel scales (:func:`quantize_int8`;
            a quarter of float32), the rest as float16.
        before_rename: called with the complete package in its hidden temporary folder (``card``
            itself, its weights' record filled in) before it takes ``dest``'s place; the card is
            written again after it, so it may add to the card what it measured of the stored
            weights (a fine-tune's Dice after). If it raises, nothing is left behind.
    """
    from safetensors.torch import save_file

    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise ModelError(f"{dest}: a model package already exists there")
    with atomic_folder(dest) as tmp:
        if int8:
            tensors = quantize_int8(state_dict)
        else:
            tensors = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).contiguous().cpu()
                       for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS))
        dtype = "int8 per channel + float16" if int8 else "float16" if half else "float32"
        parameters = sum(v.numel() for k, v in state_dict.items()
                         if v.is_floating_point() and not k.endswith(INT8_SCALE))
        card.weights = WeightsRecord(WEIGHTS, sha256_file(tmp / WEIGHTS), dtype, int(parameters))
        (tmp / CARD).write_text(card.to_json() + "\n")
        if before_rename is not None:
            before_rename(ModelPackage(card, tmp, "path"))
            (tmp / CARD).write_text(card.to_json() + "\n")
    return load_package(dest, "path")


def storage_of(parent_dtype: str) -> str:
    """``save_package``'s storage ("int8", "half" or "float32") for weights stored like a card's
    ``weights.dtype``."""
    return "int8" if parent_dtype.startswith("int8") else "half" if parent_dtype == "float16" else "float32"


def record_validation(package_dir: str | Path, summary: dict, cases: int, note: str = "") -> None:
    """Store an evaluation summary (``evaluate_folders``' ``summary``) in a package's card.

    The card gains ``validation.per_label`` ({name: {dice, hd95, n}}), ``mean_dice`` and
    ``mean_hd95``; it is rewritten atomically (the weights and their SHA-256 are untouched).
    """
    pkg = load_package(package_dir)
    card = pkg.card
    val = dict(card.validation)
    val["per_label"] = {row["name"]: {"dice": _round(row.get("dice")), "hd95_median_mm": _round(row.get("hd95_median")),
                                      "hd95_found_mm": _round(row.get("hd95_detected")), "cases": row.get("n"),
                                      "missed": row.get("n_missed")} for row in summary["per_label"].values()}
    val["mean_dice"] = _round(summary["mean"].get("dice"))
    val["mean_hd95_median_mm"] = _round(summary["mean"].get("hd95_median"))
    val["cases"] = cases
    val["evaluated_on"] = note or ("input grid (medseg segment, then medseg evaluate); Dice mean over cases "
                                   "with the organ contoured; HD95 = max of the directed 95th percentiles, "
                                   "median over cases (found: mean over cases where it was predicted)")
    card.validation = val
    write_text_atomic(pkg.path / CARD, card.to_json() + "\n")


def _round(x):
    return None if x is None or x != x else (x if x in (float("inf"), float("-inf")) else round(float(x), 4))
