"""Model packages: safetensors weights, SHA-256 check, discovery."""

import json

import pytest
import torch

from medseg_core.errors import ModelError
from medseg_core.labels import Label
from medseg_core.models import ModelCard, find_model, list_models, save_package, user_models_dir
from medseg_core.nets import build_network


def _card(name="tiny"):
    return ModelCard(name=name, version="1.0.0", description="test", modality="CT", channels=["CT"],
                     labels=[Label(1, "Liver", (0.8, 0.4, 0.3))], preprocessing={"spacing": None},
                     patch_size=[8, 8, 8],
                     network={"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                                         "features": [4, 8]}})


def _net():
    return build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, features=[4, 8])


def test_save_load_round_trip(tmp_path):
    net = _net()
    pkg = save_package(_card(), net.state_dict(), tmp_path / "tiny")
    assert (tmp_path / "tiny" / "weights.safetensors").read_bytes()[:8] != b"PK\x03\x04"  # not a zip pickle
    card = json.loads((tmp_path / "tiny" / "card.json").read_text())
    assert len(card["weights"]["sha256"]) == 64
    rebuilt = pkg.build()
    x = torch.randn(1, 1, 8, 8, 8)
    net.eval()
    assert torch.allclose(rebuilt(x).logits, net(x).logits, atol=1e-6)


def test_half_precision_storage(tmp_path):
    pkg = save_package(_card(), _net().state_dict(), tmp_path / "half", half=True)
    assert pkg.card.weights["dtype"] == "float16"
    assert all(v.dtype == torch.float32 for v in pkg.load_state_dict().values() if v.is_floating_point())


def test_tampered_weights_are_refused(tmp_path):
    save_package(_card(), _net().state_dict(), tmp_path / "tiny")
    w = tmp_path / "tiny" / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        find_model(str(tmp_path / "tiny")).build()


def test_existing_package_is_not_replaced_without_overwrite(tmp_path):
    save_package(_card(), _net().state_dict(), tmp_path / "tiny")
    before = (tmp_path / "tiny" / "weights.safetensors").read_bytes()
    with pytest.raises(ModelError, match="already exists"):
        save_package(_card(), _net().state_dict(), tmp_path / "tiny")
    assert (tmp_path / "tiny" / "weights.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no temporary folder left


def test_user_models_are_found_by_name_and_shadow_bundled():
    save_package(_card("hn-oar-unet"), _net().state_dict(), user_models_dir() / "hn-oar-unet")
    found = find_model("hn-oar-unet")
    assert found.source == "user"
    assert [m.source for m in list_models() if m.card.name == "hn-oar-unet"] == ["user"]


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ModelError, match="known models: .*phantom-unet"):
        find_model("no-such-model")
