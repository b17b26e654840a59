"""The model card: typed sections, the bundled cards in format 2 with their weights' SHA-256,
format 1 still read, and malformed cards refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg_core.data.preprocess_config import PreprocessConfig
from medseg_core.errors import ModelError
from medseg_core.models import bundled_dir, find_model
from medseg_core.models.card import CARD_FORMAT, InferenceSpec, ModelCard, NetworkSpec, WeightsRecord
from medseg_core.models.package import sha256_file

FORMAT1 = Path(__file__).resolve().parents[1] / "fixtures" / "phantom-unet-card-format1.json"


@pytest.mark.parametrize("card_path", sorted(bundled_dir().glob("*/card.json")), ids=lambda p: p.parent.name)
def test_bundled_cards_are_typed_and_hold_their_weights_hash(card_path):
    raw = json.loads(card_path.read_text())
    assert raw["format"] == CARD_FORMAT == 2 and "patch_size" not in raw
    card = ModelCard.read(card_path)
    assert isinstance(card.preprocessing, PreprocessConfig) and isinstance(card.network, NetworkSpec)
    assert isinstance(card.inference, InferenceSpec) and isinstance(card.weights, WeightsRecord)
    assert card.weights.sha256 == sha256_file(card_path.parent / card.weights.file)
    assert card.preprocessing.spacing is not None and len(card.preprocessing.spacing) == 3
    # the flips the model was trained with are now the card's inference contract
    config = card.training["config"]
    assert card.inference.mirror_axes == (config.get("mirror_axes") or [])
    assert card.inference.mirror_swap == (config.get("mirror_swap") or [])
    assert ModelCard.from_dict(json.loads(card.to_json())) == card


def test_a_format_1_card_reads_as_the_format_2_card_it_became():
    old = ModelCard.read(FORMAT1)
    new = find_model("phantom-unet").card
    assert json.loads(FORMAT1.read_text()).get("format") == 1
    assert old == new
    assert old.patch_size == json.loads(FORMAT1.read_text())["patch_size"]


def test_a_format_1_card_takes_its_flips_from_the_training_record():
    d = json.loads(FORMAT1.read_text())
    d["training"] = {"config": {"mirror_axes": [2], "mirror_swap": [[4, 5]]}}
    card = ModelCard.from_dict(d)
    assert card.inference == InferenceSpec([32, 48, 48], [2], [[4, 5]])
    assert card.to_dict()["inference"] == {"patch_size": [32, 48, 48], "mirror_axes": [2], "mirror_swap": [[4, 5]]}


@pytest.mark.parametrize("change, message", [
    (lambda d: d["inference"].update(patch_size=["a", 8, 8]), "patch_size must be 2 or 3 positive whole numbers"),
    (lambda d: d["inference"].update(patch_size=[8, 0, 8]), "patch_size must be 2 or 3 positive whole numbers"),
    (lambda d: d["inference"].update(mirror_axes=[3]), "mirror_axes [3] must be volume axes 0, 1 or 2"),
    (lambda d: d.update(labels=[]), "it names no labels"),
    (lambda d: d.update(format=7), "format 7 is not known"),
    (lambda d: d["preprocessing"].update(spacing=[1.0, 0.0, 1.0]), "spacing must be 3 positive numbers"),
    (lambda d: d.pop("network"), "missing 'network'"),
    (lambda d: d.update(network={"name": "unet", "kwargs": [1]}), "network must be"),
    (lambda d: d["inference"].update(largest_component=[1, "Liver"]), "largest_component must be a list of label"),
])
def test_malformed_cards_are_one_line_model_errors(tmp_path, change, message):
    d = json.loads((bundled_dir() / "phantom-unet" / "card.json").read_text())
    change(d)
    path = tmp_path / "card.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ModelError) as err:
        ModelCard.read(path)
    text = str(err.value)
    assert text.startswith(f"{path}: invalid model card") and message in text and "\n" not in text


def test_the_largest_component_rule_round_trips_and_is_absent_when_empty():
    spec = InferenceSpec([32, 48, 48], [2], [[4, 5]], [1, 3])
    assert InferenceSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["largest_component"] == [1, 3]
    assert "largest_component" not in InferenceSpec([32, 48, 48]).to_dict()  # older cards keep their form
    assert InferenceSpec.from_dict({"patch_size": [8, 8, 8]}).largest_component == []
