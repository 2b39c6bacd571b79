"""Grouped prefill + static cache: same cache and outputs as unpadded one-prompt decoding."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from test_generation import TEXTS as GENERATION_TEXTS  # noqa: E402
from test_generation import _prompts as prompts_of  # noqa: E402
from test_generation import _reference_greedy  # noqa: E402

from polyalign import models
from polyalign.data.records import EvalPrompt
from polyalign.evaluation.generation import (
    DEFAULT_BATCH_SIZE,
    GenerationSettings,
    GenerationTask,
    HFGenerator,
    make_batches,
    make_tasks,
    prefill_groups,
)
from polyalign.models import build_tiny_model, build_tiny_tokenizer

# the generation tests' prompts (several scripts, a 1-token one) plus two short ones
TEXTS = GENERATION_TEXTS + ["ok", "Two words"]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_tiny_model("llama", tok, seed=4)


def _prompts(texts=TEXTS):
    return prompts_of(texts)


def _partitions(items: list[int]):
    """Every set partition of ``items`` (brute force, small inputs)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[first], *part]
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1 :]]


def _cost(groups, lengths, overhead):
    return sum(overhead + len(g) * max(lengths[i] for i in g) for g in groups)


def test_prefill_groups_hand_example():
    # [10, 9] together (3 + 2*10) and [2, 1] together (3 + 2*2) = 30; one group 43, singletons 34.
    assert prefill_groups([10, 9, 2, 1], overhead=3) == [[0, 1], [2, 3]]
    assert prefill_groups([10, 9, 2, 1], overhead=0) in ([[0], [1], [2], [3]], [[0], [1], [2, 3]])
    assert prefill_groups([10, 9, 2, 1], overhead=100) == [[0, 1, 2, 3]]
    assert prefill_groups([0, 5, 0], overhead=3) == [[1]]  # zero-length rows need no prefill
    assert prefill_groups([0, 0], overhead=3) == []


def test_prefill_groups_optimal_against_all_partitions():
    rng = random.Random(0)
    for _ in range(60):
        lengths = [rng.choice([0, 1, 2, 5, 9, 20, 21, 40]) for _ in range(rng.randint(1, 7))]
        overhead = rng.choice([0, 1, 4, 16, 100])
        groups = prefill_groups(lengths, overhead)
        real = [i for i, n in enumerate(lengths) if n > 0]
        assert sorted(i for g in groups for i in g) == real  # each row with tokens exactly once
        best = min(_cost(p, lengths, overhead) for p in _partitions(real)) if real else 0
        assert _cost(groups, lengths, overhead) == best


def _left_padded(tasks, pad):
    width = max(len(t.input_ids) for t in tasks)
    ids = torch.full((len(tasks), width), pad, dtype=torch.long)
    mask = torch.zeros((len(tasks), width), dtype=torch.long)
    for row, task in enumerate(tasks):
        ids[row, width - len(task.input_ids) :] = torch.tensor(task.input_ids)
        mask[row, width - len(task.input_ids) :] = 1
    return ids, mask, width


@pytest.mark.parametrize("overhead", [0, 6, 10**6])
def test_prefilled_cache_equals_unpadded_forward(tok, model, overhead):
    settings = GenerationSettings(max_new_tokens=5)
    gen = HFGenerator(model, tok, settings)
    gen.prefill_overhead = overhead
    assert gen.grouped_prefill
    tasks = make_tasks(tok, _prompts(), settings)
    lengths = [len(t.input_ids) for t in tasks]
    groups = prefill_groups([n - 1 for n in lengths], overhead)
    if overhead == 6:  # the mixed case really mixes: several groups, one with padding inside
        assert len(groups) >= 2 and any(len({lengths[r] for r in g}) > 1 for g in groups)
    ids, mask, width = _left_padded(tasks, tok.pad_token_id)
    cache = gen._prefill(ids, mask, lengths)
    n_layers = model.config.num_hidden_layers
    assert len(cache.layers) == n_layers
    with torch.no_grad():
        for row, task in enumerate(tasks):
            single = model(torch.tensor([task.input_ids[:-1]]), use_cache=True).past_key_values
            start = width - len(task.input_ids)
            for layer in range(n_layers):
                for got, ref in ((cache.layers[layer].keys, single.layers[layer].keys),
                                 (cache.layers[layer].values, single.layers[layer].values)):
                    assert torch.allclose(got[row, :, start : width - 1], ref[0], atol=1e-5)
                    assert not got[row, :, :start].any()  # padding slots stay empty
                    assert not got[row, :, width - 1 :].any()  # room for the last prompt token and new ones
            assert cache.layers[0].max_cache_len == width + settings.max_new_tokens


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("sample", [False, True])
def test_grouped_prefill_outputs_equal_plain_generate(tok, arch, sample):
    model = build_tiny_model(arch, tok, seed=2)
    settings = GenerationSettings(max_new_tokens=8, chat_template=False,
                                  **({"temperature": 0.8, "top_p": 0.9} if sample else {}))
    tasks = make_tasks(tok, _prompts(), settings)
    random.Random(1).shuffle(tasks)  # unsorted on purpose: records come back in the given order
    plain = HFGenerator(model, tok, settings)
    plain.grouped_prefill = False
    expected = plain.generate_batch(tasks)
    assert [r["id"] for r in expected] == [t.prompt.id for t in tasks]
    for overhead in (0, 6, 10**6):
        grouped = HFGenerator(model, tok, settings)
        grouped.prefill_overhead = overhead
        assert grouped.grouped_prefill
        assert grouped.generate_batch(tasks) == expected
    assert len({r["text"] for r in expected}) > 1


