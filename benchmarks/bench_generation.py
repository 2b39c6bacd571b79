"""Benchmark 5: evaluation generation, the harness (``HFGenerator`` at its default batch size:
length-sorted batches, grouped prefill, static KV cache, batched decode) vs a naive loop
calling ``model.generate`` once per prompt (same settings, no padding, default cache).

Greedy decoding, ``max_new_tokens`` per size, the same prompts for both (random words of
varied lengths, raw-text mode). Tokens/s = generated tokens (up to and including EOS) / wall
time of generating all prompts; one timed call = all prompts. Both report their decoded
texts' fingerprint so ``run_all`` can say whether the outputs agree.

At the real shapes (``common.SHAPES``) the model's vocabulary (49,152 / 262,144) is far larger than
the tiny tokenizer's, so most generated ids have no text: there ``decode`` writes the ids themselves,
and the fingerprint and the per-token agreement compare token ids. The warm-up call there is the
first two prompts only (a whole naive pass costs minutes), the same for both sides.
``harness_plain``: the harness with grouped prefill off (one padded prefill inside ``generate``,
the model's own cache): what the grouped prefill and static cache add.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import torch

from benchmarks import common

IMPLS = ["harness", "naive", "harness_plain"]
_WORDS = ["the", "river", "light", "stone", "garden", "quiet", "market", "north", "window", "paper", "winter",
          "signal", "bridge", "cloud", "letter", "morning", "engine", "forest", "silver", "harbor"]


def _prompts(size: str) -> list[Any]:
    from polyalign.data.records import EvalPrompt

    s = common.SIZES[size]
    rng = random.Random(5)
    longest = 12 if size == "quick" else 60
    return [EvalPrompt(id=f"g{i}", language="en",
                       text=" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, longest))),
                       benchmark="bench") for i in range(s["gen_prompts"])]


def run(args: Any) -> dict[str, Any]:
    from polyalign.evaluation.generation import GenerationSettings, HFGenerator, make_batches, make_tasks

    s = common.SIZES[args.size]
    tok = common.build_tokenizer()
    model = common.build_model(args.size, args.dtype, tok).eval()
    shape = args.size in common.SHAPES
    if shape:  # compare token ids, not the (mostly empty) texts of ids beyond the tiny tokenizer
        tok.decode = lambda ids, **_: " ".join(str(int(i)) for i in ids)
    settings = GenerationSettings(max_new_tokens=s["gen_new"], chat_template=False)
    generator = HFGenerator(model, tok, settings, **({"batch_size": s["gen_batch"]} if s["gen_batch"] else {}))
    if args.impl == "harness_plain":  # the harness without grouped prefill: one padded prefill in generate
        generator.grouped_prefill = False
    batch = generator.batch_size
    tasks = make_tasks(tok, _prompts(args.size), settings)
    eos = sorted(generator.eos_ids)

    def harness(todo: list[Any] = tasks) -> dict[str, Any]:
        records = [r for rows in make_batches(todo, batch) for r in generator.generate_batch(rows)]
        return {r["id"]: (r["text"], r["n_tokens"]) for r in records}

    def naive(todo: list[Any] = tasks) -> dict[str, Any]:
        out = {}
        for task in todo:
            ids = torch.tensor([task.input_ids])
            with torch.inference_mode():
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=s["gen_new"],
                                     do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=eos)
            new = gen[0, ids.shape[1]:].tolist()
            stop = next((i for i, t in enumerate(new) if t in eos), None)
            kept = new if stop is None else new[: stop + 1]
            out[task.prompt.id] = (tok.decode(kept, skip_special_tokens=True), len(kept))
        return out

    fn = naive if args.impl == "naive" else harness
    if shape:
        fn(tasks[:2])  # warm-up on two prompts (see the module docstring)
    common.reset_peak_rss()
    timing, outputs = common.time_calls(fn, 0 if shape else s["warmup"], s["gen_repeats"])
    last = outputs[-1]
    generated = sum(n for _, n in last.values())
    digest = hashlib.sha256("\n".join(f"{k}\t{last[k][0]}" for k in sorted(last)).encode()).hexdigest()[:16]
    result = {"bench": "generation", "prompts": len(tasks), "max_new_tokens": s["gen_new"], "batch_size": batch,
              "grouped_prefill": generator.grouped_prefill, "sliding_window": generator.sliding_window,
              "generated_tokens": generated, "tokens_per_s": generated / timing["median_s"], **timing,
              "outputs_sha": digest, "outputs": {k: last[k][0] for k in sorted(last)},
              "prompt_tokens": sum(len(t.input_ids) for t in tasks),
              "peak_rss_mb": common.peak_rss_mb(), "params": common.count_params(model)}
    if args.profile:
        result["profile"] = common.profile_table(fn)
    return result


if __name__ == "__main__":
    common.child_main(IMPLS, run)
