"""Benchmark 2: one MPO training step, polyalign vs an "official-style" step.

Batch: one parallel pair (batch size 1, as the released code's per-device batch), i.e. a
target-language chosen/rejected pair and its dominant-language pair. Policy = seeded Llama
(seed 0), reference = a different seeded Llama (seed 1) so the reward gap and the retention
term are both non-trivial. ``beta = 1``, ``alpha = 1``.

- ``official``: written the way the released code works: a policy forward with full-vocabulary
  logits on the target pair, another on the dominant pair (``output_hidden_states``), a
  no-grad reference forward with full logits on the dominant pair every step, log-probs by
  ``log_softmax`` over ``[rows, T, V]``, retention on ``hidden_states[-1].mean(dim=1)``
  (unmasked pooling, the batch padded to a multiple of 8 as LLaMA-Factory's collator does);
  loss = ``mean (beta*(tc-tr) - (dc-dr))^2 + alpha * MSE``.
- ``polyalign``: reference values (dominant average log-probs and pooled hidden states,
  ``retain_pooling: unmasked_mean``) precomputed once with the reference model, which is then
  freed; step = ``compute_objective`` (one concatenated forward, LM head only on target
  response positions, dominant rows hidden-state-only) + backward + optimizer step.

Both report the loss of every call (warm-up included); ``run_all`` checks they are equal,
step by step (same initial weights, same optimizer, same gradients up to rounding).

Gradient checkpointing (``*_gc`` implementations): every decoder layer of the policy checkpointed
(``activation_checkpointing_enable``). ``official_gc`` is reentrant, as the released recipe
(LLaMA-Factory forces ``use_reentrant: true``); ``polyalign_gc`` is reentrant and
``polyalign_gc_nonreentrant`` is transformers 5's default, so the mode can be chosen by measurement.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from benchmarks import common

IMPLS = ["polyalign", "official", "polyalign_gc", "polyalign_gc_nonreentrant", "official_gc"]
#: impl -> use_reentrant of its gradient checkpointing (absent: checkpointing off)
GC_MODE = {"polyalign_gc": True, "polyalign_gc_nonreentrant": False, "official_gc": True}
BETA, ALPHA = 1.0, 1.0


def mpo_examples(size: str, vocab: int, eos: int) -> list[dict[str, Any]]:
    target = common.preference_examples(size, vocab, 1, seed=1, eos=eos)[0]
    dominant = common.preference_examples(size, vocab, 1, seed=2, eos=eos)[0]
    target["language"], dominant["language"] = "zh", "en"
    return [{"id": "p0", "target": target, "dominant": dominant}]


def _avg_logps_full(logits: torch.Tensor, ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Released-code style: full ``[N, T, V]`` log-softmax, gather, masked mean over response tokens."""
    logps = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = response_mask[:, 1:].float()
    return (logps * mask).sum(1) / mask.sum(1)


def enable_checkpointing(model: Any, reentrant: bool | None) -> None:
    """Checkpoint every decoder layer (``reentrant`` None: leave checkpointing off)."""
    if reentrant is not None:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})


def _official(size: str, dtype: str, reentrant: bool | None = None) -> dict[str, Any]:
    from polyalign.data.collate import collate_mpo

    tok = common.build_tokenizer()
    policy = common.build_model(size, dtype, tok, seed=0)
    enable_checkpointing(policy, reentrant)
    ref = common.build_model(size, dtype, tok, seed=1).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    # The released workflow's collator pads to a multiple of 8 (LLaMA-Factory, pad_to_multiple_of=8).
    batch = collate_mpo(mpo_examples(size, policy.config.vocab_size, tok.eos_token_id), tok.pad_token_id,
                        pad_to_multiple_of=8)
    tgt, dom = batch["target"], batch["dominant"]
    opt = common.optimizer_for(policy)

    def step() -> dict[str, float]:
        t = policy(input_ids=tgt["input_ids"], attention_mask=tgt["attention_mask"], use_cache=False)
        tc, tr = _avg_logps_full(t.logits, tgt["input_ids"], tgt["response_mask"]).chunk(2)
        d = policy(input_ids=dom["input_ids"], attention_mask=dom["attention_mask"], output_hidden_states=True,
                   use_cache=False)
        with torch.no_grad():
            r = ref(input_ids=dom["input_ids"], attention_mask=dom["attention_mask"], output_hidden_states=True,
                    use_cache=False)
            dc, dr = _avg_logps_full(r.logits, dom["input_ids"], dom["response_mask"]).chunk(2)
        gap = ((BETA * (tc - tr) - (dc - dr)) ** 2).mean()
        retention = ((d.hidden_states[-1].float().mean(dim=1) - r.hidden_states[-1].float().mean(dim=1)) ** 2).mean()
        loss = gap + ALPHA * retention
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return {"loss": float(loss.detach()), "mpo_gap": float(gap.detach()), "retention": float(retention.detach())}

    tokens = int(tgt["attention_mask"].sum() + dom["attention_mask"].sum())
    return {"model": policy, "step": step, "tokens": tokens, "batch": batch}


