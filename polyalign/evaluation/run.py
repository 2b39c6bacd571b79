"""The evaluation pipeline: benchmark -> generation -> judging/scoring -> metrics -> outputs.

:func:`evaluate` runs the suites asked for (``suites``: ``safety`` (default), ``utility``,
or both) with the model loaded once, and writes into ``out_dir``:

- safety: ``generations.jsonl`` and ``judgments.jsonl``, resumable stores (see
  :mod:`polyalign.store`); a rerun with the same settings skips finished work,
  a rerun with other settings is refused.
- utility (:mod:`polyalign.evaluation.suites`): ``utility_items.jsonl`` (per-item rows,
  recomputed on every run: deterministic and cheap), and for over-refusal
  ``over_refusal/generations.jsonl`` + ``over_refusal/judgments.jsonl`` (resumable).
- ``results.json``: ``{"suites", "benchmark", "settings", "model", "data", "metrics":
  {"per_language", "summary"}, "headline", "utility", "run"}`` (docs/architecture.md
  "Evaluation outputs"), written atomically. ``utility`` is ``null`` without the utility
  suite; with it, ``metrics.per_language[lang]`` also holds ``accuracy``,
  ``n_utility_tasks`` and ``over_refusal`` (exact keys: :mod:`polyalign.evaluation.suites`).
  ``benchmark`` and ``data`` are ``null`` for ``suites=("utility",)``, whose headline
  is ``accuracy``.
- ``results.md``: the per-language table with mean / std / min / max rows.

Judge (safety) or scorer (toxicity) failures are not stored, so a rerun retries them;
they are counted in ``run.judge_errors`` and the metrics per language (``n_error``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polyalign.errors import UserError
from polyalign.evaluation import suites as S
from polyalign.evaluation.benchmarks import BenchmarkSpec, get_benchmark, read_benchmark, resolve_data_path, select_prompts
from polyalign.evaluation.agreement import agreement_section
from polyalign.evaluation.consistency import consistency_section
from polyalign.evaluation.fingerprints import adapter_identity, data_fingerprint, model_fingerprint, redact, source_identity
from polyalign.evaluation.generation import DEFAULT_BATCH_SIZE, HFGenerator
from polyalign.evaluation.results import compute_metrics, render_markdown
from polyalign.evaluation.stages import build_judge, generate_and_judge, generation_settings, load_model, log
from polyalign.evaluation.metrics import error_share_violation, summarize
from polyalign.store import new_run_id
from polyalign.io import atomic_write_json, atomic_write_jsonl, atomic_write_text

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
DEFAULT_MAX_JUDGE_ERROR_SHARE = 0.05
__all__ = ["RESULTS_JSON", "RESULTS_MD", "build_judge", "evaluate", "generation_settings"]


def evaluate(
    model_or_path: Any,
    benchmark: str | BenchmarkSpec | None,
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
    batch_size: int | None = None,
    judge_batch_size: int = 32,
    backend: str = "hf",
    dtype: Any = None,
    device: Any = None,
    trust_remote_code: bool = False,
    scorer_model: str | Path | None = None,
    progress: bool = True,
    batch_delay: float = 0.0,
    suites: str | Sequence[str] | None = None,
    utility_tasks: Sequence[Any] = (),
    lm_eval_tasks: Sequence[str] = (),
    lm_eval_include: str | Path | None = None,
    utility_limit: int | None = None,
    benign_benchmark: str | Path | None = None,
    benign_judge: str | None = None,
    max_judge_error_share: float = DEFAULT_MAX_JUDGE_ERROR_SHARE,
) -> dict[str, Any]:
    """Run the suites end to end and return the results dict (also written to ``out_dir``).

    ``model_or_path``: a model folder / cached hub id (loaded with
    :func:`polyalign.models.load_model_and_tokenizer`) or an in-memory model (then pass
    ``tokenizer``). Generation overrides left ``None`` take the benchmark's protocol
    defaults. ``judge`` defaults to the benchmark's (a judge name for safety benchmarks,
    a toxicity scorer name for toxicity ones); ``scorer_model`` adds conditional perplexity.

    Utility (``suites`` containing ``"utility"``; needs the ``hf`` backend): ``utility_tasks``
    (names, task YAMLs or JSONL/CSV files), ``lm_eval_tasks`` (+ ``lm_eval_include``),
    ``utility_limit`` (items per language; also caps the benign prompts, else ``limit`` does)
    and ``benign_benchmark`` (over-refusal; judged by ``benign_judge``, default the safety
    judge with ``judge_options``, else ``refusal``). At least one of them is needed.

    ``max_judge_error_share``: when more than this share of a language's items could not be
    judged (safety judges, over-refusal included), the results are still written (with ``unsafe_rate_worst``), then the run
    fails with a :class:`UserError` (exit 2): a rate over the few items a provider agreed to
    judge is not a result.
    """
    started = time.time()
    suite_names = S.parse_suites(suites)
    out = Path(out_dir)
    if backend not in ("hf", "vllm"):
        raise UserError(f"unknown backend {backend!r}; use hf or vllm", field="backend")
    if not 0.0 <= max_judge_error_share <= 1.0:
        raise UserError(f"max_judge_error_share must be in [0, 1], got {max_judge_error_share}", field="max_judge_error_share")
    for name, value in (("limit", limit), ("utility_limit", utility_limit)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be a positive number, got {value}", field=name)
    overrides = dict(max_new_tokens=max_new_tokens, num_samples=num_samples, temperature=temperature, top_p=top_p,
                     chat_template=chat_template, system_prompt=system_prompt)
    judge_options = dict(judge_options or {})
    run_id = new_run_id()
    run_stats: dict[str, Any] = {"run_id": run_id}

    # Everything a user can get wrong is checked before the model is loaded.
    spec = prompts = settings = worker = data_path = judge_name = None
    extra_workers: list[Any] = []
    judge_names: list[str] = []
    per_judge_options: list[dict[str, Any]] = []
    if "safety" in suite_names:
        if benchmark is None:
            raise UserError("the safety suite needs a benchmark", field="benchmark")
        spec = get_benchmark(benchmark)
        data_path = resolve_data_path(spec, data)
        benchmark_read = read_benchmark(spec, data_path, column_map=column_map, language=language)
        all_prompts, skipped_rows = benchmark_read.prompts, benchmark_read.skipped
        prompts = select_prompts(spec, data_path, all_prompts, languages=list(languages) if languages else None,
                                 categories=list(categories) if categories else None, limit=limit, seed=seed)
        settings = generation_settings(spec, seed, **overrides)
        judge_names, per_judge_options = split_judges(judge or spec.judge, judge_options)
        if len(judge_names) > 1 and spec.kind != "safety":
            raise UserError("several judges (judge agreement) need a safety benchmark, not a toxicity one", field="judge")
        judge_name, judge_options = judge_names[0], per_judge_options[0]
        if spec.kind == "toxicity" and judge_name == "classifier" and "model" not in judge_options:
            raise UserError("the classifier scorer needs a sequence-classification model: --judge-option model=PATH, e.g. "
                            "model=textdetox/xlmr-large-toxicity-classifier-v2 (Perspective is optional: --judge "
                            "perspective; it goes offline after 2026)", field="judge")
        worker = build_judge(spec.kind, judge_name, judge_options)  # before generating: a bad judge fails fast
        extra_workers = [build_judge(spec.kind, n, o) for n, o in zip(judge_names[1:], per_judge_options[1:])]
    elif benchmark is not None:
        log(f"--suite {','.join(suite_names)}: benchmark {benchmark} is not run (add safety to the suites)")
    benign = None
    if "utility" in suite_names:
        benign = _prepare_utility(backend, utility_tasks, lm_eval_tasks, benign_benchmark, benign_judge, data=data,
                                  languages=languages, limit=utility_limit or limit, seed=seed, overrides=overrides,
                                  # a toxicity scorer cannot judge refusals: then the default refusal judge
                                  safety_judge=((judge.split(",")[0].strip() if judge else None) if spec is None
                                                else judge_name if spec.kind == "safety" else None),
                                  judge_options=judge_options)

    was_training = False
    if backend == "vllm":
        from polyalign.evaluation.generation_vllm import DEFAULT_VLLM_BATCH_SIZE, VLLMGenerator

        batch_size = batch_size or DEFAULT_VLLM_BATCH_SIZE
        if not isinstance(model_or_path, (str, Path)):
            raise UserError("the vLLM backend needs a model path, not an in-memory model", field="backend")
        generator: Any = VLLMGenerator(str(model_or_path), settings, batch_size=batch_size, adapter=str(adapter) if adapter else None,
                                       trust_remote_code=trust_remote_code, dtype=str(dtype) if dtype else "auto")
        tok, model = generator.tokenizer, None
        identity = source_identity(model_or_path)  # the weights' content, never the path alone
        if adapter:
            identity["adapter"] = adapter_identity(adapter)
        model_fp = {"source": str(model_or_path), "adapter": str(adapter) if adapter else None, "backend": "vllm",
                    "identity": identity}
    else:
        batch_size = batch_size or DEFAULT_BATCH_SIZE
        was_training = bool(getattr(model_or_path, "training", False))  # an in-memory model gets its mode back
        model, tok, source = load_model(model_or_path, tokenizer, adapter, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        generator = HFGenerator(model, tok, settings, batch_size=batch_size) if settings is not None else None
        model_fp = model_fingerprint(model, source, adapter)

    per_language: dict[str, dict[str, Any]] = {}
    utility = consistency = agreement = None
    try:
        if spec is not None:
            done = generate_and_judge(kind=spec.kind, name=spec.name, prompts=prompts, settings=settings, generator=generator,
                                      tokenizer=tok, model_identity=model_fp["identity"], backend=backend, worker=worker,
                                      folder=out, run_id=run_id, judge_batch_size=judge_batch_size, progress=progress,
                                      batch_delay=batch_delay, extra_workers=extra_workers)
            run_stats.update(done["stats"])
            # --trust-remote-code is for the evaluated model only, never for the scorer model.
            metrics = compute_metrics(spec.kind, prompts, done["generations"], done["judgments"], scorer_model=scorer_model,
                                      device=device, trust_remote_code=False, row_counts=benchmark_read.rows)
            per_language = metrics["per_language"]
            _add_prompt_lengths(per_language, done["prompt_lengths"], model, settings, tok, prompts)
            if spec.kind == "safety":  # parallel benchmarks only (else None); from the stored verdicts
                consistency = consistency_section(prompts, done["generations"], done["judgments"], out)
                agreement = agreement_section(done["generations"], [(judge_name, done["judgments"])] + [
                    (o["name"], o["judgments"]) for o in done["other_judges"]])
                if agreement:
                    agreement["files"] = [done["judgments_file"]] + [o["file"] for o in done["other_judges"]]
                    agreement["run"] = {o["name"]: o["stats"] for o in done["other_judges"]}
        if "utility" in suite_names:
            utility = _run_utility(model, tok, model_fp, benign, out=out, run_id=run_id, utility_tasks=utility_tasks,
                                   lm_eval_tasks=lm_eval_tasks, lm_eval_include=lm_eval_include, languages=languages,
                                   utility_limit=utility_limit, batch_size=batch_size, judge_batch_size=judge_batch_size,
                                   seed=seed, progress=progress, batch_delay=batch_delay)
            per_language = S.fold_headline(per_language, utility)
    finally:
        if model is not None and was_training:
            model.train()

    results = {
        "suites": list(suite_names),
        "benchmark": spec.to_dict() if spec else None,
        "settings": {
            "generation": settings.to_dict() if settings else None, "backend": backend, "batch_size": batch_size,
            "judge": ({"name": judge_name, "kind": "scorer" if spec.kind == "toxicity" else "judge",
                       "options": redact(judge_options), "settings": worker.settings()} if spec else None),
            # every judge, the primary (headline metrics) first; more than one -> results["agreement"]
            "judges": ([{"name": n, "options": redact(o), "settings": w.settings()} for n, o, w in
                        zip(judge_names, per_judge_options, [worker, *extra_workers])] if spec else None),
            "selection": {"languages": list(languages) if languages else None, "categories": list(categories) if categories else None,
                          "limit": limit, "seed": seed, "column_map": column_map, "language": language},
            "scorer_model": str(scorer_model) if scorer_model else None,
            "fingerprint": done["fingerprint"] if spec else None,
            "utility": _utility_settings(utility_tasks, lm_eval_tasks, lm_eval_include, utility_limit, benign) if utility else None,
        },
        "model": model_fp,
        "data": ({**data_fingerprint(data_path, prompts), "n_read": len(all_prompts), "skipped_rows": skipped_rows}
                 if spec else None),
        "metrics": {"per_language": per_language, "summary": summarize(per_language)},
        "headline": spec.headline if spec else "accuracy",
        "utility": utility,
        "consistency": consistency,
        "agreement": agreement,
        "run": {**run_stats, "seconds": round(time.time() - started, 3)},
    }
    atomic_write_json(out / RESULTS_JSON, results)
    atomic_write_text(out / RESULTS_MD, render_markdown(results))
    log(f"wrote {out / RESULTS_JSON} and {out / RESULTS_MD}")
    violation = error_share_violation(per_language, max_judge_error_share) if spec and spec.kind == "safety" else None
    over = (utility or {}).get("over_refusal")
    if violation is None and over:
        violation = error_share_violation(over["per_language"], max_judge_error_share)
    if violation:
        raise UserError(violation, file=out / RESULTS_JSON, field="max_judge_error_share")
    return results


def _add_prompt_lengths(per_language: dict[str, dict[str, Any]], lengths: list[tuple[str, int]], model: Any,
                        settings: Any, tokenizer: Any, prompts: Sequence[Any]) -> None:
    """Per language: the tokenizer's fertility on the prompts (:mod:`polyalign.data.fertility`), the
    rendered prompts' token counts and how many leave less than max_new_tokens of context."""
    from polyalign.data.fertility import context_length, fertility, prompt_length_stats

    texts: dict[str, list[str]] = {}
    for p in prompts:
        texts.setdefault(p.language, []).append(p.text)
    for lang, row in fertility(tokenizer, texts).items():
        per_language.setdefault(lang, {}).update({k: row[k] for k in ("tokens_per_char", "tokens_per_word", "words_meaningful",
                                                                      "tokens_per_text", "relative_tokens")})

    context = context_length(model) if model is not None else None
    room = None if context is None else context - settings.max_new_tokens
    if room is not None and room < 1:
        log(f"max_new_tokens {settings.max_new_tokens} fills the model's whole context ({context} tokens)")
    stats = prompt_length_stats([lang for lang, _ in lengths], [n for _, n in lengths], max_prompt_tokens=room)
    for lang, row in stats.items():
        per_language.setdefault(lang, {}).update(row)
        if row["n_prompts_over_context"]:
            log(f"{lang}: {row['n_prompts_over_context']} prompt(s) longer than the {room} tokens the context leaves "
                f"(context {context} - max_new_tokens {settings.max_new_tokens}); counted in n_prompts_over_context")


