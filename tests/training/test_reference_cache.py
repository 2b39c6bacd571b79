"""The reference pass runs in length-sorted batches and writes every value back to its example."""

from __future__ import annotations

import pytest
import torch

import polyalign.training.reference_cache as rc
from polyalign.data.tokenize import TokenizeSettings, TokenizeStats, tokenize_pair
from polyalign.models import build_tiny_model, build_tiny_tokenizer
from polyalign.training.datasets import ExampleDataset
from preference_prompts import make_pairs
from training_helpers import brute_logps


@pytest.fixture(scope="module")
def setup():
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", tok, seed=3)
    examples = [tokenize_pair(p, tok, TokenizeSettings(), TokenizeStats()) for p in make_pairs(7)]
    return tok, model, ExampleDataset(examples)


def test_batches_are_sorted_by_length_and_cover_every_example_once():
    lengths = [5, 9, 9, 2, 7, 9]
    batches = rc.length_sorted_batches(lengths, 4)
    assert batches == [[1, 2, 5, 4], [0, 3]]  # longest first, ties in input order
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))


def test_sorted_pass_gives_each_example_its_own_values(setup):
    tok, model, dataset = setup
    lengths = [rc._pair_length(e, "dpo") for e in dataset.examples]
    assert lengths != sorted(lengths, reverse=True)  # sorting really reorders here
    widths: list[int] = []
    hook = model.model.register_forward_pre_hook(lambda _m, _a, kw: widths.append(kw["input_ids"].shape[1]),
                                                 with_kwargs=True)
    try:
        sorted_values = rc.compute_reference_values(model, dataset, "dpo", pad_token_id=tok.pad_token_id,
                                                    batch_size=3)
    finally:
        hook.remove()
    # batch widths follow the sorted lengths: the first batch holds the three longest examples
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    assert widths == [max(lengths[i] for i in order[s:s + 3]) for s in range(0, len(order), 3)]
    # one example per batch: no sorting, no padding; the values must be the same, row for row
    single = rc.compute_reference_values(model, dataset, "dpo", pad_token_id=tok.pad_token_id, batch_size=1)
    for key, column in single.items():
        torch.testing.assert_close(sorted_values[key], column, atol=1e-5, rtol=1e-5)
    sums, avgs = brute_logps(model, dataset.examples, "chosen")  # float64, full logits, one at a time
    assert sorted_values["ref_chosen_logps"].tolist() == pytest.approx(sums, abs=1e-4)
    assert sorted_values["ref_chosen_avg_logps"].tolist() == pytest.approx(avgs, abs=1e-5)
