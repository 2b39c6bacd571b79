"""MPO end to end on a slice of the official MPO data, through the ``polyalign train`` CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import polyalign.training.reference_cache as rc
from polyalign.cli import main
from polyalign.models import load_model_and_tokenizer
from polyalign.training.config import load_config
from polyalign.training.datasets import load_training_data
from training_helpers import TINY_RECIPE, brute_logps


def _gap(model, side_examples) -> list[float]:
    """RG = avg_logp(chosen) - avg_logp(rejected), brute force in float64."""
    _, c = brute_logps(model, side_examples, "chosen")
    _, r = brute_logps(model, side_examples, "rejected")
    return [a - b for a, b in zip(c, r)]


def _masked_pool(model, examples) -> list[torch.Tensor]:
    """Mean of the last hidden state over each sequence's real tokens (one sequence at a time)."""
    out = []
    for e in examples:
        for side in ("chosen", "rejected"):
            ids = torch.tensor([e["prompt_input_ids"] + e[f"{side}_input_ids"]])
            with torch.no_grad():
                hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
            out.append(hidden.double().mean(0))
    return out


@pytest.mark.parametrize("tiny_ckpt", ["llama", "gemma3"], indirect=True)
def test_mpo_cli_moves_target_gaps_to_dominant_gaps_and_reuses_the_cache(shared_data, tiny_ckpt, tmp_path):
    data = shared_data / "mpo" / "llama_mpo_data.json"
    args = ["train", "--config", str(TINY_RECIPE), "--model_name_or_path", str(tiny_ckpt),
            "--train_file", str(data), "--reference_cache_dir", str(tmp_path / "cache")]
    before_calls = rc.REFERENCE_FORWARD_CALLS
    assert main(args + ["--output_dir", str(tmp_path / "run1")]) == 0
    first_calls = rc.REFERENCE_FORWARD_CALLS - before_calls
    assert first_calls >= 1
    final = tmp_path / "run1" / "final"
    info = json.loads((final / "run_info.json").read_text())
    history = info["log_history"]
    for key in ("loss", "mpo_gap", "retention", "reward_gap/abs_diff"):
        values = [h[key] for h in history if key in h]
        assert values and all(math.isfinite(v) for v in values), key
    assert info["data"]["train"]["limited_to"] == 24 and info["data"]["train"]["tokenize"]["kept"] == 24
    assert {k.split("/")[0] for h in history for k in h if k.endswith("/loss")} <= {"zh", "ja", "ko", "ar", "bn", "sw"}

    # Independent check of the cached reference values and of the training effect.
    config = load_config(TINY_RECIPE, {"model_name_or_path": str(tiny_ckpt), "train_file": str(data),
                                       "output_dir": str(tmp_path / "x")})
    initial, tok = load_model_and_tokenizer(tiny_ckpt)
    dataset, _ = load_training_data(config, tok, str(data), limit=24)
    dominant = [e["dominant"] for e in dataset.examples]
    target = [e["target"] for e in dataset.examples]
    cache = load_file(info["reference_cache"]["train"]["path"])
    rg_d = _gap(initial, dominant)
    cached_gap = (cache["ref_chosen_avg_logps"] - cache["ref_rejected_avg_logps"]).tolist()
    assert cached_gap == pytest.approx(rg_d, abs=1e-4)
    pooled = _masked_pool(initial, dominant[:3])
    for i in range(3):
        assert torch.allclose(cache["ref_chosen_pooled"][i].double(), pooled[2 * i], atol=1e-4)
        assert torch.allclose(cache["ref_rejected_pooled"][i].double(), pooled[2 * i + 1], atol=1e-4)
    trained, tok2 = load_model_and_tokenizer(final)
    beta = config.mpo_beta
    dist_before = sum(abs(beta * t - d) for t, d in zip(_gap(initial, target), rg_d)) / len(rg_d)
    dist_after = sum(abs(beta * t - d) for t, d in zip(_gap(trained, target), rg_d)) / len(rg_d)
    assert dist_after < 0.6 * dist_before, (dist_before, dist_after)
    # The saved checkpoint generates.
    prompt = tok2.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                      add_generation_prompt=True)
    enc = tok2(prompt, return_tensors="pt")
    assert trained.generate(**enc, max_new_tokens=4, do_sample=False).shape[1] == enc["input_ids"].shape[1] + 4

    # Second run, same model/data/tokenisation: no reference forward at all.
    middle = rc.REFERENCE_FORWARD_CALLS
    assert main(args + ["--output_dir", str(tmp_path / "run2"), "--max_steps", "1"]) == 0
    assert rc.REFERENCE_FORWARD_CALLS - middle == 0
    info2 = json.loads((tmp_path / "run2" / "final" / "run_info.json").read_text())
    assert info2["reference_cache"]["train"]["hit"] is True
