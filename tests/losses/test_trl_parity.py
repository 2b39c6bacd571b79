"""``dpo_loss`` on our chunked log-probs equals TRL 1.16's ``DPOTrainer`` loss on the same batch.

TRL builds the batch (chat template, prompt/completion split, right padding, rows
``[chosen..., rejected...]``, ``completion_mask``) and computes the loss itself with its
fused LM head; we only read its batch, score it with ``model_sequence_logps`` and apply
``dpo_loss``. TRL's ``completion_mask`` marks the completion tokens, the same convention as
our ``response_mask`` (token t counts, predicted from t-1).
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from polyalign.losses import dpo_loss
from polyalign.models import build_tiny_model, build_tiny_tokenizer
from polyalign.training.forward import model_sequence_logps

pytestmark = pytest.mark.filterwarnings("ignore:.*(g|is_g)radient_checkpointing.*:FutureWarning")

trl = pytest.importorskip("trl")

EXAMPLES = [
    ("How do I pick a lock?", "I can't help with that.", "First, insert a tension wrench into the lock."),
    ("Translate 'good morning' to Spanish.", "Buenos días.", "No."),
    ("Write a short poem about the sea, please.", "Waves fold in blue light, salt on the wind.", "Sea."),
]


@pytest.fixture(scope="module")
def trainer_and_batch(tmp_path_factory):
    from trl import DPOConfig, DPOTrainer

    tokenizer = build_tiny_tokenizer()
    policy = build_tiny_model("llama", tokenizer, seed=0)
    ref = build_tiny_model("llama", tokenizer, seed=1)  # a different model: nonzero log-ratios
    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p}],
                "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}],
            }
            for p, c, r in EXAMPLES
        ]
    )
    args = DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("dpo")),
        per_device_train_batch_size=len(EXAMPLES),
        bf16=False,
        use_cpu=True,
        report_to=[],
        gradient_checkpointing=False,
        precompute_ref_log_probs=False,
        beta=0.1,
        max_length=None,
        seed=0,
    )
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=data, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer, batch


def _our_logps(model, batch):
    with torch.no_grad():
        total, _, n, _, _ = model_sequence_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"].bool(), chunk_size=7
        )
    return total, n


@pytest.mark.parametrize(
    "loss_type,beta,label_smoothing",
    [("sigmoid", 0.1, 0.0), ("hinge", 0.1, 0.0), ("ipo", 0.5, 0.0), ("robust", 0.1, 0.2)],
)
def test_dpo_loss_matches_trl(trainer_and_batch, loss_type, beta, label_smoothing):
    trainer, batch = trainer_and_batch
    # The loss settings are plain attributes read by TRL's _compute_loss at each call.
    trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
    trainer.beta, trainer.label_smoothing = beta, label_smoothing
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()

    b = len(EXAMPLES)
    assert batch["input_ids"].shape[0] == 2 * b
    policy_logps, n = _our_logps(trainer.model, batch)
    ref_logps, _ = _our_logps(trainer.ref_model, batch)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_logps[:b],
        policy_logps[b:],
        ref_logps[:b],
        ref_logps[b:],
        beta=beta,
        loss_type=loss_type,
        label_smoothing=label_smoothing,
        chosen_n_tokens=n[:b],
        rejected_n_tokens=n[b:],
    )
    assert losses.mean().item() == pytest.approx(trl_loss, abs=1e-5)
    # the log-probs are far from zero (a real comparison, not 0 == 0)
    assert (policy_logps - ref_logps).abs().min().item() > 1e-2
    # TRL logs the same rewards
    metrics = trainer._metrics["train" if trainer.model.training else "eval"]
    assert metrics["rewards/chosen"][-1] == pytest.approx(chosen_rewards.mean().item(), abs=1e-5)
    assert metrics["rewards/rejected"][-1] == pytest.approx(rejected_rewards.mean().item(), abs=1e-5)
