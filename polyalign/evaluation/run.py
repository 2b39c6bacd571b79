"""The evaluation pipeline: benchmark -> generation -> judging/scoring -> metrics -> outputs.

:func:`evaluate` writes into ``out_dir``:

- ``generations.jsonl`` and ``judgments.jsonl``: resumable stores (see
  :mod:`polyalign.evaluation.store`); a rerun with the same settings skips finished work,
  a rerun with other settings is refused.
- ``results.json``: ``{"settings", "model", "data", "metrics": {"per_language",
  "summary"}, "run", ...}`` (docs/architecture.md "Evaluation outputs"), written atomically.
- ``results.md``: the per-language table with mean / std / min / max rows.

Judge (safety) or scorer (toxicity) failures are not stored, so a rerun retries them;
they are counted in ``run.judge_errors`` and the metrics per language (``n_error``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polyalign.data.records import EvalPrompt
from polyalign.errors import UserError
from polyalign.evaluation.benchmarks import BenchmarkSpec, get_benchmark, read_benchmark, resolve_data_path, select_prompts
from polyalign.evaluation.fingerprints import data_fingerprint, model_fingerprint, redact
from polyalign.evaluation.generation import GenerationSettings, HFGenerator, VLLMGenerator, make_tasks, run_generation
from polyalign.evaluation.results import compute_metrics, render_markdown
from polyalign.evaluation.store import JsonlStore, new_run_id
from polyalign.io import atomic_write_json, atomic_write_text, text_fingerprint

GENERATIONS, JUDGMENTS, RESULTS_JSON, RESULTS_MD = "generations.jsonl", "judgments.jsonl", "results.json", "results.md"


def _log(message: str) -> None:
    print(f"polyalign eval: {message}", file=sys.stderr, flush=True)


def generation_settings(spec: BenchmarkSpec, seed: int = 0, **overrides: Any) -> GenerationSettings:
    """The benchmark's protocol defaults with the non-``None`` overrides applied."""
    values = {**spec.generation, **{k: v for k, v in overrides.items() if v is not None}, "seed": seed}
    try:
        return GenerationSettings(**values).validate()
    except TypeError as exc:
        raise UserError(f"unknown generation setting: {exc}", field="generation") from None


