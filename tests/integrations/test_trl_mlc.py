"""MLCDPOTrainer: a real TRL 1.16 DPOTrainer subclass with the MLC term, on a tiny Llama.

Checks: training logs the MLC metrics on every 2nd step and updates the extractor; the
extractor is saved beside the model and reloads; with weight 0 the loss equals plain TRL
DPO on the same batch (so the joint forward leaves DPO unchanged); with weight 0.8 the
extra loss is exactly 0.8 times the MLC term computed by a separate forward.
"""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from polyalign.data.records import Message, PreferencePair, PromptVariants
from polyalign.errors import UserError
from polyalign.models import build_tiny_model, build_tiny_tokenizer, load_model_and_tokenizer
from polyalign.training.extractor import MLCExtractor
from polyalign.training.mlc_term import encode_variants, mlc_term

pytestmark = pytest.mark.filterwarnings("ignore:.*(g|is_g)radient_checkpointing.*:FutureWarning")
trl = pytest.importorskip("trl")

from polyalign.integrations.trl_mlc import MLCConfig, MLCDPOTrainer, trl_rows  # noqa: E402

LANGS = ["en", "de", "fr", "es"]
ROWS = [  # prompt per language (None = missing), chosen, rejected
    (("How do I pick a lock?", "Wie knacke ich ein Schloss?", "Comment crocheter une serrure ?",
      "¿Cómo abro una cerradura?"), "I can't help with that.", "Insert a tension wrench first."),
    # a long variant: the variant rows are wider than the preference rows (padding both ways)
    (("Say hello.", None, "Dis bonjour.", "Di hola a todos los vecinos del barrio, a los niños de la escuela y a "
      "los abuelos que pasean por el parque cada tarde."), "Hello!", "No."),
    (("Write a short poem about the sea.", "Schreib ein kurzes Gedicht über das Meer.", None, None),
     "Waves fold in blue light.", "Sea."),
    (("Where is the station?", "Wo ist der Bahnhof?", "Où est la gare ?", "¿Dónde está la estación?"),
     "It is two streets north.", "Find it yourself."),
]


def _dataset() -> Dataset:
    pairs = [
        PreferencePair(id=str(i), prompt=(Message("user", prompts[0]),), chosen=c, rejected=r, language="en",
                       variants=PromptVariants(str(i), {lang: (Message("user", t),) for lang, t in
                                                        zip(LANGS, prompts) if t is not None}))
        for i, (prompts, c, r) in enumerate(ROWS)
    ]
    return Dataset.from_list(trl_rows(pairs, LANGS))


def _args(tmp_path, **kw):
    from trl import DPOConfig

    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=len(ROWS), bf16=False, use_cpu=True,
                report_to=[], gradient_checkpointing=False, precompute_ref_log_probs=False, beta=0.1,
                max_length=None, seed=0, learning_rate=1e-3, logging_steps=1, save_strategy="no",
                disable_tqdm=True)
    base.update(kw)
    return DPOConfig(**base)


