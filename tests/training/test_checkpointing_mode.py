"""The activation-checkpointing mode ``train`` picks when a recipe turns checkpointing on without one."""

from __future__ import annotations

import pytest

from polyalign.models import build_tiny_model
from polyalign.training.config import PolyalignConfig
from polyalign.training.run import default_checkpointing_mode


def _config(tmp_path, **kw) -> PolyalignConfig:
    return PolyalignConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], bf16=False, **kw)


def test_reentrant_when_checkpointing_is_on_without_a_mode(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config = _config(tmp_path, gradient_checkpointing=True)
    default_checkpointing_mode(config)
    assert config.activation_checkpointing_kwargs == {"use_reentrant": True}
    assert config.gradient_checkpointing_kwargs == {"use_reentrant": True}
    # what the Trainer then does with it: every decoder layer checkpointed, reentrant
    model = build_tiny_model("llama")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=config.activation_checkpointing_kwargs)
    layers = model.model.layers
    assert all(layer.gradient_checkpointing for layer in layers)
    assert {layer._gradient_checkpointing_func.keywords["use_reentrant"] for layer in layers} == {True}


@pytest.mark.parametrize("kwargs", [{"use_reentrant": False}, {"use_reentrant": True, "every_n_layers": 2}])
def test_an_explicit_mode_is_kept(tmp_path, monkeypatch, kwargs):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config = _config(tmp_path, activation_checkpointing=True, activation_checkpointing_kwargs=dict(kwargs))
    default_checkpointing_mode(config)
    assert config.activation_checkpointing_kwargs == kwargs


def test_untouched_when_off_or_distributed(tmp_path, monkeypatch):
    config = _config(tmp_path)
    default_checkpointing_mode(config)
    assert not config.activation_checkpointing and not config.activation_checkpointing_kwargs
    config = _config(tmp_path, gradient_checkpointing=True)
    monkeypatch.setenv("WORLD_SIZE", "2")  # after the config: TrainingArguments would start a process group
    default_checkpointing_mode(config)
    assert not config.activation_checkpointing_kwargs
