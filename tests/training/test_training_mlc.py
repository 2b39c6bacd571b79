"""MLC as a plug-in term of polyalign's own trainer: every method, one forward, saving, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from polyalign.data.collate import Collator, collate_variants
from polyalign.data.records import Message, PromptVariants
from polyalign.data.writers import write_canonical
from polyalign.errors import UserError
from polyalign.losses.mlc_loss import rank1_share
from polyalign.models import load_model_and_tokenizer
from polyalign.training.config import load_config
from polyalign.training.datasets import load_training_data
from polyalign.training.extractor import MLCExtractor
from polyalign.training.mlc_policy import MLCCollator, wrap_policy
from polyalign.training.mlc_term import encode_variants, mlc_term, scatter_variants
from polyalign.training.objective import compute_objective, term_weights
from polyalign.training.run import train
from preference_prompts import make_pairs
from training_helpers import REPO, base_settings

torch.set_num_threads(1)
TINY_RECIPE = REPO / "recipes" / "tiny_cpu_dpo_mlc.yaml"
MLC_TERMS = ("mlc/loss", "mlc/rank1_share", "mlc/mean_cosine", "mlc/present_share")


def mlc_settings(tiny_ckpt, data, out, **extra):
    """The tiny DPO + MLC recipe's settings (mlc_weight 0.8, every 2, 12 examples, batch 12, 4 steps)."""
    settings = base_settings(tiny_ckpt, data, out, max_examples=12, per_device_train_batch_size=12, max_steps=4)
    settings.update(extra)
    return settings


def run(tiny_ckpt, data, out, **extra):
    config = load_config(TINY_RECIPE, mlc_settings(tiny_ckpt, data, out, **extra))
    return config, train(config)


def steps(info):
    return [e for e in info["log_history"] if "loss" in e]


@pytest.fixture(scope="module")
def mlc_file(shared_data):
    return shared_data / "mlc" / "pku_saferlhf_safety_test.jsonl"


class ForwardCounter:
    """Counts decoder (LlamaModel, Gemma3TextModel) forwards in training mode and records their batch rows."""

    def __init__(self):
        self.rows: list[int] = []

    def __enter__(self):
        def hook(module, args, kwargs, output):
            if type(module).__name__ in ("LlamaModel", "Gemma3TextModel") and module.training:
                self.rows.append(int(kwargs["input_ids"].shape[0]))

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("method,loss_type,tiny_ckpt", [
    ("dpo", "sigmoid", "llama"), ("dpo", "ipo", "llama"), ("dpo", "hinge", "llama"), ("dpo", "robust", "llama"),
    ("simpo", "sigmoid", "llama"), ("orpo", "sigmoid", "llama"), ("sft", "sigmoid", "llama"),
    ("dpo", "sigmoid", "gemma3"), ("orpo", "sigmoid", "gemma3")], indirect=["tiny_ckpt"])
