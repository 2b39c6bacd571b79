"""Step 1 of an eval run: everything a user can get wrong, checked before the model is loaded.

:func:`plan_eval` turns an :class:`~polyalign.evaluation.config.EvalConfig` into an
:class:`EvalPlan`: the attacked benchmark written (``attack``), the benchmark read and its
prompts selected, the generation settings resolved, the benchmark's kind looked up once
(:mod:`polyalign.evaluation.kinds`) and every judge built; for the utility suite the tasks
resolved and the benign (over-refusal) prompts read and their judge built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyalign.data.records import EvalPrompt
from polyalign.errors import UserError
from polyalign.evaluation import suites as S
from polyalign.evaluation.attacks import prepare_attack
from polyalign.evaluation.benchmarks import (
    BenchmarkRead,
    BenchmarkSpec,
    get_benchmark,
    read_benchmark,
    resolve_data_path,
    select_prompts,
)
from polyalign.evaluation.config import EvalConfig
from polyalign.evaluation.generation import GenerationSettings
from polyalign.evaluation.kinds import SAFETY, BenchmarkKind, get_kind
from polyalign.evaluation.stages import generation_settings, log
from polyalign.evaluation.utility.tasks import resolve_task
from polyalign.store import new_run_id


@dataclass
class Judge:
    """One judge of a run: its name, its options and the built worker."""

    name: str
    options: dict[str, Any]
    worker: Any


@dataclass
class SafetyPlan:
    """The benchmark part of a run (``safety`` in the suites; the benchmark may be a toxicity one)."""

    spec: BenchmarkSpec
    kind: BenchmarkKind
    data_path: Path
    read: BenchmarkRead  # every prompt of the file, skip counts, rows per language
    prompts: list[EvalPrompt]  # the selected ones
    settings: GenerationSettings
    judges: list[Judge]  # the primary (headline metrics) first


@dataclass
class BenignPlan:
    """The over-refusal part of the utility suite: benign prompts and the judge of refusals."""

    spec: BenchmarkSpec
    prompts: list[EvalPrompt]
    missing: list[str]  # requested languages the benign set lacks
    data: dict[str, Any]
    judge: Judge
    settings: GenerationSettings


@dataclass
class EvalPlan:
    """Everything :func:`~polyalign.evaluation.run.run_suites` needs besides the model."""

    config: EvalConfig  # as run: with an attack, the attacked benchmark and no further selection
    out: Path
    run_id: str
    safety: SafetyPlan | None
    utility: bool
    benign: BenignPlan | None


def plan_eval(config: EvalConfig) -> EvalPlan:
    """Check and prepare everything that needs no model (see the module docstring)."""
    if not config.out_dir:
        raise UserError("an output folder is needed (out_dir)", field="out_dir")
    config = _apply_attack(config)
    safety = _plan_safety(config) if "safety" in config.suites else None
    if safety is None and config.benchmark is not None:
        log(f"--suite {','.join(config.suites)}: benchmark {config.benchmark} is not run (add safety to the suites)")
    benign = None
    if "utility" in config.suites:
        if safety is None:
            safety_judge = config.judge.split(",")[0].strip() if config.judge else None
            options = config.judge_options
        else:  # a toxicity scorer cannot judge refusals: then the default refusal judge
            safety_judge = safety.judges[0].name if safety.kind.verdicts else None
            options = safety.judges[0].options
        benign = _plan_utility(config, safety_judge, options)
    return EvalPlan(config=config, out=Path(config.out_dir), run_id=new_run_id(), safety=safety,
                    utility="utility" in config.suites, benign=benign)


def _apply_attack(config: EvalConfig) -> EvalConfig:
    """With ``attack``: the attacked prompts (written to the out folder) as the benchmark.

    The selection (languages, categories, limit, column map, language) applies to the source
    benchmark; the attacked prompts are evaluated whole.
    """
    if not config.attack:
        return config
    if config.benchmark is None:
        raise UserError("an attack needs a benchmark to attack", field="attack")
    spec, path = prepare_attack(config.attack, config.benchmark, out_dir=config.out_dir, data=config.data,
                                languages=config.languages, categories=config.categories, limit=config.limit,
                                seed=config.seed, column_map=config.column_map, language=config.language)
    return dataclasses.replace(config, benchmark=spec, data=str(path), attack=None, languages=None, categories=None,
                               limit=None, column_map=None, language=None)


def _generation_overrides(config: EvalConfig) -> dict[str, Any]:
    return dict(max_new_tokens=config.max_new_tokens, num_samples=config.num_samples, temperature=config.temperature,
                top_p=config.top_p, chat_template=config.chat_template, system_prompt=config.system_prompt)


def _plan_safety(config: EvalConfig) -> SafetyPlan:
    if config.benchmark is None:
        raise UserError("the safety suite needs a benchmark", field="benchmark")
    spec = get_benchmark(config.benchmark)
    kind = get_kind(spec.kind)
    data_path = resolve_data_path(spec, config.data)
    read = read_benchmark(spec, data_path, column_map=config.column_map, language=config.language)
    prompts = select_prompts(spec, data_path, read.prompts, languages=list(config.languages or ()) or None,
                             categories=list(config.categories or ()) or None, limit=config.limit, seed=config.seed)
    settings = generation_settings(spec, config.seed, **_generation_overrides(config))
    names, options = split_judges(config.judge or spec.judge, config.judge_options)
    if len(names) > 1 and not kind.verdicts:
        raise UserError(f"several judges (judge agreement) need a safety benchmark, not a {kind.name} one",
                        field="judge")
    # Built before generating: a bad judge name or option fails fast.
    judges = [Judge(name, opts, kind.build_worker(name, opts)) for name, opts in zip(names, options)]
    return SafetyPlan(spec=spec, kind=kind, data_path=data_path, read=read, prompts=prompts, settings=settings,
                      judges=judges)


def split_judges(judge: str, options: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """``"a,b"`` -> ``([a, b], [options of a, options of b])``.

    An option ``NAME.key`` goes to judge ``NAME`` only; a plain ``key`` goes to the primary
    (first) judge, as it did when there was one judge.
    """
    names = [n.strip() for n in judge.split(",")]
    if not all(names):
        raise UserError(f"expected judge names separated by commas, got {judge!r}", field="judge")
    per: list[dict[str, Any]] = [dict() for _ in names]
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


def _plan_utility(config: EvalConfig, safety_judge: str | None, judge_options: dict[str, Any]) -> BenignPlan | None:
    """Check the utility inputs (tasks resolve, benign set reads, judge builds); the benign plan or None."""
    if config.backend != "hf":
        raise UserError("the utility suite needs the hf backend (it scores log-likelihoods)", field="backend")
    if not config.utility_tasks and not config.lm_eval_tasks and config.benign_benchmark is None:
        raise UserError("the utility suite needs --utility-task, --lm-eval-tasks and/or --benign-benchmark",
                        field="suite")
    for task in config.utility_tasks:
        resolve_task(task)
    if config.lm_eval_tasks:
        from polyalign.evaluation.utility.lm_eval_bridge import require_lm_eval  # lm-eval is an optional extra

        require_lm_eval()
    if config.benign_benchmark is None:
        return None
    spec, path = S.resolve_benign(config.benign_benchmark, config.data)
    prompts, missing, info = S.benign_prompts(spec, path, languages=config.languages,
                                              limit=config.utility_limit or config.limit, seed=config.seed)
    if missing:
        log(f"over-refusal: the benign set has no prompts in {', '.join(missing)} (no over_refusal there)")
    name = config.benign_judge or safety_judge or "refusal"
    # The safety judge's options go with it; another judge gets its defaults.
    options = judge_options if safety_judge and name == safety_judge else {}
    return BenignPlan(spec=spec, prompts=prompts, missing=missing, data=info,
                      judge=Judge(name, options, SAFETY.build_worker(name, options)),
                      settings=generation_settings(spec, config.seed, **_generation_overrides(config)))
