"""MLCExtractor: the linear head's formula, dtype handling, and its save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from polyalign.errors import UserError
from polyalign.models import load_model_and_tokenizer, save_tiny_checkpoint
from polyalign.training.extractor import MLCExtractor


def _extractor(seed: int = 0, **kw) -> MLCExtractor:
    torch.manual_seed(seed)
    return MLCExtractor(48, **kw)


def test_forward_is_w_h_plus_b_in_float32():
    head = _extractor(dim=24)
    h = torch.randn(3, 5, 48, dtype=torch.float64)
    expected = h @ head.linear.weight.double().T + head.linear.bias.double()  # float64 reference
    out = head(h.to(torch.bfloat16))
    assert out.dtype == torch.float32 and out.shape == (3, 5, 24)
    # bf16 input is upcast, not the weights rounded down: error is the input rounding only
    ref_from_bf16 = h.to(torch.bfloat16).double() @ head.linear.weight.double().T + head.linear.bias.double()
    assert torch.allclose(out.double(), ref_from_bf16, atol=1e-5)
    assert torch.allclose(head(h.float()).double(), expected, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = head(h.float())
    assert under_autocast.dtype == torch.float32
    assert torch.allclose(under_autocast.double(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="last dim 48"):
        head(torch.randn(2, 47))


def test_defaults_match_the_released_code():
    head = MLCExtractor(64)
    assert (head.dim, head.layer, head.linear.bias is not None) == (512, -1, True)
    assert head.linear.weight.shape == (512, 64)


@pytest.mark.parametrize("kw", [{"dim": 0}, {"dim": 2.5}, {"layer": "last"}])
def test_bad_settings_are_user_errors(kw):
    with pytest.raises(UserError):
        MLCExtractor(64, **kw)


@pytest.mark.parametrize("bias", [True, False])
def test_round_trip(tmp_path, bias):
    head = _extractor(dim=16, layer=2, bias=bias)
    folder = head.save(tmp_path)
    assert folder == tmp_path / "mlc_extractor"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config == {"format": "polyalign.mlc_extractor", "version": 1, "hidden_size": 48, "dim": 16,
                      "layer": 2, "bias": bias}
    for where in (tmp_path, folder):  # the model folder, or the head's own folder
        loaded = MLCExtractor.load(where)
        assert loaded.config_dict() == head.config_dict()
        assert set(loaded.state_dict()) == set(head.state_dict())
        for name, value in head.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value)
    assert set(load_file(folder / "model.safetensors")) == ({"weight", "bias"} if bias else {"weight"})


def test_saved_beside_a_model_never_inside_it(tmp_path):
    save_tiny_checkpoint(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    _extractor().save(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    model, _ = load_model_and_tokenizer(tmp_path)
    assert not any("extractor" in key or "linear" in key for key in model.state_dict())
    assert MLCExtractor.load(tmp_path).hidden_size == 48


def test_missing_and_corrupt_extractors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no MLC extractor"):
        MLCExtractor.load(tmp_path)
    folder = _extractor().save(tmp_path)
    weights, config = folder / "model.safetensors", folder / "config.json"
    good_weights, good_config = weights.read_bytes(), config.read_text()

    weights.write_bytes(b"\x00garbage, not safetensors")
    with pytest.raises(UserError, match="corrupt MLC extractor weights"):
        MLCExtractor.load(tmp_path)
    weights.write_bytes(good_weights[: len(good_weights) // 2])  # truncated file
    with pytest.raises(UserError, match="corrupt"):
        MLCExtractor.load(tmp_path)
    weights.unlink()
    with pytest.raises(UserError, match="missing MLC extractor weights"):
        MLCExtractor.load(tmp_path)
    weights.write_bytes(good_weights)

    config.write_text("{not json")
    with pytest.raises(UserError, match="invalid MLC extractor config"):
        MLCExtractor.load(tmp_path)
    config.write_text(good_config.replace('"hidden_size": 48', '"hidden_size": 40'))
    with pytest.raises(UserError, match="do not match its config"):
        MLCExtractor.load(tmp_path)
    config.write_text(good_config.replace("polyalign.mlc_extractor", "something.else"))
    with pytest.raises(UserError, match="not an MLC extractor config"):
        MLCExtractor.load(tmp_path)
    config.unlink()
    with pytest.raises(UserError, match="missing MLC extractor config"):
        MLCExtractor.load(tmp_path)