def test_every_method_adds_mlc_on_every_second_step_in_one_forward(method, loss_type, tiny_ckpt, mlc_file, tmp_path):
    with ForwardCounter() as counter:
        config, info = run(tiny_ckpt, mlc_file, tmp_path / "run", method=method, loss_type=loss_type,
                           nll_weight=0.3 if method == "dpo" else None, label_smoothing=0.1 if loss_type == "robust"
                           else 0.0)
    logged = steps(info)
    assert [e["step"] for e in logged] == [1, 2, 3, 4]
    # global_step 0 and 2 carry the term (should_apply(step, 2)); the others log no MLC metric.
    assert [e["step"] for e in logged if "mlc/loss" in e] == [1, 3]
    assert all(not any(k in e for k in MLC_TERMS) for e in logged if e["step"] in (2, 4))
    n_variants = 12 * 10  # 12 examples x 10 languages, none missing in this slice
    rows = 12 if method == "sft" else 24
    # Exactly one decoder forward per training step; the variant rows ride along on MLC steps only.
    assert counter.rows == [rows + n_variants, rows, rows + n_variants, rows]
    weights = term_weights(config)
    for entry in logged:
        expected = sum(w * entry[name] for name, w in weights.items() if name != "mlc")
        if "mlc/loss" in entry:
            assert 0 < entry["mlc/rank1_share"] <= 1 and -1 <= entry["mlc/mean_cosine"] <= 1
            assert entry["mlc/present_share"] == 1.0 and math.isfinite(entry["mlc/loss"])
            expected += 0.8 * entry["mlc/loss"]
        assert entry["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    report = info["mlc"]["variants"]["train"]
    assert report["n_examples"] == 12 and report["complete"] == 12 and len(report["languages"]) == 10
    assert (tmp_path / "run" / "final" / "mlc_extractor" / "model.safetensors").is_file()


def test_appended_variants_leave_the_alignment_terms_unchanged_and_weight_zero_is_off(tiny_ckpt, mlc_file,
                                                                                     tmp_path):
    _, with_mlc = run(tiny_ckpt, mlc_file, tmp_path / "on", nll_weight=0.5, max_steps=1)
    _, without = run(tiny_ckpt, mlc_file, tmp_path / "off", nll_weight=0.5, max_steps=1, mlc_weight=0.0)
    on, off = steps(with_mlc)[0], steps(without)[0]
    # Same initial policy and batch: the variant rows appended to the forward change nothing else.
    for key in ("dpo", "nll", "rewards/margins", "en/rewards/chosen"):
        assert on[key] == pytest.approx(off[key], abs=1e-5)
    assert off["loss"] == pytest.approx(off["dpo"] + 0.5 * off["nll"], rel=1e-6)
    assert not any(k in off for k in MLC_TERMS) and "mlc" not in without
    assert not (tmp_path / "off" / "final" / "mlc_extractor").exists()


def _batch(config, tiny_ckpt, mlc_file, start=0, stop=12):
    model, tok = load_model_and_tokenizer(tiny_ckpt)
    dataset, report = load_training_data(config, tok, str(mlc_file), limit=stop)
    collator = MLCCollator(Collator(config.method, tok.pad_token_id), tok.pad_token_id, report.variants.languages)
    return model, tok, collator(dataset.examples[start:stop])


@pytest.mark.parametrize("layer,scale", [(-1, "released"), (1, "paper")])
@pytest.mark.parametrize("tiny_ckpt", ["llama", "gemma3"], indirect=True)
def test_logged_mlc_loss_equals_mlc_term_on_a_separate_forward(layer, scale, tiny_ckpt, mlc_file, tmp_path):
    config, info = run(tiny_ckpt, mlc_file, tmp_path / "run", method="simpo", max_steps=1, mlc_layer=layer,
                       mlc_scale=scale)
    model, tok, batch = _batch(config, tiny_ckpt, mlc_file)
    wrapper = wrap_policy(model, config)  # the extractor's initialisation depends on the seed only
    out = compute_objective(wrapper, batch, config, tok.pad_token_id, apply_mlc=True)
    # Independent: the variant rows alone through the decoder (layer `layer`), last token, mlc_term.
    with torch.no_grad():
        h = encode_variants(model, batch["variant_input_ids"], batch["variant_attention_mask"], layer=layer)
        ref = mlc_term(h.unsqueeze(1), torch.ones(h.shape[0], 1, dtype=torch.long), batch["variant_index"],
                       wrapper.mlc_extractor, tau=0.2, scale=scale)
    assert out.sums["mlc/loss"] == pytest.approx(float(ref.loss), abs=1e-5)
    assert out.sums["mlc/rank1_share"] == pytest.approx(float(ref.rank1_share.mean()), abs=1e-5)
    assert float(out.loss.detach()) == pytest.approx(out.terms["simpo"] + 0.8 * float(ref.loss), abs=1e-5)
    # The training run logged the same value on its first step (same initial policy and extractor).
    assert steps(info)[0]["mlc/loss"] == pytest.approx(float(ref.loss), abs=1e-5)
    # A step without the term: no variant forward, a zero (not missing) extractor gradient.
    skipped = compute_objective(wrapper, batch, config, tok.pad_token_id, apply_mlc=False)
    assert "mlc/loss" not in skipped.sums
    assert float(skipped.loss.detach()) == pytest.approx(skipped.terms["simpo"], abs=1e-6)
    skipped.loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in wrapper.mlc_extractor.parameters())


@pytest.mark.parametrize("use_lora,tiny_ckpt", [(False, "llama"), (True, "llama"), (True, "gemma3")],
                         indirect=["tiny_ckpt"])
