"""Generation: left-padded batches equal one-at-a-time greedy decoding, seeded sampling."""

from __future__ import annotations

import math

import pytest
import torch

from polyalign.data.records import EvalPrompt
from polyalign.errors import UserError
from polyalign.evaluation.generation import (
    GenerationSettings,
    HFGenerator,
    SeededSampler,
    make_batches,
    make_tasks,
    render_prompt,
    row_seed,
)
from polyalign.models import build_tiny_model, build_tiny_tokenizer

TEXTS = [
    "Hello there, how are you today?",
    "今天我们去图书馆读书。",
    "a",
    "The quick brown fox jumps over the lazy dog, again and again and again.",
    "هذه جملة عربية للاختبار.",
    "Это тестовое предложение.",
]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_tiny_model("llama", tok, seed=3)


def _prompts(texts=TEXTS):
    return [EvalPrompt(id=f"p{i}", language="en", text=t, benchmark="test") for i, t in enumerate(texts)]


def _reference_greedy(model, ids: list[int], n: int, eos: int | None = None) -> list[int]:
    """Independent greedy decoding: one unpadded sequence, full forward each step, no cache."""
    seq = list(ids)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq])).logits[0, -1]
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            seq.append(nxt)
            if nxt == eos:
                break
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2", "gemma3"])
@pytest.mark.parametrize("chat", [True, False])
def test_batched_greedy_equals_one_at_a_time(tok, arch, chat):
    model = build_tiny_model(arch, tok, seed=1)
    settings = GenerationSettings(max_new_tokens=10, chat_template=chat)
    gen = HFGenerator(model, tok, settings, batch_size=6)
    tasks = make_tasks(tok, _prompts(), settings)
    lengths = {len(t.input_ids) for t in tasks}
    assert len(lengths) >= 4  # real padding in the batch
    batched = gen.generate_batch(tasks)
    stops = 0
    for task, record in zip(tasks, batched):
        single = gen.generate_batch([task])[0]
        assert record["text"] == single["text"]
        ref = _reference_greedy(model, list(task.input_ids), 10, eos=tok.eos_token_id)
        assert record["n_tokens"] == len(ref)
        assert record["finish_reason"] == ("stop" if ref[-1] == tok.eos_token_id else "length")
        assert record["text"] == tok.decode(ref, skip_special_tokens=True)
        stops += record["finish_reason"] == "stop"
    assert stops < len(tasks)  # most rows run to max_new_tokens: the comparison is not vacuous


def test_prompt_is_stripped_and_eos_stops(tok):
    model = build_tiny_model("llama", tok, seed=5)
    settings = GenerationSettings(max_new_tokens=12)
    task = make_tasks(tok, _prompts(TEXTS[:1]), settings)[0]
    assert task.rendered.startswith("<|user|>\n") and task.rendered.endswith("<|assistant|>\n")
    ref = _reference_greedy(model, list(task.input_ids), 12)
    # Declare the third generated token an end-of-sequence token: generation must stop there.
    stop_token = ref[2]
    first = ref.index(stop_token)
    model.generation_config.eos_token_id = [tok.eos_token_id, stop_token]
    record = HFGenerator(model, tok, settings).generate_batch([task])[0]
    assert record["finish_reason"] == "stop"
    assert record["n_tokens"] == first + 1
    assert record["text"] == tok.decode(ref[: first + 1], skip_special_tokens=True)
    assert "<|assistant|>" not in record["text"] and TEXTS[0] not in record["text"]


def test_special_tokens_are_stripped(tok, model):
    # The eos token itself is special: it must not appear in the decoded text.
    settings = GenerationSettings(max_new_tokens=4)
    task = make_tasks(tok, _prompts(TEXTS[:1]), settings)[0]
    ref = _reference_greedy(model, list(task.input_ids), 4)
    assert tok.decode(ref + [tok.eos_token_id], skip_special_tokens=True) == tok.decode(ref, skip_special_tokens=True)


def test_raw_mode_and_missing_chat_template(tok):
    rendered, ids = render_prompt(tok, "Once upon a time", GenerationSettings(chat_template=False))
    assert rendered == "Once upon a time" and ids == tok("Once upon a time")["input_ids"]
    bare = build_tiny_tokenizer()
    bare.chat_template = None
    with pytest.raises(UserError, match="no chat template"):
        render_prompt(bare, "hi", GenerationSettings())


def test_settings_validation():
    with pytest.raises(UserError, match="need sampling"):
        GenerationSettings(num_samples=3).validate()
    with pytest.raises(UserError, match="top_p"):
        GenerationSettings(temperature=1.0, top_p=0.0).validate()
    with pytest.raises(UserError):
        make_batches([], 0)