def test_single_token_prompts(tok, model):
    settings = GenerationSettings(max_new_tokens=6, chat_template=False)
    gen = HFGenerator(model, tok, settings)
    long = make_tasks(tok, _prompts(TEXTS[:2]), settings)
    short = [GenerationTask(EvalPrompt(id=f"s{i}", language="en", text="x", benchmark="test"), 0, "x", (tok_id,))
             for i, tok_id in enumerate((300, 412))]
    ids, mask, _ = _left_padded(short, tok.pad_token_id)
    assert gen._prefill(ids, mask, [1, 1]) is None  # nothing to prefill: generate does it all
    plain = HFGenerator(model, tok, settings)
    plain.grouped_prefill = False
    for batch in (short, short + long):
        records = gen.generate_batch(batch)
        assert records == plain.generate_batch(batch)
        assert records == [plain.generate_batch([t])[0] for t in batch]


def test_greedy_outputs_do_not_depend_on_batch_size(tok, model):
    settings = GenerationSettings(max_new_tokens=8)
    gen = HFGenerator(model, tok, settings)
    assert gen.batch_size == DEFAULT_BATCH_SIZE
    tasks = make_tasks(tok, _prompts(), settings)
    sizes = (1, 3, 5, DEFAULT_BATCH_SIZE)
    runs = [{r["id"]: r for b in make_batches(tasks, size) for r in gen.generate_batch(b)} for size in sizes]
    for a, b in itertools.pairwise(runs):
        assert a == b


def _windowed_gemma3(tok, monkeypatch, window: int, seed: int = 2):
    """Tiny Gemma-3 (sliding and global layers alternating) with the given sliding window."""
    monkeypatch.setattr(models, "GEMMA3_SLIDING_WINDOW", window)
    model = build_tiny_model("gemma3", tok, seed=seed)
    assert model.config.sliding_window == window and "sliding_attention" in model.config.layer_types
    return model


@pytest.mark.parametrize("sample", [False, True])
def test_sliding_window_batch_that_fits_takes_the_grouped_path(tok, monkeypatch, sample):
    """Gemma-3's hybrid cache: a batch whose prompt width + new tokens fits the window is prefilled
    group by group into a static cache; its outputs equal plain ``generate`` with the model's own cache
    and, greedy, unpadded one-prompt-at-a-time decoding without any cache."""
    model = _windowed_gemma3(tok, monkeypatch, window=64)
    settings = GenerationSettings(max_new_tokens=8, chat_template=False,
                                  **({"temperature": 0.8, "top_p": 0.9} if sample else {}))
    tasks = make_tasks(tok, _prompts(), settings)
    width = max(len(t.input_ids) for t in tasks)
    assert width + settings.max_new_tokens <= 64 and len({len(t.input_ids) for t in tasks}) >= 4
    plain = HFGenerator(model, tok, settings)
    plain.grouped_prefill = False
    expected = plain.generate_batch(tasks)
    grouped = HFGenerator(model, tok, settings)
    assert grouped.grouped_prefill and grouped.sliding_window == 64
    calls = []
    original = grouped._prefill
    grouped._prefill = lambda *a: calls.append(1) or original(*a)
    for overhead in (0, 6, 10**6):
        grouped.prefill_overhead = overhead
        assert grouped.generate_batch(tasks) == expected
    assert len(calls) == 3
    if not sample:
        for task, record in zip(tasks, expected):
            ref = _reference_greedy(model, list(task.input_ids), 8, eos=tok.eos_token_id)
            assert record["text"] == tok.decode(ref, skip_special_tokens=True) and record["n_tokens"] == len(ref)
    assert len({r["text"] for r in expected}) > 1


def test_sliding_window_prefilled_cache_equals_unpadded_forward(tok, monkeypatch):
    model = _windowed_gemma3(tok, monkeypatch, window=64, seed=3)
    settings = GenerationSettings(max_new_tokens=5)
    gen = HFGenerator(model, tok, settings)
    gen.prefill_overhead = 6
    tasks = make_tasks(tok, _prompts(), settings)
    lengths = [len(t.input_ids) for t in tasks]
    ids, mask, width = _left_padded(tasks, tok.pad_token_id)
    cache = gen._prefill(ids, mask, lengths)
    assert [type(layer).__name__ for layer in cache.layers[:2]] == ["StaticSlidingWindowLayer", "StaticLayer"]
    with torch.no_grad():
        for row, task in enumerate(tasks):
            single = model(torch.tensor([task.input_ids[:-1]]), use_cache=True).past_key_values
            start = width - len(task.input_ids)
            for layer in range(model.config.num_hidden_layers):
                got, ref = cache.layers[layer].keys, single.layers[layer].keys
                assert torch.allclose(got[row, :, start : width - 1], ref[0], atol=1e-5)
                assert not got[row, :, :start].any()


def test_sliding_window_batch_longer_than_the_window_takes_the_plain_path(tok):
    model = build_tiny_model("gemma3", tok, seed=1)  # window models.GEMMA3_SLIDING_WINDOW = 8
    settings = GenerationSettings(max_new_tokens=6, chat_template=False)
    gen = HFGenerator(model, tok, settings)
    assert gen.grouped_prefill and gen.sliding_window == models.GEMMA3_SLIDING_WINDOW
    gen._prefill = lambda *a: pytest.fail("a batch wider than the sliding window must not be prefilled in groups")
    tasks = make_tasks(tok, _prompts(TEXTS[:4]), settings)
    assert max(len(t.input_ids) for t in tasks) + 6 > models.GEMMA3_SLIDING_WINDOW
    records = gen.generate_batch(tasks)
    for task, record in zip(tasks, records):
        ref = _reference_greedy(model, list(task.input_ids), 6, eos=tok.eos_token_id)
        assert record["text"] == tok.decode(ref, skip_special_tokens=True)