def test_extractor_saved_beside_the_model_and_restored_on_resume(use_lora, tiny_ckpt, mlc_file, tmp_path):
    extra = {"method": "orpo", "save_strategy": "steps", "save_steps": 2, "per_device_train_batch_size": 4,
             "use_lora": use_lora, "lora_r": 4}
    weights = "adapter_model.safetensors" if use_lora else "model.safetensors"
    config, first = run(tiny_ckpt, mlc_file, tmp_path / "a", **extra)
    final = tmp_path / "a" / "final"
    saved = MLCExtractor.load(final)
    assert saved.config_dict()["dim"] == 512 and saved.config_dict()["layer"] == -1
    model, _ = load_model_and_tokenizer(tiny_ckpt)
    initial = wrap_policy(model, config).mlc_extractor
    assert not torch.equal(saved.linear.weight, initial.linear.weight)  # it was trained
    last = MLCExtractor.load(tmp_path / "a" / "checkpoint-4")
    assert torch.equal(saved.linear.weight, last.linear.weight) and torch.equal(saved.linear.bias, last.linear.bias)
    reference_keys = set(load_file(str(tiny_ckpt / "model.safetensors")))
    for folder in (final, tmp_path / "a" / "checkpoint-2"):
        keys = set(load_file(str(folder / weights)))
        assert not any("mlc" in k or "extractor" in k for k in keys)
        assert (keys == reference_keys) if not use_lora else all("lora_" in k for k in keys)
    if not use_lora:
        load_model_and_tokenizer(final)  # a plain model folder
    # Resume from step 2 in another folder: policy, extractor and their optimizer state come back.
    _, resumed = run(tiny_ckpt, mlc_file, tmp_path / "b", resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"),
                     **extra)
    again = MLCExtractor.load(tmp_path / "b" / "final")
    torch.testing.assert_close(again.linear.weight, saved.linear.weight, atol=1e-6, rtol=0)
    resumed_weights, first_weights = load_file(str(tmp_path / "b" / "final" / weights)), load_file(str(final / weights))
    assert resumed_weights.keys() == first_weights.keys()
    for key, value in first_weights.items():
        torch.testing.assert_close(resumed_weights[key], value, atol=1e-6, rtol=0)
    # The resumed steps 3 and 4 log what the uninterrupted run logged (MLC on step 3 only).
    for before, after in zip(steps(first)[2:], steps(resumed)[2:], strict=True):
        assert after["step"] == before["step"] and ("mlc/loss" in after) == (after["step"] == 3)
        assert after["loss"] == pytest.approx(before["loss"], abs=1e-5)
        assert after.get("mlc/loss", 0.0) == pytest.approx(before.get("mlc/loss", 0.0), abs=1e-5)
    with pytest.raises(UserError, match="does not match"):
        run(tiny_ckpt, mlc_file, tmp_path / "c", mlc_dim=16,
            resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"), **extra)


@pytest.mark.parametrize("tiny_ckpt", ["llama", "gemma3"], indirect=True)
def test_mpo_with_mlc_forwards_target_dominant_and_variants_together(shared_data, tiny_ckpt, tmp_path):
    rows = json.loads((shared_data / "mpo" / "llama_mpo_data.json").read_text(encoding="utf-8"))
    data = tmp_path / "mpo_slice.json"  # 12 rows spread over the file (several target languages)
    data.write_text(json.dumps(rows[::50][:12], ensure_ascii=False), encoding="utf-8")
    with ForwardCounter() as counter:
        config, info = run(tiny_ckpt, data, tmp_path / "mpo", method="mpo", per_device_train_batch_size=4,
                           detect_language=True)  # the MPO file carries no language labels
    report = info["mlc"]["variants"]["train"]
    # Variants: each example's own dominant (en) and target prompts, so two languages per example.
    assert report["languages"][0] == "en" and report["too_few"] == 0 and report["missing"]["en"] == 0
    n_langs = len(report["languages"])
    assert sum(report["missing"].values()) == 12 * (n_langs - 2)
    # MLC steps: one forward of 2B target + 2B dominant rows + 2 variants per example; other steps
    # (a plain model): the target and dominant pairs as two forwards at their own widths.
    assert counter.rows == [16 + 8, 8, 8, 16 + 8, 8, 8]
    logged = steps(info)
    assert [e["step"] for e in logged if "mlc/loss" in e] == [1, 3]
    for entry in logged:
        expected = entry["mpo_gap"] + config.retain_alpha * entry["retention"]
        if "mlc/loss" in entry:
            assert entry["mlc/present_share"] == pytest.approx(2 / n_langs)
            expected += 0.8 * entry["mlc/loss"]
        assert entry["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def _held_out_rank1(model, extractor, batch):
    """Mean rank-1 share over held-out examples: after the extractor and of the raw hidden states."""
    with torch.no_grad():
        h = encode_variants(model, batch["variant_input_ids"], batch["variant_attention_mask"])
        z, mask = scatter_variants(extractor(h), batch["variant_index"])
        raw, _ = scatter_variants(h, batch["variant_index"])
    return rank1_share(z, mask).mean().item(), rank1_share(raw, mask).mean().item()


def test_a_few_steps_raise_the_rank1_share_of_held_out_variants(tiny_ckpt, mlc_file, tmp_path):
    extra = {"method": "sft", "max_steps": 8, "nll_weight": 0.1}
    config, _ = run(tiny_ckpt, mlc_file, tmp_path / "mlc", mlc_weight=2.0, mlc_every=1, **extra)
    run(tiny_ckpt, mlc_file, tmp_path / "plain", mlc_weight=0.0, **extra)
    model, _, held = _batch(config, tiny_ckpt, mlc_file, 12, 24)  # prompts never trained on
    initial = wrap_policy(model, config).mlc_extractor
    z0, raw0 = _held_out_rank1(model, initial, held)
    trained, _ = load_model_and_tokenizer(tmp_path / "mlc" / "final")
    z1, raw1 = _held_out_rank1(trained, MLCExtractor.load(tmp_path / "mlc" / "final"), held)
    plain, _ = load_model_and_tokenizer(tmp_path / "plain" / "final")
    _, raw_plain = _held_out_rank1(plain, initial, held)
    print(f"held-out rank-1 share: extractor {z0:.4f} -> {z1:.4f}; hidden {raw0:.4f} -> {raw1:.4f} "
          f"(without MLC {raw_plain:.4f})")
    assert z1 > z0 + 0.05 and raw1 > raw0 + 0.05 and raw1 > raw_plain + 0.02


def test_variants_joined_from_a_file_with_missing_languages_are_masked_and_reported(tiny_ckpt, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_canonical(make_pairs(8), pairs)
    prompts = {"en": "How are you?", "fr": "Comment allez-vous ?", "de": "Wie geht es dir?"}
    records = [PromptVariants(id=f"p{i}", prompts={k: (Message("user", v),) for k, v in prompts.items()
                                                   if not (i == 6 and k == "de")}) for i in range(7)]
    records.append(PromptVariants(id="unmatched", prompts={"en": (Message("user", "x"),),
                                                           "fr": (Message("user", "y"),)}))
    variants = tmp_path / "variants.jsonl"
    write_canonical(records, variants)
    _, info = run(tiny_ckpt, pairs, tmp_path / "run", variants_file=str(variants), per_device_train_batch_size=8,
                  max_steps=1, max_examples=None)
    report = info["mlc"]["variants"]["train"]
    # p7 has no variant record (only its own English prompt: too few); p6 lacks de.
    assert report["missing"] == {"en": 0, "fr": 1, "de": 2}
    assert report["too_few"] == 1 and report["n_examples"] == 8 and report["unmatched_variants"] == ["unmatched"]
    assert info["data"]["train"]["variants"] == report
    assert steps(info)[0]["mlc/present_share"] == pytest.approx(21 / 24)
    saved = json.loads((tmp_path / "run" / "final" / "run_info.json").read_text())
    assert saved["mlc"]["variants"]["train"]["missing"]["de"] == 2


@pytest.mark.parametrize("override,field", [({"mlc_every": 0}, "mlc_every"), ({"mlc_scale": "x"}, "mlc_scale"),
                                            ({"mlc_languages": ["en"]}, "mlc_languages"),
                                            ({"mlc_weight": -1}, "mlc_weight"),
                                            ({"mlc_weight": 0, "variants_file": "v.jsonl"}, "variants_file"),
                                            ({"load_best_model_at_end": True, "eval_strategy": "steps",
                                              "save_strategy": "steps"}, "load_best_model_at_end")])
def test_invalid_mlc_settings_are_user_errors(override, field, tiny_ckpt, tmp_path):
    with pytest.raises(UserError) as err:
        load_config(TINY_RECIPE, mlc_settings(tiny_ckpt, tmp_path / "x.jsonl", tmp_path / "o", **override))
    assert err.value.field == field


def test_mlc_without_any_variants_is_a_user_error(tiny_ckpt, pairs_file, tmp_path):
    with pytest.raises(UserError, match="no languages for MLC") as err:
        run(tiny_ckpt, pairs_file, tmp_path / "run", max_examples=None, per_device_train_batch_size=8)
    assert str(err.value.file) == str(pairs_file)
    # Variants in one language only: nothing to make consistent. The failed start above left no
    # claim on the folder, so this corrected rerun into the same output_dir is not "another run".
    with pytest.raises(UserError, match="no example has prompt variants in two"):
        run(tiny_ckpt, pairs_file, tmp_path / "run", max_examples=None, mlc_languages=["en", "fr"])


def test_collated_columns_are_fixed_languages_with_missing_masked():
    batch = collate_variants([{"variant_input_ids": {"en": [1, 2]}}, {"variant_input_ids": {"fr": [3], "en": [4]}}],
                             0, languages=["en", "fr", "de"])
    assert batch["variant_index"].tolist() == [[0, -1, -1], [1, 2, -1]]


@pytest.mark.slow
def test_two_processes_match_one_process_with_mlc(tiny_ckpt, mlc_file, tmp_path):
    """DDP (torchrun, 2 CPU processes, gloo, ``ddp_find_unused_parameters: false``) trains the
    policy *and* the extractor exactly like one process with the same global batch: the
    extractor is part of the DDP-wrapped module, so its gradients are averaged, and on the step
    without the MLC term it still gets a (zero) gradient on both ranks."""
    import os
    import socket
    import subprocess
    import sys

    import yaml

    def recipe(name, batch):
        settings = mlc_settings(tiny_ckpt, mlc_file, tmp_path / name, max_examples=8, max_steps=3,
                                per_device_train_batch_size=batch, ddp_find_unused_parameters=False,
                                reference_cache_dir=str(tmp_path / f"cache-{name}"))
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**yaml.safe_load(TINY_RECIPE.read_text()), **settings}))
        return path

    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO))
    one = subprocess.run([sys.executable, "-m", "polyalign", "train", "--config", str(recipe("single", 8))],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(port), "-m", "polyalign", "train", "--config",
                          str(recipe("multi", 4))], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    logs = [json.loads((tmp_path / n / "final" / "run_info.json").read_text())["log_history"]
            for n in ("single", "multi")]
    for a, b in zip(*(steps({"log_history": h}) for h in logs), strict=True):
        assert ("mlc/loss" in a) == ("mlc/loss" in b) == (a["step"] in (1, 3))
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    ext = [MLCExtractor.load(tmp_path / n / "final") for n in ("single", "multi")]
    model, _ = load_model_and_tokenizer(tiny_ckpt)
    initial = wrap_policy(model, load_config(tmp_path / "single.yaml")).mlc_extractor
    assert (ext[0].linear.weight - initial.linear.weight).abs().max() > 1e-4  # trained: not a vacuous comparison
    torch.testing.assert_close(ext[0].linear.weight, ext[1].linear.weight, atol=2e-5, rtol=0)
    torch.testing.assert_close(ext[0].linear.bias, ext[1].linear.bias, atol=2e-5, rtol=0)
    w1, w2 = (load_file(str(tmp_path / n / "final" / "model.safetensors")) for n in ("single", "multi"))
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) <= 2e-5


@pytest.mark.parametrize("name", ["dpo_mlc_qwen25_7b.yaml", "dpo_mlc_gemma2_9b.yaml"])
def test_released_recipes_load_with_the_released_numbers(name):
    config = load_config(REPO / "recipes" / name, {"bf16": False, "use_cpu": True})  # bf16 needs a GPU
    assert (config.method, config.beta, config.loss_type, config.resolved_nll_weight) == ("dpo", 0.1, "sigmoid", 0.0)
    mlc = (config.mlc_weight, config.mlc_tau, config.mlc_every, config.mlc_layer, config.mlc_dim)
    assert mlc == (0.8, 0.2, 2, -1, 512)
    assert (config.learning_rate, config.num_train_epochs, config.mlc_scale) == (6e-7, 3, "released")
    assert config.mlc_languages == ["en", "zh", "ru", "ja", "ar", "bn", "sw", "ur", "ps", "ku"]
