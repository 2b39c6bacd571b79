"""The MPO objective on one batch: reference pooling (both modes) and the terms at initialisation."""

from __future__ import annotations

import pytest
import torch

import polyalign.training.reference_cache as rc
from polyalign.data.collate import collate_mpo
from polyalign.data.records import Message, ParallelPair, PreferencePair
from polyalign.data.tokenize import TokenizeSettings, TokenizeStats, tokenize_parallel_pair
from polyalign.models import build_tiny_model, build_tiny_tokenizer
from polyalign.training.config import load_config
from polyalign.training.datasets import ExampleDataset
from polyalign.training.objective import compute_objective, term_weights
from training_helpers import TINY_RECIPE, brute_logps


def _pp(i: int, dom_chosen: str, tgt_chosen: str) -> ParallelPair:
    def pair(pid, lang, user, chosen, rejected):
        return PreferencePair(pid, (Message("user", user),), chosen, rejected, lang)

    return ParallelPair(f"m{i}", pair(f"m{i}-en", "en", "How do I stay safe?", dom_chosen, "Do something risky now."),
                        pair(f"m{i}-zh", "zh", "我怎样保持安全?", tgt_chosen, "做点危险的事情吧。"))


@pytest.fixture(scope="module")
def setup():
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", tok)
    examples = [tokenize_parallel_pair(p, tok, TokenizeSettings(), TokenizeStats())
                for p in (_pp(0, "No.", "不行。"), _pp(1, "I cannot help with that request at all, sorry.", "不。"))]
    return tok, model, examples


