"""Benchmark 3: the cost of the MLC term on top of a polyalign DPO step.

- ``dpo``: the plain polyalign DPO step of :mod:`benchmarks.bench_dpo` (``compute_objective``).
- ``dpo_mlc``: a hand-written step in the shape of the trainer integration: the prompt-variant
  rows (``L`` languages per example) are appended to the preference rows
  (:func:`polyalign.training.mlc_term.append_rows`), one decoder forward, chunked DPO log-probs on
  the preference rows, :func:`polyalign.training.mlc_term.mlc_term` on the variant rows (extractor
  ``D = 512`` on the last layer), ``loss = dpo + mlc_weight * mlc``, backward, optimizer step
  (policy + extractor). The term is applied on every measured step; the released schedule
  (every 2nd step) halves the amortised overhead, which ``run_all`` reports too.

When the trainer integration is present (``PolyalignConfig.mlc_weight`` and
:mod:`polyalign.training.mlc_policy`), ``dpo_mlc`` is the real path instead:
``compute_objective(wrap_policy(model, config), batch + variant rows, config, apply_mlc=True)``
with ``mlc_weight = 0.1``, ``mlc_every = 1``; the result's ``mlc_path`` says which ran.
"""

from __future__ import annotations

import random
import tempfile
from typing import Any

import torch

from benchmarks import common
from benchmarks.bench_dpo import polyalign_dpo_setup

IMPLS = ["dpo", "dpo_mlc"]
MLC_WEIGHT = 0.1


def _variants(size: str, n_examples: int, vocab: int, pad: int) -> dict[str, torch.Tensor]:
    """Right-padded variant rows ``[B*L, T]`` and ``variant_index [B, L]`` (every language present)."""
    from polyalign.data.collate import pad_sequences

    s = common.SIZES[size]
    rng = random.Random(7)
    rows = [common.random_ids(rng, rng.randint(*s["prompt"]), vocab) for _ in range(n_examples * s["mlc_langs"])]
    ids = pad_sequences(rows, pad)
    mask = pad_sequences([[1] * len(r) for r in rows], 0)
    index = torch.arange(len(rows)).view(n_examples, s["mlc_langs"])
    return {"variant_input_ids": ids, "variant_attention_mask": mask, "variant_index": index}


def _integrated() -> bool:
    """True when the MLC term is part of ``compute_objective`` (trainer integration landed)."""
    import importlib.util

    from polyalign.training.config import config_fields

    return "mlc_weight" in config_fields() and importlib.util.find_spec("polyalign.training.mlc_policy") is not None


def run(args: Any) -> dict[str, Any]:
    from polyalign.losses import dpo_loss, sequence_logps
    from polyalign.training.extractor import MLCExtractor
    from polyalign.training.mlc_term import append_rows, mlc_term

    s = common.SIZES[args.size]
    setup = polyalign_dpo_setup(args.size, args.dtype, tempfile.mkdtemp(prefix="bench_mlc_"))
    model, batch, config = setup["model"], setup["batch"], setup["config"]
    pad = setup["tokenizer"].pad_token_id
    n_examples = len(batch["languages"])
    variants = _variants(args.size, n_examples, model.config.vocab_size, pad)
    tokens = int(batch["attention_mask"].sum())
    variant_tokens = int(variants["variant_attention_mask"].sum())
    step = setup["step"]
    path = "none"
    if args.impl == "dpo_mlc" and _integrated():
        path = "integrated"
        from polyalign.training.mlc_policy import wrap_policy
        from polyalign.training.objective import compute_objective

        mlc_config = common.polyalign_config(tempfile.mkdtemp(prefix="bench_mlc_"), method="dpo", beta=0.1,
                                             mlc_weight=MLC_WEIGHT, mlc_every=1)
        policy = wrap_policy(model, mlc_config)
        mlc_batch = {**batch, **variants}
        opt = torch.optim.AdamW(list(policy.parameters()), lr=1e-5, foreach=True)

        def step() -> float:
            out = compute_objective(policy, mlc_batch, mlc_config, pad, apply_mlc=True)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(out.loss.detach())

    elif args.impl == "dpo_mlc":
        path = "hand-written"
        extractor = MLCExtractor(model.config.hidden_size, dim=512, layer=-1)
        opt = torch.optim.AdamW([*model.parameters(), *extractor.parameters()], lr=1e-5, foreach=True)
        decoder, lm_head = model.get_decoder(), model.get_output_embeddings()
        rows, width = batch["input_ids"].shape

        def step() -> float:
            ids, mask = append_rows(batch["input_ids"], batch["attention_mask"], variants["variant_input_ids"],
                                    variants["variant_attention_mask"], pad)
            hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            total, _, n = sequence_logps(hidden[:rows, :width], lm_head, batch["input_ids"], batch["response_mask"],
                                         chunk_size=config.logps_chunk_size)
            b = n_examples
            ref = batch["ref_logps"]
            losses, _, _ = dpo_loss(total[:b], total[b:], ref[:b], ref[b:], beta=config.beta,
                                    chosen_n_tokens=n[:b], rejected_n_tokens=n[b:])
            mlc = mlc_term(hidden[rows:], mask[rows:], variants["variant_index"], extractor)
            loss = losses.mean() + MLC_WEIGHT * mlc.loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())

    common.reset_peak_rss()
    timing, losses = common.time_calls(step, s["warmup"], s["repeats"])
    result = {"bench": "mlc", "mlc_path": path, "preference_tokens_per_step": tokens,
              "variant_tokens_per_step": variant_tokens,
              "languages": s["mlc_langs"], "mlc_weight": MLC_WEIGHT, "losses": losses, **timing,
              "tokens_per_s": tokens / timing["median_s"], "peak_rss_mb": common.peak_rss_mb(),
              "params": common.count_params(model)}
    if args.profile:
        result["profile"] = common.profile_table(step)
    return result


if __name__ == "__main__":
    common.child_main(IMPLS, run)