def _load_model(model_or_path: Any, tokenizer: Any, adapter: str | Path | None, *, dtype: Any, device: Any,
                trust_remote_code: bool) -> tuple[Any, Any, str | None]:
    source = None
    if isinstance(model_or_path, (str, Path)):
        from polyalign.models import load_model_and_tokenizer

        source = str(model_or_path)
        model, loaded_tok = load_model_and_tokenizer(source, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        tokenizer = tokenizer if tokenizer is not None else loaded_tok
    else:
        model = model_or_path
        if tokenizer is None:
            raise UserError("an in-memory model needs its tokenizer (tokenizer=...)", field="tokenizer")
        if device is not None:
            model = model.to(device)
    if adapter is not None:
        if not Path(adapter).is_dir():
            raise UserError("no such adapter folder", file=adapter, field="adapter")
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load adapter: {str(exc).splitlines()[0]}", file=adapter, field="adapter") from None
    model.eval()
    return model, tokenizer, source


def build_judge(kind: str, name: str, options: dict[str, Any]) -> Any:
    """A toxicity scorer (``kind == "toxicity"``) or a safety judge, by name."""
    from polyalign.evaluation.judges import get_judge, get_scorer

    return get_scorer(name, **options) if kind == "toxicity" else get_judge(name, **options)


def _judge_stage(kind: str, worker: Any, prompts: Sequence[EvalPrompt], generations: list[dict[str, Any]],
                 store: JsonlStore, *, batch_size: int, progress: bool) -> dict[str, int]:
    """Judge (safety) or score (toxicity) every generation not yet in ``store``."""
    from tqdm import tqdm

    from polyalign.evaluation.judges import JudgeInput

    by_id = {p.id: p for p in prompts}
    pending = [g for g in generations if (g["id"], g["sample"]) not in store]
    errors = 0
    bar = tqdm(total=len(generations), initial=len(generations) - len(pending), desc="judging" if kind == "safety" else "scoring",
               unit="item", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            if kind == "toxicity":
                scores = worker.score([g["text"] for g in chunk], [g["language"] for g in chunk])
                rows = [{"id": g["id"], "sample": g["sample"], "language": g["language"], "score": s, "scorer": worker.name}
                        for g, s in zip(chunk, scores, strict=True)]
                good = [r for r in rows if r["score"] is not None]
            else:
                inputs = [JudgeInput(prompt=by_id[g["id"]].text, response=g["text"], language=g["language"], id=f"{g['id']}#{g['sample']}")
                          for g in chunk]
                judgments = worker.judge(inputs)
                rows = [{"id": g["id"], "sample": g["sample"], "language": g["language"], **j.to_dict()}
                        for g, j in zip(chunk, judgments, strict=True)]
                good = [r for r in rows if r.get("label") != "error"]
            errors += len(rows) - len(good)
            store.append(good)  # failures are not stored: the next run retries them
            bar.update(len(chunk))
    finally:
        bar.close()
    return {"judged": len(pending) - errors, "judge_reused": len(generations) - len(pending), "judge_errors": errors}


def evaluate(
    model_or_path: Any,
    benchmark: str | BenchmarkSpec,
    *,
    out_dir: str | Path,
    tokenizer: Any = None,
    adapter: str | Path | None = None,
    data: str | Path | None = None,
    languages: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    column_map: dict[str, str] | None = None,
    language: str | None = None,
    judge: str | None = None,
    judge_options: dict[str, Any] | None = None,
    max_new_tokens: int | None = None,
    num_samples: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    chat_template: bool | None = None,
    system_prompt: str | None = None,
    batch_size: int = 8,
    judge_batch_size: int = 32,
    backend: str = "hf",
    dtype: Any = None,
    device: Any = None,
    trust_remote_code: bool = False,
    scorer_model: str | Path | None = None,
    progress: bool = True,
    batch_delay: float = 0.0,
) -> dict[str, Any]:
    """Run one benchmark end to end and return the results dict (also written to ``out_dir``).

    ``model_or_path``: a model folder / cached hub id (loaded with
    :func:`polyalign.models.load_model_and_tokenizer`) or an in-memory model (then pass
    ``tokenizer``). Generation overrides left ``None`` take the benchmark's protocol
    defaults. ``judge`` defaults to the benchmark's (a judge name for safety benchmarks,
    a toxicity scorer name for toxicity ones); ``scorer_model`` adds conditional perplexity.
    """
    started = time.time()
    spec = get_benchmark(benchmark)
    out = Path(out_dir)
    if backend not in ("hf", "vllm"):
        raise UserError(f"unknown backend {backend!r}; use hf or vllm", field="backend")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number, got {limit}", field="limit")
    data_path = resolve_data_path(spec, data)
    all_prompts, skipped_rows = read_benchmark(spec, data_path, column_map=column_map, language=language)
    prompts = select_prompts(spec, data_path, all_prompts, languages=list(languages) if languages else None,
                             categories=list(categories) if categories else None, limit=limit, seed=seed)
    settings = generation_settings(spec, seed, max_new_tokens=max_new_tokens, num_samples=num_samples, temperature=temperature,
                                   top_p=top_p, chat_template=chat_template, system_prompt=system_prompt)
    judge_name = judge or spec.judge
    judge_options = dict(judge_options or {})
    if spec.kind == "toxicity" and judge_name == "classifier" and "model" not in judge_options:
        raise UserError("the classifier scorer needs a sequence-classification model: --judge-option model=PATH "
                        "(or use --judge perspective)", field="judge")
    worker = build_judge(spec.kind, judge_name, judge_options)  # before generating: a bad judge fails fast
    run_id = new_run_id()

    was_training = False
    if backend == "vllm":
        if not isinstance(model_or_path, (str, Path)):
            raise UserError("the vLLM backend needs a model path, not an in-memory model", field="backend")
        generator: Any = VLLMGenerator(str(model_or_path), settings, batch_size=batch_size, adapter=str(adapter) if adapter else None,
                                       trust_remote_code=trust_remote_code, dtype=str(dtype) if dtype else "auto")
        tok = generator.tokenizer
        model_fp = {"source": str(model_or_path), "adapter": str(adapter) if adapter else None, "backend": "vllm",
                    "identity": {"path_or_id": str(model_or_path)}}
    else:
        was_training = bool(getattr(model_or_path, "training", False))  # an in-memory model gets its mode back
        model, tok, source = _load_model(model_or_path, tokenizer, adapter, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        generator = HFGenerator(model, tok, settings, batch_size=batch_size)
        model_fp = model_fingerprint(model, source, adapter)

    gen_settings = {"benchmark": spec.name, "generation": settings.to_dict(), "backend": backend, "model": model_fp["identity"]}
    gen_fp = text_fingerprint(gen_settings)
    tasks = make_tasks(tok, prompts, settings)
    n_languages = len({p.language for p in prompts})
    _log(f"{spec.name}: {len(prompts)} prompts x {settings.num_samples} sample(s) in {n_languages} language(s) -> {out}")
    with JsonlStore(out / GENERATIONS, kind="generations", fingerprint=gen_fp, settings=gen_settings, run_id=run_id) as gen_store:
        try:
            gen_stats = run_generation(generator, tasks, gen_store, progress=progress, batch_delay=batch_delay)
        finally:
            if backend == "hf" and was_training:
                model.train()
        generations = [gen_store.get(t.key) for t in tasks]
        gen_torn = gen_store.recovered_torn_lines
    _log(f"generated {gen_stats['generated']} new, reused {gen_stats['reused']} from the store (run {run_id})")

    # The judge's own settings() (never secrets) identify its verdicts.
    judge_settings = {"generations": gen_fp, "kind": spec.kind, "judge": worker.settings()}
    hint = (f"to judge the same generations differently, copy {GENERATIONS} into a new --out folder and rerun there "
            "(generation is then skipped)")
    with JsonlStore(out / JUDGMENTS, kind="judgments", fingerprint=text_fingerprint(judge_settings), settings=judge_settings,
                    run_id=run_id, hint=hint) as judge_store:
        judge_stats = _judge_stage(spec.kind, worker, prompts, generations, judge_store,
                                   batch_size=judge_batch_size, progress=progress)
        judgments = {(r["id"], r["sample"]): r for r in judge_store.records()}
        judge_torn = judge_store.recovered_torn_lines
    if judge_stats["judge_errors"]:
        _log(f"{judge_stats['judge_errors']} item(s) could not be judged (counted as n_error; rerun to retry)")

    metrics = compute_metrics(spec.kind, prompts, generations, judgments, scorer_model=scorer_model, device=device,
                              trust_remote_code=trust_remote_code)
    results = {
        "benchmark": spec.to_dict(),
        "settings": {
            "generation": settings.to_dict(), "backend": backend, "batch_size": batch_size,
            "judge": {"name": judge_name, "kind": "scorer" if spec.kind == "toxicity" else "judge", "options": redact(judge_options),
                      "settings": worker.settings()},
            "selection": {"languages": list(languages) if languages else None, "categories": list(categories) if categories else None,
                          "limit": limit, "seed": seed, "column_map": column_map, "language": language},
            "scorer_model": str(scorer_model) if scorer_model else None,
            "fingerprint": gen_fp,
        },
        "model": model_fp,
        "data": {**data_fingerprint(data_path, prompts), "n_read": len(all_prompts), "skipped_rows": skipped_rows},
        "metrics": metrics,
        "headline": spec.headline,
        "run": {"run_id": run_id, **gen_stats, **judge_stats, "recovered_torn_lines": gen_torn + judge_torn,
                "seconds": round(time.time() - started, 3)},
    }
    atomic_write_json(out / RESULTS_JSON, results)
    atomic_write_text(out / RESULTS_MD, render_markdown(results))
    _log(f"wrote {out / RESULTS_JSON} and {out / RESULTS_MD}")
    return results

