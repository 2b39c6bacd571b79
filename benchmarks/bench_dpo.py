"""Benchmark 1: one DPO training step, polyalign vs TRL 1.16 ``DPOTrainer``.

Same model (seeded Llama), same tokenised pairs, same padded batch (TRL's collator and
polyalign's :func:`collate_preference` both right-pad chosen rows then rejected rows to the
longest row; the child checks the ``input_ids`` are identical), same precision, no gradient
checkpointing, same optimizer (AdamW, foreach) stepped after each backward. The reference is
the starting policy everywhere.

- ``polyalign``: reference log-probs precomputed once (``compute_reference_values``, as
  ``run.train`` does on a cache miss); step = ``compute_objective`` (chunked LM head on
  response positions only) + backward + optimizer step.
- ``trl``: ``DPOTrainer.training_step`` with ``precompute_ref_log_probs=False`` (default: a
  reference forward with full logits every step; the reference is a copy of the policy) +
  optimizer step.
- ``trl_precompute``: the same with ``precompute_ref_log_probs=True`` (computed at trainer
  construction from the policy itself; no reference model kept).

Tokens/s counts the real (non-padding) tokens of the policy batch per step.
Run one configuration: ``python -m benchmarks.bench_dpo --impl polyalign --size quick``.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from benchmarks import common

IMPLS = ["polyalign", "trl", "trl_precompute"]


def polyalign_dpo_setup(size: str, dtype: str, tmp: str) -> dict[str, Any]:
    """Model, batch (with cached reference log-probs), config and step function of polyalign DPO."""
    from polyalign.data.collate import collate_preference
    from polyalign.training.reference_cache import compute_reference_values

    tok = common.build_tokenizer()
    model = common.build_model(size, dtype, tok)
    vocab = model.config.vocab_size
    examples = common.preference_examples(size, vocab, common.SIZES[size]["pairs"], eos=tok.eos_token_id)
    pad = tok.pad_token_id
    config = common.polyalign_config(tmp, method="dpo", beta=0.1)
    # What run.train does on a reference-cache miss (the reference is the starting policy).
    values = compute_reference_values(model, examples, "dpo", pad_token_id=pad, batch_size=len(examples),
                                      chunk_size=config.logps_chunk_size)
    for i, example in enumerate(examples):
        for key, column in values.items():
            example[key] = float(column[i])
    batch = collate_preference(examples, pad)
    model.train()
    opt = common.optimizer_for(model)
    from polyalign.training.objective import compute_objective

    def step() -> float:
        out = compute_objective(model, batch, config, pad)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    return {"model": model, "batch": batch, "config": config, "step": step, "examples": examples, "tokenizer": tok,
            "optimizer": opt}


def _trl_setup(size: str, dtype: str, tmp: str, precompute: bool) -> dict[str, Any]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        """The rows already hold TRL's tokenised columns (prompt_ids, chosen_ids, rejected_ids)."""

        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    tok = common.build_tokenizer()
    model = common.build_model(size, dtype, tok)
    examples = common.preference_examples(size, model.config.vocab_size, common.SIZES[size]["pairs"],
                                          eos=tok.eos_token_id)
    rows = [{"prompt_ids": e["prompt_input_ids"], "chosen_ids": e["chosen_input_ids"],
             "rejected_ids": e["rejected_input_ids"]} for e in examples]
    args = DPOConfig(output_dir=tmp, per_device_train_batch_size=len(rows), bf16=False, use_cpu=True, report_to=[],
                     gradient_checkpointing=False, precompute_ref_log_probs=precompute, beta=0.1, max_length=None,
                     seed=0, dataloader_num_workers=0)
    ref = None if precompute else common.clone_model(model).eval()
    trainer = PreTokenizedDPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                                     processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    opt = common.optimizer_for(trainer.model)
    trainer.optimizer = opt
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop, which we bypass
    trainer.model.train()

    def step() -> float:
        loss = trainer.training_step(trainer.model, batch)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    return {"model": trainer.model, "batch": batch, "step": step, "examples": examples, "tokenizer": tok}


def run(args: Any) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="bench_dpo_")
    s = common.SIZES[args.size]
    if args.impl == "polyalign":
        setup = polyalign_dpo_setup(args.size, args.dtype, tmp)
        ids = setup["batch"]["input_ids"]
    else:
        setup = _trl_setup(args.size, args.dtype, tmp, precompute=args.impl == "trl_precompute")
        ids = setup["batch"]["input_ids"]
    # The batch both sides see: polyalign's collator on the same examples.
    from polyalign.data.collate import collate_preference

    reference_ids = collate_preference(setup["examples"], setup["tokenizer"].pad_token_id)["input_ids"]
    same_batch = bool(ids.shape == reference_ids.shape and torch.equal(ids, reference_ids))
    tokens = int(setup["batch"]["attention_mask"].sum())
    setup_peak = common.peak_rss_mb()
    reset_ok = common.reset_peak_rss()
    rss_before = common.current_rss_mb()
    timing, losses = common.time_calls(setup["step"], s["warmup"], s["repeats"])
    result = {
        "bench": "dpo", "tokens_per_step": tokens, "padded_tokens_per_step": int(ids.numel()),
        "batch_shape": list(ids.shape), "same_batch_as_polyalign_collator": same_batch,
        "tokens_per_s": tokens / timing["median_s"], "losses": losses, **timing,
        "peak_rss_mb": common.peak_rss_mb(), "rss_before_steps_mb": rss_before,
        "peak_rss_incl_setup_mb": setup_peak, "peak_reset": reset_ok,
        "params": common.count_params(setup["model"]),
    }
    if args.profile:
        result["profile"] = common.profile_table(setup["step"])
    return result


if __name__ == "__main__":
    common.child_main(IMPLS, run)
