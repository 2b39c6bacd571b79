"""The evaluation pipeline: benchmark -> generation -> judging/scoring -> metrics -> outputs.

:func:`evaluate` takes an :class:`~polyalign.evaluation.config.EvalConfig` and runs three steps:
:func:`~polyalign.evaluation.plan.plan_eval` (every input checked, prompts read, judges built,
before the model is loaded), :func:`run_suites` (load the model once, generate and judge /
score, utility tasks) and :func:`write_results`. It runs the suites asked for (``suites``:
``safety`` (default), ``utility``, or both) and writes into ``out_dir``:

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyalign.data.fertility import context_length, fertility, prompt_length_stats
from polyalign.errors import UserError
from polyalign.evaluation import suites as S
from polyalign.evaluation.agreement import agreement_section
from polyalign.evaluation.config import EvalConfig
from polyalign.evaluation.consistency import consistency_section
from polyalign.evaluation.fingerprints import (
    adapter_identity,
    data_fingerprint,
    model_fingerprint,
    redact,
    source_identity,
)
from polyalign.evaluation.generation import DEFAULT_BATCH_SIZE, HFGenerator
from polyalign.evaluation.kinds import SAFETY
from polyalign.evaluation.metrics import error_share_violation, summarize
from polyalign.evaluation.plan import BenignPlan, EvalPlan, plan_eval
from polyalign.evaluation.results import compute_metrics, render_markdown
from polyalign.evaluation.stages import generate_and_judge, load_model, log
from polyalign.evaluation.utility.tasks import resolve_task
from polyalign.io import atomic_write_json, atomic_write_jsonl, atomic_write_text

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
__all__ = ["RESULTS_JSON", "RESULTS_MD", "EvalConfig", "evaluate", "run_suites", "write_results"]


def evaluate(config: EvalConfig, *, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Run the suites end to end and return the results dict (also written to ``config.out_dir``).

    ``model``: an in-memory model (then pass ``tokenizer``) or a model folder / cached hub id;
    default ``config.model`` (loaded with :func:`polyalign.models.load_model_and_tokenizer`).
    Generation settings left ``None`` take the benchmark's protocol defaults; ``judge``
    defaults to the benchmark's (a judge for safety benchmarks, a toxicity scorer for
    toxicity ones); ``scorer_model`` adds conditional perplexity. Every setting:
    :class:`~polyalign.evaluation.config.EvalConfig`.

    Utility (``suites`` containing ``"utility"``; needs the ``hf`` backend): ``utility_tasks``
    (names, task YAMLs or JSONL/CSV files), ``lm_eval_tasks`` (+ ``lm_eval_include``),
    ``utility_limit`` (items per language; also caps the benign prompts, else ``limit`` does)
    and ``benign_benchmark`` (over-refusal; judged by ``benign_judge``, default the safety
    judge with ``judge_options``, else ``refusal``). At least one of them is needed.

    ``max_judge_error_share``: when more than this share of a language's items could not be
    judged (safety judges, over-refusal included), the results are still written (with
    ``unsafe_rate_worst``), then the run fails with a :class:`UserError` (exit 2): a rate
    over the few items a provider agreed to judge is not a result.
    """
    started = time.time()
    model = model if model is not None else config.model
    if model is None:
        raise UserError("no model: set model (a folder or hub id) in the config, or pass evaluate(model=...)",
                        field="model")
    plan = plan_eval(config)
    outcome = run_suites(plan, model, tokenizer)
    return write_results(plan, outcome, started)


@dataclass
class Loaded:
    """The model as loaded for a run."""

    model: Any  # None with the vLLM backend
    tokenizer: Any
    generator: Any  # None without the benchmark part (utility only)
    fingerprint: dict[str, Any]  # results.json "model"
    batch_size: int


@dataclass
class Outcome:
    """What generating, judging and scoring produced (step 2), for :func:`write_results`."""

    loaded: Loaded
    per_language: dict[str, dict[str, Any]]
    run_stats: dict[str, Any]
    done: dict[str, Any] | None  # the benchmark's :func:`generate_and_judge` result
    utility: dict[str, Any] | None = None
    consistency: dict[str, Any] | None = None
    agreement: dict[str, Any] | None = None


