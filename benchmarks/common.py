"""Shared benchmark machinery: sizes, models, data, timing, memory, machine info, subprocesses.

Every measured configuration runs in a fresh subprocess (:func:`run_child`), so its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own. Inside the child, the set-up
(model build, reference pre-computation, trainer construction) runs first; then the kernel's
high-water mark is reset to the current RSS (``/proc/self/clear_refs`` = 5, Linux) so
``peak_rss_mb`` is the peak *during the timed training steps*, with whatever each
implementation keeps resident (a reference model, optimizer state, activations).
``peak_rss_incl_setup_mb`` is the peak before that reset.

Timing: ``warmup`` untimed calls, then ``repeats`` timed calls (``time.perf_counter``); the
result gives the median and the spread (min, max, IQR).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT_MARK = "BENCH_RESULT_JSON:"

#: Model and batch settings per size. ``report``: a ~58M-parameter Llama (see ``params`` in results).
#: ``gen_batch`` None: the generation harness's default batch size (``HFGenerator``).
SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(hidden=64, layers=2, heads=4, inter=128, vocab=None, seq=64, pairs=2, prompt=(8, 24),
                  response=(4, 24), warmup=1, repeats=2, gen_prompts=4, gen_new=6, gen_batch=4, gen_repeats=2,
                  mlc_langs=3, matmul_n=256),
    "report": dict(hidden=512, layers=8, heads=8, inter=1408, vocab=32000, seq=256, pairs=2, prompt=(64, 128),
                   response=(48, 128), warmup=1, repeats=5, gen_prompts=48, gen_new=24, gen_batch=None, gen_repeats=3,
                   mlc_langs=4, matmul_n=2048),
}
# Real model shapes (issue 19): the architectures' configs exactly as the released checkpoints'
# config.json (random seeded weights, nothing downloaded); special-token ids from the tiny tokenizer.
# One timed step after one warm-up step (a Gemma-3-shape step is tens of seconds on 2 shared cores).
_SHAPE_BATCH = dict(seq=256, pairs=2, prompt=(64, 128), response=(48, 128), warmup=1, repeats=1, gen_prompts=16,
                    gen_new=8, gen_batch=None, gen_repeats=1, mlc_langs=4, matmul_n=2048)
SIZES["smollm2"] = dict(
    arch="llama", config=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                              num_key_value_heads=3, head_dim=64, vocab_size=49152, hidden_act="silu",
                              max_position_embeddings=8192, rms_norm_eps=1e-5,
                              rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                              tie_word_embeddings=True, attention_bias=False, mlp_bias=False),
    **_SHAPE_BATCH)
SIZES["gemma3"] = dict(
    arch="gemma3_text", config=dict(
        hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
        head_dim=256, vocab_size=262144, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=32768,
        rms_norm_eps=1e-6, query_pre_attn_scalar=256, sliding_window=512,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        attn_logit_softcapping=None, final_logit_softcapping=None, tie_word_embeddings=True, attention_bias=False),
    **_SHAPE_BATCH)
#: Sizes that are real architectures' shapes (their own results folder and RESULTS.md table).
SHAPES = ("smollm2", "gemma3")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


# ----------------------------------------------------------------------------- machine

def cpu_model_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load average, library versions, torch threads."""
    import torch
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:  # pragma: no cover - trl is a dev dependency
        trl_version = None
    return {
        "cpu": cpu_model_name(), "cores": os.cpu_count(), "loadavg": list(os.getloadavg()),
        "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version,
        "threads": torch.get_num_threads(), "python": platform.python_version(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ----------------------------------------------------------------------------- memory

def peak_rss_mb() -> float:
    """This process's peak resident set size (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (read by getrusage) to the current RSS."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- timing

def summarize_times(times: list[float]) -> dict[str, Any]:
    """Median, min, max and inter-quartile range of ``times`` (seconds)."""
    ordered = sorted(times)
    if len(ordered) >= 2:
        q = statistics.quantiles(ordered, n=4, method="inclusive")
        q1, q3 = q[0], q[2]
    else:
        q1 = q3 = ordered[0]
    return {"times_s": times, "median_s": statistics.median(ordered), "min_s": ordered[0], "max_s": ordered[-1],
            "iqr_s": q3 - q1}


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[dict[str, Any], list[Any]]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; returns (summary, all results)."""
    results = []
    for _ in range(warmup):
        results.append(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        results.append(fn())
        times.append(time.perf_counter() - start)
    return summarize_times(times), results


# ----------------------------------------------------------------------------- model and data

def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def build_tokenizer():
    from polyalign.models import build_tiny_tokenizer

    return build_tiny_tokenizer()


def build_model(size: str, dtype: str, tokenizer: Any, seed: int = 0):
    """The benchmark Llama (eager attention, train mode) in ``dtype`` (``fp32`` | ``bf16``)."""
    import torch

    from polyalign.models import build_tiny_model

    s = SIZES[size]
    if "config" in s:
        model = build_shape_model(size, tokenizer, seed)
    else:
        model = build_tiny_model("llama", tokenizer, hidden_size=s["hidden"], num_layers=s["layers"],
                                 num_heads=s["heads"], intermediate_size=s["inter"], vocab_size=s["vocab"], seed=seed)
    model = model.to(getattr(torch, DTYPES[dtype]))
    model.train()
    return model


def build_shape_model(size: str, tokenizer: Any, seed: int = 0):
    """A real architecture's shape (``SIZES[size]["config"]``) with seeded random weights, float32, eager
    attention (as the tiny factory: exact with left padding; the same on every side of a comparison)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    s = SIZES[size]
    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM),
                                 "gemma3_text": (Gemma3TextConfig, Gemma3ForCausalLM)}[s["arch"]]
    config = config_class(**s["config"], pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.float()


def count_params(model: Any) -> dict[str, int]:
    # ``parameters()`` yields a tied embedding once: the body is what is left after it (and an untied head).
    total = sum(p.numel() for p in model.parameters())
    embed_w, head_w = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    tied = embed_w is head_w
    body = total - embed_w.numel() - (0 if tied else head_w.numel())
    return {"total": total, "input_embedding": embed_w.numel(), "lm_head": head_w.numel(), "body": body,
            "tied": tied}


def random_ids(rng: random.Random, n: int, vocab: int, low: int = 300) -> list[int]:
    """``n`` random ordinary token ids (above the byte and special tokens of the tiny tokenizer)."""
    return [rng.randrange(low, vocab) for _ in range(n)]


def preference_examples(size: str, vocab: int, n: int, seed: int = 0, eos: int | None = None) -> list[dict[str, Any]]:
    """``n`` tokenised pairs ``{id, language, prompt_input_ids, chosen_input_ids, rejected_input_ids}``.

    Prompt and response lengths are uniform in the size's ranges, capped so prompt+response
    fits ``seq``; chosen and rejected lengths differ, so the batch has padding as real data does.
    """
    s = SIZES[size]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = rng.randint(*s["prompt"])
        cap = s["seq"] - p
        c, r = (min(cap, rng.randint(*s["response"])) for _ in range(2))
        chosen = random_ids(rng, c - 1, vocab) + ([eos] if eos is not None else [rng.randrange(300, vocab)])
        rejected = random_ids(rng, r - 1, vocab) + ([eos] if eos is not None else [rng.randrange(300, vocab)])
        out.append({"id": f"ex{seed}-{i}", "language": "xx", "prompt_input_ids": random_ids(rng, p, vocab),
                    "chosen_input_ids": chosen, "rejected_input_ids": rejected})
    return out


def optimizer_for(model: Any):
    import torch

    # Same optimizer for every implementation: the one transformers 5's Trainer builds by default
    # (``optim="adamw_torch_fused"``, so polyalign's, TRL's and LLaMA-Factory's trainers alike),
    # small learning rate. BENCH_OPTIM=foreach selects the multi-tensor AdamW of earlier reports.
    fused = os.environ.get("BENCH_OPTIM", "fused") == "fused"
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5,
                             fused=fused, foreach=None if fused else True)


def polyalign_config(tmp: str, **kw: Any):
    from polyalign.training.config import PolyalignConfig

    return PolyalignConfig(output_dir=tmp, use_cpu=True, report_to=[], **kw)


def clone_model(model: Any):
    return copy.deepcopy(model)


# ----------------------------------------------------------------------------- child processes

def child_parser(impls: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=impls, required=True)
    parser.add_argument("--size", choices=list(SIZES), default="quick")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="add a torch.profiler table of one step")
    return parser


def child_main(impls: list[str], run: Callable[[argparse.Namespace], dict[str, Any]]) -> None:
    """Entry point of a benchmark module run as a child: measure one configuration, print JSON."""
    args = child_parser(impls).parse_args()
    set_threads(args.threads)
    result = run(args)
    result.update(impl=args.impl, size=args.size, dtype=args.dtype, machine=machine_info())
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_child(module: str, impl: str, size: str, dtype: str, threads: int, *, profile: bool = False,
              timeout: float = 1200.0) -> dict[str, Any]:
    """Run ``python -m benchmarks.<module> --impl ...`` in a fresh process; return its result dict."""
    cmd = [sys.executable, "-m", f"benchmarks.{module}", "--impl", impl, "--size", size, "--dtype", dtype,
           "--threads", str(threads)] + (["--profile"] if profile else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
            result["wall_s"] = time.perf_counter() - start
            return result
    raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def profile_table(fn: Callable[[], Any], rows: int = 15) -> str:
    """``torch.profiler`` table (CPU time, top ``rows`` ops) of one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="cpu_time_total", row_limit=rows, max_name_column_width=40)


def counted_flops(fn: Callable[[], Any]) -> int:
    """Matmul-class FLOPs (mm, bmm, addmm, attention kernels; forward and backward) of one call of
    ``fn``, counted by ``torch.utils.flop_counter.FlopCounterMode`` from the ops that really run.
    Element-wise work (softmax, norms, the optimizer update) is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())