def _polyalign(size: str, dtype: str, reentrant: bool | None = None) -> dict[str, Any]:
    from polyalign.data.collate import collate_mpo
    from polyalign.training.objective import compute_objective
    from polyalign.training.reference_cache import compute_reference_values

    tok = common.build_tokenizer()
    policy = common.build_model(size, dtype, tok, seed=0)
    examples = mpo_examples(size, policy.config.vocab_size, tok.eos_token_id)
    config = common.polyalign_config(tempfile.mkdtemp(prefix="bench_mpo_"), method="mpo", mpo_beta=BETA,
                                     retain_alpha=ALPHA, retain_pooling="unmasked_mean",
                                     per_device_train_batch_size=1)
    ref = common.build_model(size, dtype, tok, seed=1)
    values = compute_reference_values(ref, examples, "mpo", pad_token_id=tok.pad_token_id, batch_size=1,
                                      pooling="unmasked_mean", chunk_size=config.logps_chunk_size)
    del ref  # polyalign never keeps the reference during training
    for i, example in enumerate(examples):
        for key, column in values.items():
            example["dominant"][key] = column[i].item() if column.dim() == 1 else column[i].clone()
    batch = collate_mpo(examples, tok.pad_token_id)
    enable_checkpointing(policy, reentrant)
    opt = common.optimizer_for(policy)
    pad = tok.pad_token_id

    def step() -> dict[str, float]:
        out = compute_objective(policy, batch, config, pad)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return {"loss": float(out.loss.detach()), **out.terms}

    tokens = int(batch["target"]["attention_mask"].sum() + batch["dominant"]["attention_mask"].sum())
    return {"model": policy, "step": step, "tokens": tokens, "batch": batch}


def exact_step_flop_floor(batch: dict[str, Any], params: dict[str, int]) -> dict[str, float]:
    """Matmul FLOPs that any implementation computing this step's exact loss and gradients must run.

    A lower bound, so every term is counted generously low: the decoder's linear layers
    (``P_body`` parameters, 2 FLOPs per parameter per position forward, 4 backward) on every
    *real* target token (padding after a target row changes nothing) and on every dominant
    position the unmasked pooling reads (the dominant pair's own padded width); the LM head
    (``P_head``) forward + both backward products on the target response positions only;
    attention scores and the embedding lookup not at all; no reference forward (cached).
    ``shared_prompt`` additionally assumes each pair's prompt is run once for both answers
    (prefix sharing), which polyalign does not implement.
    """
    target, dominant = batch["target"], batch["dominant"]
    body, head = params["body"], params["lm_head"]
    target_real = int(target["attention_mask"].sum())
    dominant_positions = int(dominant["input_ids"].numel())
    response = int(target["response_mask"][:, 1:].sum())
    half = target["input_ids"].shape[0] // 2

    def prompt_lengths(side: dict[str, Any]) -> int:
        # Chosen rows: the prompt ends where the first response token starts.
        first = side["response_mask"][:half].float().argmax(dim=1)
        return int(first.sum())

    floor = 6.0 * body * (target_real + dominant_positions) + 6.0 * head * response
    shared = floor - 6.0 * body * (prompt_lengths(target) + prompt_lengths(dominant))
    return {"exact_floor_flops": floor, "exact_floor_flops_shared_prompt": shared,
            "floor_positions": {"target_real": target_real, "dominant_padded": dominant_positions,
                                "target_response": response}}


def run(args: Any) -> dict[str, Any]:
    s = common.SIZES[args.size]
    make = _official if args.impl.startswith("official") else _polyalign
    setup = make(args.size, args.dtype, GC_MODE.get(args.impl))
    setup_peak = common.peak_rss_mb()
    reset_ok = common.reset_peak_rss()
    rss_before = common.current_rss_mb()
    timing, losses = common.time_calls(setup["step"], s["warmup"], s["repeats"])
    result = {
        "bench": "mpo", "gradient_checkpointing": {None: "off", True: "reentrant", False: "non-reentrant"}[
            GC_MODE.get(args.impl)], "tokens_per_step": setup["tokens"],
        "tokens_per_s": setup["tokens"] / timing["median_s"],
        "losses": [x["loss"] for x in losses], "terms": losses, **timing,
        "peak_rss_mb": common.peak_rss_mb(), "rss_before_steps_mb": rss_before,
        "peak_rss_incl_setup_mb": setup_peak, "peak_reset": reset_ok, "params": common.count_params(setup["model"]),
    }
    # After the timed steps (the losses compared above are unaffected): FLOPs really executed by
    # one more step, counted op by op, and the floor any exact implementation must run.
    # At the real shapes only the two compared steps are counted (each counted step is one more step).
    if args.impl in ("polyalign", "official") or args.size not in common.SHAPES:
        result["matmul_flops_counted"] = common.counted_flops(setup["step"])
    result.update(exact_step_flop_floor(setup["batch"], result["params"]))
    # Memory floor of any step that keeps a full gradient and AdamW's two moments beside the
    # parameters (what was resident before the steps: interpreter, libraries, parameters).
    param_mb = sum(p.numel() * p.element_size() for p in setup["model"].parameters()) / 2**20
    result["rss_floor_mb"] = rss_before + 3 * param_mb
    result["rss_floor_no_full_grad_mb"] = rss_before + 2 * param_mb
    if args.profile:
        result["profile"] = common.profile_table(setup["step"])
    return result


if __name__ == "__main__":
    common.child_main(IMPLS, run)