def load_for_plan(plan: EvalPlan, model: Any, tokenizer: Any) -> Loaded:
    """Load the model (hf: in eval mode, adapter applied; vLLM: its engine) and its generator."""
    config = plan.config
    settings = plan.safety.settings if plan.safety else None
    if config.backend == "vllm":
        # vLLM is an optional extra: imported only for this backend.
        from polyalign.evaluation.generation_vllm import DEFAULT_VLLM_BATCH_SIZE, VLLMGenerator

        batch_size = config.batch_size or DEFAULT_VLLM_BATCH_SIZE
        if not isinstance(model, (str, Path)):
            raise UserError("the vLLM backend needs a model path, not an in-memory model", field="backend")
        adapter = config.adapter
        generator = VLLMGenerator(str(model), settings, batch_size=batch_size, adapter=adapter,
                                  trust_remote_code=config.trust_remote_code,
                                  dtype=str(config.dtype) if config.dtype else "auto")
        identity = source_identity(model)  # the weights' content, never the path alone
        if adapter:
            identity["adapter"] = adapter_identity(adapter)
        fingerprint = {"source": str(model), "adapter": adapter, "backend": "vllm", "identity": identity}
        return Loaded(None, generator.tokenizer, generator, fingerprint, batch_size)
    batch_size = config.batch_size or DEFAULT_BATCH_SIZE
    loaded, tok, source = load_model(model, tokenizer, config.adapter, dtype=config.dtype, device=config.device,
                                     trust_remote_code=config.trust_remote_code)
    generator = HFGenerator(loaded, tok, settings, batch_size=batch_size) if settings is not None else None
    return Loaded(loaded, tok, generator, model_fingerprint(loaded, source, config.adapter), batch_size)


def run_suites(plan: EvalPlan, model: Any, tokenizer: Any = None) -> Outcome:
    """Step 2: load the model once, generate and judge (or score) the benchmark, run the utility suite.

    An in-memory model that was training gets its mode back afterwards.
    """
    was_training = bool(getattr(model, "training", False))
    loaded = load_for_plan(plan, model, tokenizer)
    outcome = Outcome(loaded=loaded, per_language={}, run_stats={"run_id": plan.run_id}, done=None)
    try:
        if plan.safety is not None:
            _run_benchmark(plan, outcome)
        if plan.utility:
            outcome.utility = _run_utility(plan, loaded)
            outcome.per_language = S.fold_headline(outcome.per_language, outcome.utility)
    finally:
        if loaded.model is not None and was_training:
            loaded.model.train()
    return outcome


def _run_benchmark(plan: EvalPlan, outcome: Outcome) -> None:
    safety, config, loaded = plan.safety, plan.config, outcome.loaded
    assert safety is not None
    primary, *others = safety.judges
    done = generate_and_judge(kind=safety.kind, name=safety.spec.name, prompts=safety.prompts, settings=safety.settings,
                              generator=loaded.generator, tokenizer=loaded.tokenizer,
                              model_identity=loaded.fingerprint["identity"], backend=config.backend,
                              worker=primary.worker, folder=plan.out, run_id=plan.run_id,
                              judge_batch_size=config.judge_batch_size, progress=config.progress,
                              batch_delay=config.batch_delay, extra_workers=[j.worker for j in others])
    outcome.done = done
    outcome.run_stats.update(done["stats"])
    # --trust-remote-code is for the evaluated model only, never for the scorer model.
    metrics = compute_metrics(safety.kind, safety.prompts, done["generations"], done["judgments"],
                              scorer_model=config.scorer_model, device=config.device, trust_remote_code=False,
                              row_counts=safety.read.rows)
    outcome.per_language = metrics["per_language"]
    _add_prompt_lengths(outcome.per_language, done["prompt_lengths"], loaded.model, safety.settings, loaded.tokenizer,
                        safety.prompts)
    if safety.kind.verdicts:  # parallel benchmarks only (else None); from the stored verdicts
        outcome.consistency = consistency_section(safety.prompts, done["generations"], done["judgments"], plan.out)
        agreement = agreement_section(done["generations"], [(primary.name, done["judgments"])] + [
            (o["name"], o["judgments"]) for o in done["other_judges"]])
        if agreement:
            agreement["files"] = [done["judgments_file"]] + [o["file"] for o in done["other_judges"]]
            agreement["run"] = {o["name"]: o["stats"] for o in done["other_judges"]}
        outcome.agreement = agreement


def write_results(plan: EvalPlan, outcome: Outcome, started: float) -> dict[str, Any]:
    """Step 3: ``results.json`` and ``results.md`` (atomically); then the judge-error-share check."""
    config, safety, out = plan.config, plan.safety, plan.out
    per_language = outcome.per_language
    results = {
        "suites": list(config.suites),
        "benchmark": safety.spec.to_dict() if safety else None,
        "settings": _settings(plan, outcome),
        "model": outcome.loaded.fingerprint,
        "data": ({**data_fingerprint(safety.data_path, safety.prompts), "n_read": len(safety.read.prompts),
                  "skipped_rows": safety.read.skipped} if safety else None),
        "metrics": {"per_language": per_language, "summary": summarize(per_language)},
        "headline": safety.spec.headline if safety else "accuracy",
        "utility": outcome.utility,
        "consistency": outcome.consistency,
        "agreement": outcome.agreement,
        "run": {**outcome.run_stats, "seconds": round(time.time() - started, 3)},
    }
    atomic_write_json(out / RESULTS_JSON, results)
    atomic_write_text(out / RESULTS_MD, render_markdown(results))
    log(f"wrote {out / RESULTS_JSON} and {out / RESULTS_MD}")
    share = config.max_judge_error_share
    violation = error_share_violation(per_language, share) if safety and safety.kind.verdicts else None
    over = (outcome.utility or {}).get("over_refusal")
    if violation is None and over:
        violation = error_share_violation(over["per_language"], share)
    if violation:
        raise UserError(violation, file=out / RESULTS_JSON, field="max_judge_error_share")
    return results


