"""DPO / SimPO / ORPO / SFT runs, LoRA, the reference cache, per-language eval, DDP scoring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import polyalign.training.reference_cache as rc
from polyalign.data.writers import write_canonical
from polyalign.models import load_model_and_tokenizer
from polyalign.training.config import load_config
from polyalign.training.datasets import load_training_data
from polyalign.training.run import train
from preference_prompts import make_pairs
from training_helpers import TINY_RECIPE, base_settings, brute_logps


def run(tiny_ckpt, pairs_file, tmp_path, name, **extra):
    config = load_config(TINY_RECIPE, base_settings(tiny_ckpt, pairs_file, tmp_path / name, **extra))
    return config, train(config)


def logged(info, key):
    return [entry[key] for entry in info["log_history"] if key in entry]


def initial_examples(config, tiny_ckpt, pairs_file):
    model, tok = load_model_and_tokenizer(tiny_ckpt)
    dataset, _ = load_training_data(config, tok, str(pairs_file))
    return model, dataset.examples


@pytest.mark.parametrize("tiny_ckpt", ["llama", "gemma3"], indirect=True)
def test_dpo_first_step_is_ln2_and_run_saves_a_generating_model(tiny_ckpt, pairs_file, tmp_path):
    config, info = run(tiny_ckpt, pairs_file, tmp_path, "dpo", nll_weight=0.5)
    dpo_terms = logged(info, "dpo")
    # Before the first update the policy equals the reference: every margin is 0, loss ln 2.
    assert dpo_terms[0] == pytest.approx(math.log(2.0), abs=1e-5)
    model, examples = initial_examples(config, tiny_ckpt, pairs_file)
    _, chosen_avg = brute_logps(model, examples, "chosen")
    expected_nll = -sum(chosen_avg) / len(chosen_avg)
    assert logged(info, "nll")[0] == pytest.approx(expected_nll, rel=1e-4)
    assert logged(info, "loss")[0] == pytest.approx(math.log(2.0) + 0.5 * expected_nll, rel=1e-3)
    assert all(math.isfinite(v) for v in logged(info, "loss"))
    assert "en/rewards/accuracy" in info["log_history"][0] and "rewards/margins" in info["log_history"][0]
    final = tmp_path / "dpo" / "final"
    for name in ("model.safetensors", "polyalign_config.yaml", "run_info.json", "chat_template.jinja"):
        assert (final / name).is_file(), name
    assert not (final / "training_args.bin").exists()
    saved = (final / "polyalign_config.yaml").read_text()
    assert "method: dpo" in saved and "hub_token" not in saved
    again = load_config(final / "polyalign_config.yaml")
    assert (again.method, again.nll_weight, again.max_steps, again.learning_rate) == ("dpo", 0.5, 3, 1e-3)
    assert info["data"]["train"]["fingerprint"].startswith("sha256:")
    reloaded, tok = load_model_and_tokenizer(final)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True)
    out = reloaded.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > len(tok(prompt)["input_ids"])


@pytest.mark.parametrize("method", ["simpo", "orpo", "sft"])
@pytest.mark.parametrize("tiny_ckpt", ["llama", "gemma3"], indirect=True)
def test_reference_free_methods_first_loss_matches_formula(method, tiny_ckpt, pairs_file, tmp_path):
    # only the settings the method reads (others are refused): beta for simpo/orpo, simpo_gamma for simpo
    used = {"simpo": {"beta": 0.5, "simpo_gamma": 0.3}, "orpo": {"beta": 0.5}, "sft": {}}[method]
    config, info = run(tiny_ckpt, pairs_file, tmp_path, method, method=method,
                       train_sampling_strategy="group_by_length", **used)
    losses = logged(info, "loss")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    model, examples = initial_examples(config, tiny_ckpt, pairs_file)
    _, c = brute_logps(model, examples, "chosen")
    _, r = brute_logps(model, examples, "rejected")
    c64, r64 = torch.tensor(c), torch.tensor(r)
    nll = -c64.mean().item()
    if method == "simpo":
        expected = (-F.logsigmoid(0.5 * (c64 - r64) - 0.3)).mean().item()
    elif method == "orpo":
        log_odds = (c64 - r64) - (torch.log1p(-torch.exp(c64)) - torch.log1p(-torch.exp(r64)))
        expected = nll + (-0.5 * F.logsigmoid(log_odds)).mean().item()
    else:
        expected = nll
    assert losses[0] == pytest.approx(expected, rel=1e-3)
    if method != "sft":
        assert logged(info, method)[0] == pytest.approx(expected - (nll if method == "orpo" else 0.0), rel=1e-3)


@pytest.mark.parametrize("tiny_ckpt", ["llama", "gemma3"], indirect=True)
def test_reference_cache_is_reused_and_keyed_by_tokenisation(tiny_ckpt, pairs_file, tmp_path):
    before = rc.REFERENCE_FORWARD_CALLS
    _, first = run(tiny_ckpt, pairs_file, tmp_path, "a", max_steps=1)
    assert first["reference_cache"]["train"]["hit"] is False
    assert rc.REFERENCE_FORWARD_CALLS - before == first["reference_cache"]["train"]["forward_calls"] >= 1
    middle = rc.REFERENCE_FORWARD_CALLS
    _, second = run(tiny_ckpt, pairs_file, tmp_path, "b", max_steps=1)
    assert second["reference_cache"]["train"]["hit"] is True
    assert rc.REFERENCE_FORWARD_CALLS - middle == 0
    _, third = run(tiny_ckpt, pairs_file, tmp_path, "c", max_steps=1, max_length=40)
    assert third["reference_cache"]["train"]["hit"] is False


def test_separate_reference_model_is_loaded_only_on_a_cache_miss(tiny_ckpt, pairs_file, tmp_path):
    import shutil

    ref_copy = tmp_path / "ref_copy"
    shutil.copytree(tiny_ckpt, ref_copy)
    before = rc.REFERENCE_FORWARD_CALLS
    _, info = run(tiny_ckpt, pairs_file, tmp_path, "ref", max_steps=1, ref_model_name_or_path=str(ref_copy))
    assert info["reference_cache"]["train"]["hit"] is False and rc.REFERENCE_FORWARD_CALLS > before
    # Same weights as the policy: the first DPO loss is ln 2 again.
    assert logged(info, "dpo")[0] == pytest.approx(math.log(2.0), abs=1e-5)


def test_per_language_eval_metrics(tiny_ckpt, pairs_file, tmp_path):
    eval_file = tmp_path / "eval.jsonl"
    write_canonical(make_pairs(3, "en", "e") + make_pairs(2, "de", "d"), eval_file)
    _, info = run(tiny_ckpt, pairs_file, tmp_path, "ev", max_steps=1, eval_file=str(eval_file))
    metrics = info["metrics"]
    for lang in ("en", "de"):
        assert math.isfinite(metrics[f"eval_{lang}_loss"])
        assert 0.0 <= metrics[f"eval_{lang}_rewards/accuracy"] <= 1.0
        assert f"eval_{lang}_{lang}/rewards/margins" in metrics


@pytest.mark.parametrize("tiny_ckpt", ["llama", "gemma3"], indirect=True)
def test_lora_saves_adapters_and_reference_disables_them(tiny_ckpt, pairs_file, tmp_path):
    from peft import PeftModel

    from polyalign.training.run import _reference_factory, load_policy

    _, info = run(tiny_ckpt, pairs_file, tmp_path, "lora", use_lora=True, lora_r=4, lora_alpha=8,
                  learning_rate=1e-2)
    final = tmp_path / "lora" / "final"
    assert (final / "adapter_model.safetensors").is_file() and (final / "adapter_config.json").is_file()
    assert not (final / "model.safetensors").exists()
    base, tok = load_model_and_tokenizer(tiny_ckpt)
    ids = tok("hello there", return_tensors="pt")
    with torch.no_grad():
        base_logits = base(**ids).logits
    tuned = PeftModel.from_pretrained(base, final)
    with torch.no_grad():
        tuned_logits = tuned(**ids).logits
    assert torch.isfinite(tuned_logits).all() and not torch.allclose(tuned_logits, base_logits)
    assert tuned.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 3
    # With non-zero adapters the reference must still be the base model.
    config = load_config(TINY_RECIPE, base_settings(tiny_ckpt, pairs_file, tmp_path / "x", use_lora=True, lora_r=4))
    policy, tok = load_policy(config)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    dataset, _ = load_training_data(config, tok, str(pairs_file))
    with _reference_factory(config, policy)() as reference:
        values = rc.compute_reference_values(reference, dataset, "dpo", pad_token_id=tok.pad_token_id)
    fresh, _ = load_model_and_tokenizer(tiny_ckpt)
    sums, _ = brute_logps(fresh, dataset.examples, "chosen")
    assert values["ref_chosen_logps"].tolist() == pytest.approx(sums, rel=1e-4)
    adapted, _ = brute_logps(policy, dataset.examples[:1], "chosen")
    assert adapted[0] != pytest.approx(sums[0], rel=1e-3)  # the adapters do change the policy


@pytest.mark.parametrize("tiny_ckpt", ["llama", "gemma3"], indirect=True)
def test_ddp_wrapped_policy_scores_like_the_plain_model(tiny_ckpt, tmp_path):
    import torch.distributed as dist

    from polyalign.training.forward import model_sequence_logps

    model, _ = load_model_and_tokenizer(tiny_ckpt)
    ids = torch.tensor([[5, 40, 41, 42, 6, 50, 51, 2], [5, 43, 44, 6, 52, 2, 0, 0]])
    attn = (ids != 0).long()
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[0, 5:] = True
    resp[1, 4:6] = True
    expected = model_sequence_logps(model, ids, attn, resp)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        got = model_sequence_logps(wrapped, ids, attn, resp)
        got[0].sum().backward()
    finally:
        dist.destroy_process_group()
    for a, b in zip(expected[:3], got[:3]):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    assert torch.allclose(expected[3], got[3], atol=1e-5)
    assert model.get_output_embeddings().weight.grad is not None


def test_checkpoint_and_resume(tiny_ckpt, pairs_file, tmp_path):
    _, first = run(tiny_ckpt, pairs_file, tmp_path, "res", save_strategy="steps", save_steps=2, max_steps=2,
                   per_device_train_batch_size=2)
    checkpoint = tmp_path / "res" / "checkpoint-2"
    assert (checkpoint / "trainer_state.json").is_file()
    _, resumed = run(tiny_ckpt, pairs_file, tmp_path, "res", max_steps=3, per_device_train_batch_size=2,
                     resume_from_checkpoint=str(checkpoint))
    steps = [h["step"] for h in resumed["log_history"] if "loss" in h]
    assert steps == [1, 2, 3]
    # Steps 1-2 come from the checkpoint's state, unchanged; step 3 is new.
    assert [h["loss"] for h in resumed["log_history"][:2]] == logged(first, "loss")
    assert resumed["reference_cache"]["train"]["hit"] is True