def split_judges(judge: str, options: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """``"a,b"`` -> ``([a, b], [options of a, options of b])``.

    An option ``NAME.key`` goes to judge ``NAME`` only; a plain ``key`` goes to the primary
    (first) judge, as it did when there was one judge.
    """
    names = [n.strip() for n in judge.split(",")]
    if not all(names):
        raise UserError(f"expected judge names separated by commas, got {judge!r}", field="judge")
    per = [dict() for _ in names]
    for key, value in options.items():
        target, dot, rest = key.partition(".")
        if dot and target in names:
            for i, n in enumerate(names):  # a judge named twice gets the option in each position
                if n == target:
                    per[i][rest] = value
        elif dot and rest and len(names) > 1:
            raise UserError(f"judge option {key!r} names no judge of --judge {judge}", field="judge_options")
        else:
            per[0][key] = value
    return names, per


def _prepare_utility(backend: str, utility_tasks: Sequence[Any], lm_eval_tasks: Sequence[str], benign_benchmark: Any,
                     benign_judge: str | None, *, data: Any, languages: Sequence[str] | None, limit: int | None, seed: int,
                     overrides: dict[str, Any], safety_judge: str | None, judge_options: dict[str, Any]) -> dict[str, Any] | None:
    """Check the utility inputs (tasks resolve, benign set reads, judge builds); the benign plan or None."""
    from polyalign.evaluation.utility import resolve_task

    if backend != "hf":
        raise UserError("the utility suite needs the hf backend (it scores log-likelihoods)", field="backend")
    if not utility_tasks and not lm_eval_tasks and benign_benchmark is None:
        raise UserError("the utility suite needs --utility-task, --lm-eval-tasks and/or --benign-benchmark", field="suite")
    for task in utility_tasks:
        resolve_task(task)
    if lm_eval_tasks:
        from polyalign.evaluation.utility.lm_eval_bridge import require_lm_eval

        require_lm_eval()
    if benign_benchmark is None:
        return None
    spec, path = S.resolve_benign(benign_benchmark, data)
    prompts, missing, info = S.benign_prompts(spec, path, languages=languages, limit=limit, seed=seed)
    if missing:
        log(f"over-refusal: the benign set has no prompts in {', '.join(missing)} (no over_refusal there)")
    name = benign_judge or safety_judge or "refusal"
    # The safety judge's options go with it; another judge gets its defaults.
    options = judge_options if safety_judge and name == safety_judge else {}
    worker = build_judge("safety", name, options)
    return {"spec": spec, "prompts": prompts, "missing": missing, "data": info, "judge": name, "options": options,
            "worker": worker, "settings": generation_settings(spec, seed, **overrides)}


def _run_utility(model: Any, tok: Any, model_fp: dict[str, Any], benign: dict[str, Any] | None, *, out: Path, run_id: str,
                 utility_tasks: Sequence[Any], lm_eval_tasks: Sequence[str], lm_eval_include: Any, languages: Any,
                 utility_limit: int | None, batch_size: int, judge_batch_size: int, seed: int, progress: bool,
                 batch_delay: float) -> dict[str, Any]:
    tasks, items = S.run_tasks(model, tok, utility_tasks, languages=languages, limit=utility_limit, batch_size=batch_size)
    for name, result in tasks.items():
        log(f"utility {name}: {result['n_items']} item(s) in {len(result['per_language'])} language(s)")
    lm_eval = None
    if lm_eval_tasks:
        lm_eval = S.run_lm_eval_tasks(model, tok, lm_eval_tasks, include=lm_eval_include, limit=utility_limit,
                                      batch_size=batch_size, seed=seed)
    over = None
    if benign is not None:
        spec, settings = benign["spec"], benign["settings"]
        done = generate_and_judge(kind="safety", name=spec.name, prompts=benign["prompts"], settings=settings,
                                  generator=HFGenerator(model, tok, settings, batch_size=batch_size), tokenizer=tok,
                                  model_identity=model_fp["identity"], backend="hf", worker=benign["worker"],
                                  folder=out / S.OVER_REFUSAL_DIR, run_id=run_id, judge_batch_size=judge_batch_size,
                                  progress=progress, batch_delay=batch_delay)
        per_language = S.over_refusal_metrics(done["generations"], done["judgments"])
        if all(m["n_refusal_known"] == 0 for m in per_language.values()):
            log(f"over-refusal: judge {benign['judge']!r} gave no refusal flags; try --benign-judge refusal")
        over = {"benchmark": spec.name, "judge": {"name": benign["judge"], "options": redact(benign["options"]),
                                                  "settings": benign["worker"].settings()},
                "generation": settings.to_dict(), "data": benign["data"], "per_language": per_language,
                "summary": summarize(per_language), "missing_languages": benign["missing"], "run": done["stats"]}
    atomic_write_jsonl(out / S.UTILITY_ITEMS, items)
    return S.utility_section(tasks, lm_eval, over)


def _utility_settings(utility_tasks: Sequence[Any], lm_eval_tasks: Sequence[str], lm_eval_include: Any,
                      utility_limit: int | None, benign: dict[str, Any] | None) -> dict[str, Any]:
    from polyalign.evaluation.utility import resolve_task

    return {"tasks": [resolve_task(t).to_dict() for t in utility_tasks], "lm_eval_tasks": list(lm_eval_tasks),
            "lm_eval_include": str(lm_eval_include) if lm_eval_include else None, "limit": utility_limit,
            "benign_benchmark": benign["spec"].name if benign else None}
