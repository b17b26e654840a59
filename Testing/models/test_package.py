"""Model packages: safetensors weights, SHA-256 check, discovery."""

import json

import pytest
import torch

from medseg_core.errors import ModelError
from medseg_core.labels import Label
from medseg_core.data.preprocess_config import PreprocessConfig
from medseg_core.models import ModelCard, find_model, list_models, save_package, user_models_dir
from medseg_core.models.card import InferenceSpec, NetworkSpec
from medseg_core.nets import build_network


def _card(name="tiny"):
    return ModelCard(name=name, version="1.0.0", description="test", modality="CT", channels=["CT"],
                     labels=[Label(1, "Liver", (0.8, 0.4, 0.3))], preprocessing=PreprocessConfig(),
                     network=NetworkSpec("unet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                                  "features": [4, 8]}),
                     inference=InferenceSpec([8, 8, 8]))


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
    assert pkg.card.weights.dtype == "float16"
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


def test_every_bundled_model_loads_within_the_size_limits():
    from medseg_core.models import aliases, bundled_dir

    bundled = [m for m in list_models() if m.source == "bundled"]
    names = {m.card.name for m in bundled}
    assert {"phantom-unet", "hn-oar-unet", "hn-oar-pgd", "hn-oar-lfam", "hn-oar-focusnet", "hn-oar-lsnet",
            "hn-oar-dan", "hn-ptv"} <= names
    total = 0
    for m in bundled:
        size = (m.path / "weights.safetensors").stat().st_size
        assert size < 10e6, (m.card.name, size)
        total += size
        m.build()  # the SHA-256 verifies and the weights fit the network the card names
        assert m.path.name == m.card.name
    assert total < 50e6
    for alias, entry in aliases().items():  # every alias names a bundled model, and resolves to it
        assert (bundled_dir() / entry["model"] / "card.json").is_file()
        assert find_model(alias).card.name == entry["model"] and alias not in names


def test_the_default_alias_names_the_best_validated_head_and_neck_model():
    from medseg_core.models import aliases

    hn = [m for m in list_models() if m.source == "bundled" and m.card.name.startswith("hn-oar-")]
    best = max(hn, key=lambda m: m.card.validation.get("mean_dice") or 0)
    assert aliases()["hn-oar"]["model"] == best.card.name


def test_int8_storage_round_trip_is_close_and_smaller(tmp_path):
    from medseg_core.models.package import INT8_SCALE, dequantize, quantize_int8

    torch.manual_seed(0)
    net = build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, features=[16, 32])
    state = net.state_dict()
    q = quantize_int8(state)
    big = [k for k, v in state.items() if v.is_floating_point() and v.dim() >= 2 and v.numel() >= 1024]
    assert big and all(q[k].dtype == torch.int8 and (k + INT8_SCALE) in q for k in big)
    back = dequantize(q)
    assert set(back) == set(state)
    for k in big:  # per output channel, the error is at most half a step (max|w| / 254)
        w = state[k].float()
        step = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) / 127
        assert ((back[k] - w).abs() <= step / 2 + 1e-7).all()
    pkg8 = save_package(_card("q8"), state, tmp_path / "q8", int8=True)
    pkg16 = save_package(_card("q16"), state, tmp_path / "q16", half=True)
    size = lambda p: (p.path / "weights.safetensors").stat().st_size  # noqa: E731
    assert size(pkg8) < 0.6 * size(pkg16)
    assert pkg8.card.weights.parameters == pkg16.card.weights.parameters
    x = torch.randn(1, 1, 16, 16, 16)
    net8 = build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, features=[16, 32])
    net8.load_state_dict(pkg8.load_state_dict())
    net.eval(), net8.eval()
    with torch.no_grad():
        a, b = net(x).logits, net8(x).logits
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.99