def _settings(plan: EvalPlan, outcome: Outcome) -> dict[str, Any]:
    """results.json ``settings``: what was generated, judged and selected (options redacted)."""
    config, safety = plan.config, plan.safety
    judges = safety.judges if safety else []
    return {
        "generation": safety.settings.to_dict() if safety else None, "backend": config.backend,
        "batch_size": outcome.loaded.batch_size,
        "judge": ({"name": judges[0].name, "kind": safety.kind.worker_role, "options": redact(judges[0].options),
                   "settings": judges[0].worker.settings()} if safety else None),
        # every judge, the primary (headline metrics) first; more than one -> results["agreement"]
        "judges": ([{"name": j.name, "options": redact(j.options), "settings": j.worker.settings()} for j in judges]
                   if safety else None),
        "selection": {"languages": list(config.languages) if config.languages else None,
                      "categories": list(config.categories) if config.categories else None,
                      "limit": config.limit, "seed": config.seed, "column_map": config.column_map,
                      "language": config.language},
        "scorer_model": str(config.scorer_model) if config.scorer_model else None,
        "fingerprint": outcome.done["fingerprint"] if outcome.done else None,
        "utility": _utility_settings(config, plan.benign) if outcome.utility else None,
    }


def _add_prompt_lengths(per_language: dict[str, dict[str, Any]], lengths: list[tuple[str, int]], model: Any,
                        settings: Any, tokenizer: Any, prompts: Sequence[Any]) -> None:
    """Per language: the tokenizer's fertility on the prompts (:mod:`polyalign.data.fertility`), the
    rendered prompts' token counts and how many leave less than max_new_tokens of context."""
    texts: dict[str, list[str]] = {}
    for p in prompts:
        texts.setdefault(p.language, []).append(p.text)
    for lang, row in fertility(tokenizer, texts).items():
        keys = ("tokens_per_char", "tokens_per_word", "words_meaningful", "tokens_per_text", "relative_tokens")
        per_language.setdefault(lang, {}).update({k: row[k] for k in keys})

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


def _run_utility(plan: EvalPlan, loaded: Loaded) -> dict[str, Any]:
    config, model, tok, batch_size = plan.config, loaded.model, loaded.tokenizer, loaded.batch_size
    tasks, items = S.run_tasks(model, tok, config.utility_tasks, languages=config.languages, limit=config.utility_limit,
                               batch_size=batch_size)
    for name, result in tasks.items():
        log(f"utility {name}: {result['n_items']} item(s) in {len(result['per_language'])} language(s)")
    lm_eval = None
    if config.lm_eval_tasks:
        lm_eval = S.run_lm_eval_tasks(model, tok, config.lm_eval_tasks, include=config.lm_eval_include,
                                      limit=config.utility_limit, batch_size=batch_size, seed=config.seed)
    over = _run_over_refusal(plan, loaded, plan.benign) if plan.benign is not None else None
    atomic_write_jsonl(plan.out / S.UTILITY_ITEMS, items)
    return S.utility_section(tasks, lm_eval, over)


def _run_over_refusal(plan: EvalPlan, loaded: Loaded, benign: BenignPlan) -> dict[str, Any]:
    config, spec, settings, judge = plan.config, benign.spec, benign.settings, benign.judge
    generator = HFGenerator(loaded.model, loaded.tokenizer, settings, batch_size=loaded.batch_size)
    done = generate_and_judge(kind=SAFETY, name=spec.name, prompts=benign.prompts, settings=settings,
                              generator=generator,
                              tokenizer=loaded.tokenizer, model_identity=loaded.fingerprint["identity"], backend="hf",
                              worker=judge.worker, folder=plan.out / S.OVER_REFUSAL_DIR, run_id=plan.run_id,
                              judge_batch_size=config.judge_batch_size, progress=config.progress,
                              batch_delay=config.batch_delay)
    per_language = S.over_refusal_metrics(done["generations"], done["judgments"])
    if all(m["n_refusal_known"] == 0 for m in per_language.values()):
        log(f"over-refusal: judge {judge.name!r} gave no refusal flags; try --benign-judge refusal")
    return {"benchmark": spec.name, "judge": {"name": judge.name, "options": redact(judge.options),
                                              "settings": judge.worker.settings()},
            "generation": settings.to_dict(), "data": benign.data, "per_language": per_language,
            "summary": summarize(per_language), "missing_languages": benign.missing, "run": done["stats"]}


def _utility_settings(config: EvalConfig, benign: BenignPlan | None) -> dict[str, Any]:
    return {"tasks": [resolve_task(t).to_dict() for t in config.utility_tasks],
            "lm_eval_tasks": list(config.lm_eval_tasks),
            "lm_eval_include": str(config.lm_eval_include) if config.lm_eval_include else None,
            "limit": config.utility_limit, "benign_benchmark": benign.spec.name if benign else None}