def _trainer(tmp_path, tok, weight=0.8, every=2, **kw):
    policy = build_tiny_model("llama", tok, seed=0)
    ref = build_tiny_model("llama", tok, seed=1)  # differs from the policy: nonzero log-ratios
    config = MLCConfig(languages=LANGS, weight=weight, every=every, extractor_dim=32)
    return MLCDPOTrainer(model=policy, ref_model=ref, args=_args(tmp_path, **kw), train_dataset=_dataset(),
                         processing_class=tok, mlc_config=config)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_trains_logs_and_saves_the_extractor(tmp_path, tok):
    trainer = _trainer(tmp_path / "run", tok, max_steps=4)
    assert trainer.mlc_report.missing == {"en": 0, "de": 1, "fr": 1, "es": 1}
    assert trainer.mlc_report.complete == 2
    optimizer = trainer.create_optimizer()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in trainer.mlc_extractor.parameters())
    start = {k: v.clone() for k, v in trainer.mlc_extractor.state_dict().items()}
    trainer.train()

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4]
    # every = 2: the term runs at global steps 0 and 2, i.e. in the 1st and 3rd logged steps
    assert ["mlc/loss" in entry for entry in logs] == [True, False, True, False]
    for entry in (logs[0], logs[2]):
        assert entry["mlc/loss"] > 0
        assert 1 / 4 <= entry["mlc/rank1_share"] <= 1 and -1 <= entry["mlc/mean_cosine"] <= 1
        assert entry["mlc/present_share"] == pytest.approx(13 / 16)
        assert math.isfinite(entry["loss"])
    for name, value in trainer.mlc_extractor.state_dict().items():
        assert not torch.equal(value, start[name]), f"extractor {name} was not trained"

    metrics = trainer.evaluate(_dataset())  # evaluation runs the term on every batch (no step gating)
    assert metrics["eval_mlc/loss"] > 0 and 0.25 <= metrics["eval_mlc/rank1_share"] <= 1

    out = tmp_path / "final"
    trainer.save_model(str(out))
    loaded = MLCExtractor.load(out)
    assert loaded.config_dict() == trainer.mlc_extractor.config_dict()
    for name, value in trainer.mlc_extractor.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value.cpu())
    model, _ = load_model_and_tokenizer(out)
    assert not any("extractor" in key for key in model.state_dict())
    trained = trainer.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_weight_zero_is_plain_trl_dpo_and_the_term_is_exact(tmp_path, tok):
    from trl import DPOTrainer

    mlc = _trainer(tmp_path / "mlc", tok, weight=0.0, every=1)
    batch = next(iter(mlc.get_train_dataloader()))
    index = batch["variant_index"]
    assert sorted((index >= 0).sum(1).tolist()) == [2, 3, 4, 4]  # the examples, in the sampler's order
    assert sorted(index[index >= 0].tolist()) == list(range(13))
    assert batch["variant_input_ids"].shape[1] > batch["input_ids"].shape[1]
    plain = DPOTrainer(model=build_tiny_model("llama", tok, seed=0), ref_model=build_tiny_model("llama", tok, seed=1),
                       args=_args(tmp_path / "plain"), train_dataset=_dataset().remove_columns("prompt_variants"),
                       processing_class=tok)
    plain_batch = {k: v for k, v in batch.items() if not k.startswith("variant_")}
    mlc.model.train()
    plain.model.train()
    with torch.no_grad():
        dpo = plain.compute_loss(plain.model, plain_batch).item()
        with_zero = mlc.compute_loss(mlc.model, batch).item()
    assert with_zero == pytest.approx(dpo, abs=1e-5)
    assert mlc._metrics["train"]["rewards/margins"][-1] == pytest.approx(
        plain._metrics["train"]["rewards/margins"][-1], abs=1e-5)
    logged = mlc._metrics["train"]["mlc/loss"][-1]  # the term did run, in the same forward
    assert logged > 1e-3

    # The term from a separate forward over the variants alone (the released tokenisation).
    with torch.no_grad():
        h = encode_variants(mlc.model, batch["variant_input_ids"], batch["variant_attention_mask"])
        ones = torch.ones(h.shape[0], 1, dtype=torch.long)
        separate = mlc_term(h.unsqueeze(1), ones, batch["variant_index"], mlc.mlc_extractor).loss.item()
    assert logged == pytest.approx(separate, abs=1e-5)
    mlc.mlc_config.weight = 0.8
    with torch.no_grad():
        with_term = mlc.compute_loss(mlc.model, batch).item()
    assert with_term - dpo == pytest.approx(0.8 * separate, abs=1e-5)


def test_gradients_reach_the_model_through_the_variant_rows(tmp_path, tok):
    trainer = _trainer(tmp_path, tok, every=1)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.mlc_extractor.parameters())
    grads_with = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad()
    trainer.mlc_config.weight = 0.0
    trainer.compute_loss(trainer.model, batch).backward()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.allclose(p.grad, grads_with[n])]
    assert any("layers.0" in n for n in changed)  # the MLC term moves the model's own weights


def test_configuration_errors(tmp_path, tok):
    with pytest.raises(UserError, match="at least 2 languages"):
        MLCConfig(languages=["en"])
    with pytest.raises(UserError, match="weight"):
        MLCConfig(languages=LANGS, weight=-1)
    with pytest.raises(UserError, match="every"):
        MLCConfig(languages=LANGS, every=0)
    assert MLCConfig(languages=["EN", "zh_CN"]).languages == ["en", "zh"]
    with pytest.raises(UserError, match="no 'prompt_variants' column"):
        MLCDPOTrainer(model=build_tiny_model("llama", tok), ref_model=build_tiny_model("llama", tok, seed=1),
                      args=_args(tmp_path), train_dataset=_dataset().remove_columns("prompt_variants"),
                      processing_class=tok, mlc_config=MLCConfig(languages=LANGS))


