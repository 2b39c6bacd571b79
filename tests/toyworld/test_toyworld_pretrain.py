"""Reduced pretraining: it trains, caches, reloads without retraining, and is deterministic."""

from __future__ import annotations

import json
import math

import pytest
import torch

from polyalign.errors import UserError
from polyalign.toyworld import PretrainConfig, build_world, load_base_model, pretrain_base_model
from polyalign.toyworld import pretrain as pretrain_module
from polyalign.toyworld.pretrain import cache_key, collate, lr_factor

TINY = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, steps=30, batch_size=16,
            lr=3e-3, warmup_steps=5)


@pytest.fixture(scope="module")
def world():
    return build_world(0)


@pytest.fixture
def counted(monkeypatch):
    """Counts calls of the real training function (which still runs)."""
    calls = []
    real = pretrain_module._train_model

    def wrapper(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "_train_model", wrapper)
    return calls


def test_pretrain_caches_and_reloads_without_retraining(world, tmp_path, counted):
    config = PretrainConfig(**TINY)
    folder = pretrain_base_model(world, tmp_path, config)
    assert len(counted) == 1
    assert folder.name == f"base-{cache_key(world, config)}"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "toyworld.json"):
        assert (folder / name).is_file(), name
    assert not list(tmp_path.glob("*.tmp"))
    meta = json.loads((folder / "toyworld.json").read_text())
    assert meta["key"] == cache_key(world, config) and meta["world_key"] == world.key
    assert meta["pretrain_config"]["steps"] == 30
    losses = [loss for _, loss in meta["loss_curve"]]
    assert len(losses) == 10 and losses[-1] < losses[0] - 0.5  # it learns
    model, tokenizer, _ = load_base_model(folder)
    first_weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert pretrain_base_model(world, tmp_path, config) == folder
    assert len(counted) == 1  # reused, not retrained
    again, _, _ = load_base_model(folder)
    assert all(torch.equal(first_weights[k], v) for k, v in again.state_dict().items())
    assert tokenizer(world.refusal("xd"))["input_ids"][0] != tokenizer.unk_token_id
    # another seed is another model
    other = pretrain_base_model(world, tmp_path, PretrainConfig(**{**TINY, "seed": 1}))
    assert other != folder and len(counted) == 2


def test_pretraining_is_deterministic_for_a_seed(world, tmp_path, counted):
    config = PretrainConfig(**{**TINY, "steps": 12})
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, _, _ = load_base_model(pretrain_base_model(world, tmp_path / "a", config))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    b, _, _ = load_base_model(pretrain_base_model(world, tmp_path / "b", config))
    assert len(counted) == 2
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    other_world = build_world(1)
    assert cache_key(other_world, config) != cache_key(world, config)


def test_a_foreign_folder_is_not_reused(world, tmp_path, counted):
    config = PretrainConfig(**TINY)
    folder = tmp_path / f"base-{cache_key(world, config)}"
    folder.mkdir()
    (folder / "toyworld.json").write_text('{"key": "something else"}')
    with pytest.raises(UserError, match="not a complete cached base model"):
        pretrain_base_model(world, tmp_path, config)
    assert counted == []
    with pytest.raises(UserError):
        PretrainConfig(steps=10, warmup_steps=10)


def test_lr_schedule_and_collate():
    config = PretrainConfig(steps=100, warmup_steps=10)
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(10, config) == pytest.approx(1.0)
    assert lr_factor(55, config) == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert lr_factor(100, config) == pytest.approx(0.0)
    batch = collate([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]


def test_length_buckets_reproduce_the_single_batch_loss_and_gradient(world):
    import numpy as np

    from polyalign.models import build_tiny_model
    from polyalign.toyworld import Corpus, build_word_tokenizer
    from polyalign.toyworld.pretrain import _accumulate

    tokenizer = build_word_tokenizer(world.lexicon.surface_vocab())
    sequences = [ids for _, _, ids in Corpus(world, tokenizer).sample(np.random.default_rng(0), 13)]
    assert len({len(s) for s in sequences}) > 3
    model = build_tiny_model("llama", tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    reference = model(**collate(sequences, tokenizer.pad_token_id)).loss  # HF: mean over shifted labels
    reference.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    for buckets in (1, 3, 13):
        model.zero_grad()
        loss = _accumulate(model, sequences, tokenizer.pad_token_id, buckets)
        assert float(loss) == pytest.approx(float(reference.detach()), rel=1e-5)
        for p, g in zip(model.parameters(), ref_grads):
            assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6)