def test_batches_sorted_by_length(tok):
    settings = GenerationSettings(max_new_tokens=2, temperature=1.0, num_samples=2)
    tasks = make_tasks(tok, _prompts(), settings)
    batches = make_batches(tasks, 4)
    flat = [t for b in batches for t in b]
    assert sorted(t.key for t in flat) == sorted(t.key for t in tasks)
    assert [len(t.input_ids) for t in flat] == sorted((len(t.input_ids) for t in flat), reverse=True)


def test_sampling_is_deterministic_and_batch_independent(tok, model):
    settings = GenerationSettings(max_new_tokens=8, num_samples=3, temperature=0.9, top_p=0.8, chat_template=False,
                                  seed=7)
    gen = HFGenerator(model, tok, settings)
    tasks = make_tasks(tok, _prompts(), settings)

    def run(batch_size, order):
        return {(r["id"], r["sample"]): r["text"]
                for b in make_batches(order, batch_size) for r in gen.generate_batch(b)}

    a = run(4, tasks)
    b = run(7, tasks[::-1])
    c = {t.key: gen.generate_batch([t])[0]["text"] for t in tasks[:5]}
    assert a == b
    assert all(a[k] == v for k, v in c.items())
    assert len(set(a.values())) > len(TEXTS)  # samples of one prompt differ
    other = HFGenerator(model, tok, GenerationSettings(**{**settings.to_dict(), "seed": 8}))
    d = {(r["id"], r["sample"]): r["text"] for r in other.generate_batch(tasks)}
    assert sum(d[k] != a[k] for k in a) >= len(a) // 2


def _nucleus_reference(logits: list[float], temperature: float, top_p: float, u: float) -> int:
    """Brute force: sort by probability, keep tokens whose preceding mass < top_p, inverse CDF."""
    z = [x / temperature for x in logits]
    m = max(z)
    exps = [math.exp(x - m) for x in z]
    total = sum(exps)
    probs = [e / total for e in exps]
    order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
    kept, mass = [], 0.0
    for i in order:
        if mass < top_p:
            kept.append(i)
        mass += probs[i]
    norm = sum(probs[i] for i in kept)
    acc = 0.0
    for i in kept:
        acc += probs[i] / norm
        if u < acc:
            return i
    return kept[-1]


def test_seeded_sampler_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 12, generator=gen, dtype=torch.float64).float()
    uniforms = torch.rand(5, 3, generator=gen, dtype=torch.float64)
    for temperature, top_p in [(0.9, 0.8), (1.0, 1.0), (0.5, 0.3), (2.0, 0.95)]:
        sampler = SeededSampler(uniforms, start_len=4, temperature=temperature, top_p=top_p)
        for step in range(3):
            out = sampler(torch.zeros(5, 4 + step, dtype=torch.long), logits)
            picks = out.argmax(-1).tolist()
            assert torch.isinf(out).sum().item() == 5 * 11
            for row in range(5):
                assert picks[row] == _nucleus_reference(logits[row].double().tolist(), temperature, top_p,
                                                        float(uniforms[row, step]))


def test_seeded_sampler_frequencies():
    # Many rows, same logits: empirical frequencies approach the nucleus distribution.
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).repeat(20000, 1)
    uniforms = torch.rand(20000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    picks = SeededSampler(uniforms, 0, 1.0, 0.8)(torch.zeros(20000, 0, dtype=torch.long), logits).argmax(-1)
    e = [math.exp(x) for x in (2.0, 1.0, 0.5, 0.0, -1.0)]
    p = [x / sum(e) for x in e]
    # Preceding masses 0, .563, .770, .896: tokens 0, 1, 2 are kept (0.770 < 0.8 <= 0.896).
    assert p[0] + p[1] < 0.8 <= p[0] + p[1] + p[2]
    expected = torch.tensor([p[0], p[1], p[2], 0, 0], dtype=torch.float64) / (p[0] + p[1] + p[2])
    freq = torch.bincount(picks, minlength=5).double() / 20000
    assert torch.allclose(freq, expected.double(), atol=0.015)


def test_row_seed_formula():
    import hashlib

    expected = int(hashlib.sha256(b"3:item-1:2").hexdigest()[:16], 16) % 2**63
    assert row_seed(3, "item-1", 2) == expected


def test_vllm_backend_absent_is_a_user_error():
    import importlib.util

    from polyalign.evaluation.generation_vllm import VLLMGenerator

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(UserError, match="pip install vllm"):
        VLLMGenerator("some/model", GenerationSettings())