def test_checkpoints_carry_the_extractor_and_resume(tmp_path, tok):
    # constant lr: a linear schedule would reach lr 0 at the end of the first run
    first = _trainer(tmp_path / "ckpt", tok, every=1, max_steps=2, save_strategy="steps", save_steps=2,
                     lr_scheduler_type="constant")
    first.train()
    checkpoint = tmp_path / "ckpt" / "checkpoint-2"
    saved = MLCExtractor.load(checkpoint)
    for name, value in first.mlc_extractor.state_dict().items():
        assert torch.equal(saved.state_dict()[name], value)

    second = _trainer(tmp_path / "ckpt", tok, every=1, max_steps=3, save_strategy="no", lr_scheduler_type="constant")
    second._load_from_checkpoint(str(checkpoint))
    for name, value in saved.state_dict().items():
        assert torch.equal(second.mlc_extractor.state_dict()[name], value)
    second.train(resume_from_checkpoint=str(checkpoint))  # optimizer state (with the head's groups) loads
    assert second.state.global_step == 3
    assert not torch.equal(second.mlc_extractor.linear.weight, saved.linear.weight)

    other = MLCDPOTrainer(model=build_tiny_model("llama", tok), ref_model=build_tiny_model("llama", tok, seed=1),
                          args=_args(tmp_path / "other"), train_dataset=_dataset(), processing_class=tok,
                          mlc_config=MLCConfig(languages=LANGS, extractor_dim=16))
    with pytest.raises(UserError, match="does not match the MLC config"):
        other._load_from_checkpoint(str(checkpoint))


def test_lora_policy(tmp_path, tok):
    """With a PEFT adapter the hooks sit on the base model's backbone; the reference forward
    (adapters disabled, same backbone) is not given the variant rows."""
    peft = pytest.importorskip("peft")
    trainer = MLCDPOTrainer(model=build_tiny_model("llama", tok), args=_args(tmp_path, max_steps=2),
                            train_dataset=_dataset(), processing_class=tok,
                            mlc_config=MLCConfig(languages=LANGS, every=1, extractor_dim=16),
                            peft_config=peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(entry["mlc/loss"] > 0 for entry in logs)
    assert logs[0]["rewards/margins"] == 0  # step 1: LoRA starts at the reference exactly
    trainer.save_model(str(tmp_path / "out"))
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert MLCExtractor.load(tmp_path / "out").dim == 16


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path, tok):
    """TRL's default is gradient checkpointing; the hooks sit outside the checkpointed layers."""
    results = []
    for checkpointing in (False, True):
        trainer = _trainer(tmp_path / str(checkpointing), tok, every=1, gradient_checkpointing=checkpointing)
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        results.append((loss.detach(), trainer.mlc_extractor.linear.weight.grad.clone(),
                        trainer.model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    (loss_a, head_a, q_a), (loss_b, head_b, q_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert torch.allclose(head_a, head_b, atol=1e-6) and torch.allclose(q_a, q_b, atol=1e-6)
    assert head_a.abs().sum() > 0 and q_a.abs().sum() > 0


def test_an_inner_layer_is_read_from_the_joint_forward(tmp_path, tok):
    policy, ref = build_tiny_model("llama", tok, seed=0), build_tiny_model("llama", tok, seed=1)
    trainer = MLCDPOTrainer(model=policy, ref_model=ref, args=_args(tmp_path), train_dataset=_dataset(),
                            processing_class=tok,
                            mlc_config=MLCConfig(languages=LANGS, every=1, layer=1, extractor_dim=16))
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
        h = encode_variants(trainer.model, batch["variant_input_ids"], batch["variant_attention_mask"], layer=1)
        ones = torch.ones(h.shape[0], 1, dtype=torch.long)
        expected = mlc_term(h.unsqueeze(1), ones, batch["variant_index"], trainer.mlc_extractor).loss.item()
        last = encode_variants(trainer.model, batch["variant_input_ids"], batch["variant_attention_mask"])
        other = mlc_term(last.unsqueeze(1), ones, batch["variant_index"], trainer.mlc_extractor).loss.item()
    assert trainer._metrics["train"]["mlc/loss"][-1] == pytest.approx(expected, abs=1e-5)
    assert abs(expected - other) > 1e-4
