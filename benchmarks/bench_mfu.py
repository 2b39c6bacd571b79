"""Benchmark 4: model FLOP utilisation of the polyalign DPO step against this CPU's matmul peak.

In one process: (1) the matmul peak, ``2 n^3 / t`` of ``torch.matmul`` on two ``[n, n]``
matrices of the benchmark dtype (best and median of the repeats); (2) the polyalign DPO step
of :mod:`benchmarks.bench_dpo`.

Model FLOPs per step, two ways:

- ``issue`` (the conventional estimate): ``6 * P * T`` for the policy forward+backward plus
  ``2 * P * T_fwd`` for forward-only parts, with ``P`` all parameters (embeddings included) and
  ``T`` the real tokens of the batch. The polyalign step has no forward-only part (the
  reference log-probs are cached), so it is ``6 * P * T``.
- ``executed``: the matmul FLOPs the step really runs: ``6 * P_body * T_pad`` (decoder
  linears on every padded position) ``+ 6 * P_head * T_resp`` (LM head only on response
  positions; when the response tokens span several ``logps_chunk_size`` chunks, each chunk's
  projection is recomputed in backward under checkpointing, counted as another
  ``2 * P_head * T_resp``) ``+ 12 * layers * hidden * rows * T_width^2`` (attention scores and
  values, forward + backward, causal mask not exploited by eager attention). The child also
  counts the step's matmul FLOPs op by op (``torch.utils.flop_counter``) as a check of this
  formula (``model_flops_counted``).

``MFU = model FLOPs / step time / matmul peak``.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch

from benchmarks import common
from benchmarks.bench_dpo import polyalign_dpo_setup

IMPLS = ["polyalign"]


def matmul_peak(n: int, dtype: torch.dtype, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of ``a @ b`` for ``[n, n]`` matrices: best and median over ``repeats`` timed calls."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    for _ in range(2):
        torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    flops = 2.0 * n**3
    times.sort()
    return {"n": n, "best_flops": flops / times[0], "median_flops": flops / times[len(times) // 2]}


def run(args: Any) -> dict[str, Any]:
    s = common.SIZES[args.size]
    dtype = getattr(torch, common.DTYPES[args.dtype])
    peak = matmul_peak(s["matmul_n"], dtype)
    setup = polyalign_dpo_setup(args.size, args.dtype, tempfile.mkdtemp(prefix="bench_mfu_"))
    batch, model = setup["batch"], setup["model"]
    timing, _ = common.time_calls(setup["step"], s["warmup"], s["repeats"])
    peak_after = matmul_peak(s["matmul_n"], dtype)  # the machine is shared: measure the peak on both sides
    best_peak = max(peak["best_flops"], peak_after["best_flops"])
    params = common.count_params(model)
    tokens = int(batch["attention_mask"].sum())
    padded = int(batch["input_ids"].numel())
    resp = int(batch["response_mask"][:, 1:].sum())
    lengths = batch["attention_mask"].sum(dim=1).double()
    width = batch["input_ids"].shape[1]
    cfg = model.config
    issue_flops = 6.0 * params["total"] * tokens
    attention = 12.0 * cfg.num_hidden_layers * cfg.hidden_size * batch["input_ids"].shape[0] * width**2
    head_passes = 8.0 if resp > setup["config"].logps_chunk_size else 6.0
    executed = 6.0 * params["body"] * padded + head_passes * params["lm_head"] * resp + attention
    counted = common.counted_flops(setup["step"])  # after the timed steps
    step = timing["median_s"]
    return {
        "bench": "mfu", "matmul_peak_before": peak, "matmul_peak_after": peak_after, "matmul_peak_flops": best_peak,
        "tokens_per_step": tokens, "padded_tokens_per_step": padded, "response_tokens_per_step": resp,
        "mean_row_length": float(lengths.mean()), **timing, "params": params,
        "model_flops_issue": issue_flops, "model_flops_executed": executed, "model_flops_counted": counted,
        "achieved_flops_issue": issue_flops / step, "achieved_flops_executed": executed / step,
        "mfu_issue": issue_flops / step / best_peak, "mfu_executed": executed / step / best_peak,
        "formula_issue": "6 * P_total * T_real (+ 2 * P_total * T_forward_only = 0: reference cached)",
        "formula_executed": f"6*P_body*T_padded + {head_passes:.0f}*P_head*T_response "
                            "+ 12*layers*hidden*rows*T_width^2",
    }


if __name__ == "__main__":
    common.child_main(IMPLS, run)