def _released_pool(model, dominant: dict, multiple: int = 8) -> torch.Tensor:
    """Released MPO code at per-device batch 1: LLaMA-Factory pads the pair to its longer row rounded
    up to a multiple of 8 (``pad_to_multiple_of=8``), then ``hidden_states[-1].mean(dim=1)``."""
    rows = [dominant["prompt_input_ids"] + dominant[f"{s}_input_ids"] for s in ("chosen", "rejected")]
    width = -(-max(map(len, rows)) // multiple) * multiple
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    return hidden.double().mean(dim=1)  # [2, H]: chosen, rejected


@pytest.mark.parametrize("batch_size", [1, 2])
def test_unmasked_pooling_reproduces_the_released_code_whatever_the_batching(setup, batch_size):
    tok, model, examples = setup
    dataset = ExampleDataset([dict(e) for e in examples])
    values = rc.compute_reference_values(model, dataset, "mpo", pad_token_id=tok.pad_token_id,
                                         batch_size=batch_size, pooling="unmasked_mean")
    for i, e in enumerate(examples):
        expected = _released_pool(model, e["dominant"])
        assert torch.allclose(values["ref_chosen_pooled"][i].double(), expected[0], atol=1e-5)
        assert torch.allclose(values["ref_rejected_pooled"][i].double(), expected[1], atol=1e-5)


@pytest.mark.parametrize("pooling", ["masked_mean", "unmasked_mean"])
def test_mpo_terms_at_initialisation(setup, pooling, tmp_path):
    tok, model, examples = setup
    config = load_config(TINY_RECIPE, {"output_dir": str(tmp_path), "retain_pooling": pooling, "mpo_beta": 1.5,
                                       "retain_alpha": 2.0, "per_device_train_batch_size": 1})
    dataset = ExampleDataset([{**e, "dominant": dict(e["dominant"])} for e in examples])
    values = rc.compute_reference_values(model, dataset, "mpo", pad_token_id=tok.pad_token_id, pooling=pooling)
    rc.attach_values(dataset, dataset.ids, values, "mpo")
    batch = collate_mpo(dataset.examples, tok.pad_token_id)
    out = compute_objective(model, batch, config, tok.pad_token_id)
    # Policy == reference: the retention term is zero; the gap term is the formula on brute-force gaps.
    assert out.terms["retention"] == pytest.approx(0.0, abs=1e-9)
    targets = [e["target"] for e in examples]
    dominants = [e["dominant"] for e in examples]
    _, tc = brute_logps(model, targets, "chosen")
    _, tr = brute_logps(model, targets, "rejected")
    _, dc = brute_logps(model, dominants, "chosen")
    _, dr = brute_logps(model, dominants, "rejected")
    expected = sum((1.5 * (a - b) - (c - d)) ** 2 for a, b, c, d in zip(tc, tr, dc, dr)) / 2
    assert out.terms["mpo_gap"] == pytest.approx(expected, rel=1e-4)
    assert float(out.loss) == pytest.approx(expected, rel=1e-4)
    assert term_weights(config) == {"mpo_gap": 1.0, "retention": 2.0}
    assert out.counts["zh/reward_gap/abs_diff"] == 2
    # The retention gradient reaches the model once the policy moves.
    with torch.no_grad():
        model.model.norm.weight.mul_(1.1)
    try:
        moved = compute_objective(model, batch, config, tok.pad_token_id)
        assert moved.terms["retention"] > 1e-6
    finally:
        with torch.no_grad():
            model.model.norm.weight.div_(1.1)


class _OwnForwardWrapper(torch.nn.Module):
    """The calling convention of DDP / the DeepSpeed engine (``.module``, scoring through the
    wrapper's forward): makes ``compute_objective`` take the one-concatenated-forward MPO path."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


@pytest.mark.parametrize("pooling", ["masked_mean", "unmasked_mean"])
def test_mpo_two_forwards_equal_one_joined_forward(setup, pooling, tmp_path):
    """A plain model runs the target and dominant pairs as two forwards at their own widths; a
    wrapped one pads them to one width and runs once. Same terms, same gradients (the target pair
    here is wider than the dominant pair, so the joined forward really pads)."""
    tok, _, examples = setup
    model = build_tiny_model("llama", tok, seed=7)
    config = load_config(TINY_RECIPE, {"output_dir": str(tmp_path), "retain_pooling": pooling, "mpo_beta": 1.5,
                                       "per_device_train_batch_size": 1})
    dataset = ExampleDataset([{**e, "dominant": dict(e["dominant"])} for e in examples])
    reference = build_tiny_model("llama", tok, seed=8)  # a different model: non-zero retention
    values = rc.compute_reference_values(reference, dataset, "mpo", pad_token_id=tok.pad_token_id, pooling=pooling)
    rc.attach_values(dataset, dataset.ids, values, "mpo")
    batch = collate_mpo(dataset.examples, tok.pad_token_id)
    assert batch["target"]["input_ids"].shape[1] != batch["dominant"]["input_ids"].shape[1]

    grads = []
    outs = []
    for scored in (model, _OwnForwardWrapper(model)):
        model.zero_grad(set_to_none=True)
        out = compute_objective(scored, batch, config, tok.pad_token_id)
        out.loss.backward()
        outs.append(out)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert outs[0].terms["retention"] > 1e-6 and outs[0].terms["mpo_gap"] > 0
    for name in ("mpo_gap", "retention"):
        assert outs[0].terms[name] == pytest.approx(outs[1].terms[name], rel=1e-5, abs=1e-9)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for key, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][key], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("wrapped", [False, True])
def test_unmasked_retention_equals_the_released_formula_in_float64(setup, tmp_path, wrapped):
    """The released step at per-device batch 1, brute force in float64: the dominant pair padded by
    LLaMA-Factory's collator to a multiple of 8, ``hidden_states[-1].mean(dim=1)`` under the policy
    and under the reference, ``MSELoss`` of the two. polyalign caches the reference side before
    training (in batches of two pairs) and computes the policy side in the objective; both forward
    paths (two forwards / one joined forward) must give the same number."""
    tok, _, examples = setup
    policy = build_tiny_model("llama", tok, seed=7).double()
    reference = build_tiny_model("llama", tok, seed=8).double()
    lengths = [len(e["dominant"]["prompt_input_ids"]) + len(e["dominant"][f"{s}_input_ids"])
               for e in examples for s in ("chosen", "rejected")]
    assert any(n % 8 for n in lengths)  # the rounding to 8 matters here
    config = load_config(TINY_RECIPE, {"output_dir": str(tmp_path), "retain_pooling": "unmasked_mean",
                                       "per_device_train_batch_size": 1})
    dataset = ExampleDataset([{**e, "dominant": dict(e["dominant"])} for e in examples])
    values = rc.compute_reference_values(reference, dataset, "mpo", pad_token_id=tok.pad_token_id, batch_size=2,
                                         pooling="unmasked_mean")
    rc.attach_values(dataset, dataset.ids, values, "mpo")
    for example in dataset.examples:
        released = float(((_released_pool(policy, example["dominant"])
                           - _released_pool(reference, example["dominant"])) ** 2).mean())
        batch = collate_mpo([example], tok.pad_token_id)
        scored = _OwnForwardWrapper(policy) if wrapped else policy
        out = compute_objective(scored, batch, config, tok.pad_token_id)
        unrounded = float(((_released_pool(policy, example["dominant"], 1)
                            - _released_pool(reference, example["dominant"], 1)) ** 2).mean())
        assert released > 1e-4 and abs(unrounded - released) > 1e-4 * released  # the padding is pooled
        # the cached reference vectors are float32: agreement to ~1e-8
        assert out.terms["retention"] == pytest.approx(released, rel=1e-6)
