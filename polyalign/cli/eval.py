"""``polyalign eval``: generate, judge and score a model on a benchmark (resumable), and its utility."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from polyalign.errors import UserError


def _csv_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _key_values(pairs: list[str] | None, flag: str, *, typed: bool) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict; values parsed as YAML scalars when ``typed`` (5 -> int, true -> bool)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"expected KEY=VALUE, got {pair!r}", field=flag)
        if typed:
            try:
                parsed = yaml.safe_load(value) if value else ""
            except yaml.YAMLError:
                parsed = value
            # Scalars, lists and mappings (attributes=[TOXICITY,INSULT]) keep their YAML type.
            value = parsed if isinstance(parsed, (str, int, float, bool, list, dict)) or parsed is None else value
        out[key.strip()] = value
    return out


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a model on a safety/toxicity benchmark and/or utility tasks",
        description="Generate responses on a benchmark, judge or score them, and write generations.jsonl, "
        "judgments.jsonl, results.json and results.md to --out. Rerunning the same command resumes. "
        "--suite safety,utility also scores utility tasks and over-refusal on benign prompts (same model load, "
        "same results.json).",
    )
    p.add_argument("--list-benchmarks", action="store_true", help="list the built-in benchmarks and exit")
    p.add_argument("--model", help="model folder or cached hub id")
    p.add_argument("--adapter", help="PEFT adapter folder applied on top of --model")
    p.add_argument("--benchmark", help="benchmark name (see --list-benchmarks) or a benchmark .yaml spec")
    p.add_argument("--data", help="data root holding the benchmark's default path (or the data file itself); default $POLYALIGN_DATA")
    p.add_argument("--languages", type=_csv_list, help="comma-separated language codes (default: all in the data)")
    p.add_argument("--categories", type=_csv_list, help="comma-separated categories to keep")
    p.add_argument("--limit", type=int, help="at most N prompts per language (seeded sample)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed for --limit and for generation (default 0)")
    p.add_argument("--column-map", action="append", metavar="FIELD=COLUMN[,...]",
                   help="column mapping for custom data (comma-separated or repeated), e.g. text=goal,language=lang")
    p.add_argument("--language", help="language of a single-language custom file")
    p.add_argument("--attack", metavar="ATTACK",
                   help="evaluate attacked prompts instead: code-switch[:POLICY.yaml][key=value,...] (CSRT-style mixing "
                   "of the benchmark's parallel languages), jailbreak[:TEMPLATES.yaml] or translate:LANG[model=FOLDER,family=nllb|"
                   "m2m100|marian,source=en] / translate:LANG[translator=FILE.yaml] (machine translation through the "
                   "data-build translators and cache); written to OUT/attack_prompts.jsonl")
    p.add_argument("--judge", help="judge (safety) or toxicity scorer name; default: the benchmark's. Several safety "
                   "judges, comma-separated (refusal,openai), judge the same generations (generated once; each judge's "
                   "verdicts in its own file): the first gives the metrics, results.json 'agreement' compares them "
                   "(Cohen's kappa and confusion matrix per language). Rerun an out folder with an added judge to judge "
                   "its stored generations")
    p.add_argument("--judge-option", action="append", metavar="[JUDGE.]KEY=VALUE",
                   help="judge option (repeatable), e.g. model=gpt-4o; with several judges KEY=VALUE goes to the first "
                   "and JUDGE.KEY=VALUE to the judge named JUDGE (openai.model=gpt-4o)")
    p.add_argument("--judge-batch-size", type=int, default=32, help="items per judge call (default 32)")
    p.add_argument("--max-judge-error-share", type=float, default=0.05,
                   help="fail (exit 2, after writing the results) when more than this share of a language's items "
                        "could not be judged (default 0.05)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--num-samples", type=int, help="samples per prompt (needs --temperature > 0)")
    p.add_argument("--temperature", type=float, help="0 = greedy")
    p.add_argument("--top-p", type=float)
    p.add_argument("--chat-template", dest="chat_template", action="store_true", default=None, help="render prompts with the chat template")
    p.add_argument("--no-chat-template", dest="chat_template", action="store_false", help="continue the raw prompt text")
    p.add_argument("--system-prompt")
    p.add_argument("--batch-size", type=int, default=None,
                   help="generation batch size (does not change outputs; default 32 for hf, 256 for vllm)")
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    p.add_argument("--dtype", help="float32, bfloat16, float16 or auto")
    p.add_argument("--device", help="e.g. cpu, cuda, cuda:1")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder (off by default)")
    p.add_argument("--scorer-model", help="language model for conditional perplexity (toxicity benchmarks)")
    p.add_argument("--batch-delay", type=float, default=0.0, help="sleep this many seconds after each generation batch (throttling)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", help="output folder (rerun with the same folder to resume)")
    u = p.add_argument_group("utility suite (--suite utility or safety,utility)")
    u.add_argument("--suite", default="safety", metavar="SUITES",
                   help="comma-separated: safety, utility (default safety; utility alone needs no --benchmark)")
    u.add_argument("--utility-task", action="append", default=[], metavar="PATH|NAME",
                   help="utility task: a task .yaml, a JSONL/CSV data file or a registered name (repeatable)")
    u.add_argument("--lm-eval-tasks", type=_csv_list, default=[], metavar="A,B",
                   help="lm-evaluation-harness tasks, e.g. mgsm_direct_bn,xnli_sw (needs polyalign[lmeval])")
    u.add_argument("--lm-eval-include", metavar="DIR", help="folder of extra lm-eval task YAMLs")
    u.add_argument("--utility-limit", type=int, metavar="N",
                   help="at most N utility items (and benign prompts) per language (default: all; benign: --limit)")
    u.add_argument("--benign-benchmark", metavar="NAME|PATH",
                   help="benign prompts for over-refusal: a benchmark name / spec .yaml, or a JSONL/CSV with "
                   "text and language columns")
    u.add_argument("--benign-judge", metavar="NAME",
                   help="judge deciding refusal on the benign prompts (default: the safety judge, else refusal)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from polyalign.evaluation.benchmarks import list_benchmarks

    if args.list_benchmarks:
        for name, spec in list_benchmarks().items():
            print(f"{name:18s} {spec.kind:9s} {spec.description}")
        return 0
    from polyalign.evaluation.suites import parse_suites

    suites = parse_suites(args.suite)
    for flag in ("model", "benchmark", "out"):
        if not getattr(args, flag) and (flag != "benchmark" or "safety" in suites):
            raise UserError("required" + (" with --suite safety" if flag == "benchmark" else ""), field=f"--{flag}")
    for flag in ("limit", "max_new_tokens", "num_samples", "batch_size", "judge_batch_size", "utility_limit"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"must be at least 1, got {value}", field="--" + flag.replace("_", "-"))
    from polyalign.evaluation.run import evaluate

    pairs = [part for item in args.column_map or [] for part in item.split(",") if part.strip()]
    column_map = _key_values(pairs, "--column-map", typed=False) or None
    benchmark, data, languages, categories, limit = args.benchmark, args.data, args.languages, args.categories, args.limit
    if args.attack:  # the selection applies to the source benchmark; the attacked prompts are evaluated whole
        from polyalign.evaluation.attacks import prepare_attack

        benchmark, data = prepare_attack(args.attack, args.benchmark, out_dir=args.out, data=args.data,
                                         languages=args.languages, categories=args.categories, limit=args.limit,
                                         seed=args.seed, column_map=column_map, language=args.language)
        languages = categories = limit = column_map = None
    results = evaluate(
        args.model, benchmark, out_dir=args.out, adapter=args.adapter, data=data, languages=languages,
        categories=categories, limit=limit, seed=args.seed, column_map=column_map,
        language=None if args.attack else args.language, judge=args.judge, judge_options=_key_values(args.judge_option, "--judge-option", typed=True),
        max_new_tokens=args.max_new_tokens, num_samples=args.num_samples, temperature=args.temperature, top_p=args.top_p,
        chat_template=args.chat_template, system_prompt=args.system_prompt, batch_size=args.batch_size,
        judge_batch_size=args.judge_batch_size, backend=args.backend, dtype=args.dtype, device=args.device,
        trust_remote_code=args.trust_remote_code, scorer_model=args.scorer_model, progress=not args.no_progress,
        max_judge_error_share=args.max_judge_error_share,
        batch_delay=args.batch_delay, suites=suites, utility_tasks=args.utility_task, lm_eval_tasks=args.lm_eval_tasks,
        lm_eval_include=args.lm_eval_include, utility_limit=args.utility_limit, benign_benchmark=args.benign_benchmark,
        benign_judge=args.benign_judge,
    )
    summary = results["metrics"].get("summary", {})
    n_languages = len(results["metrics"]["per_language"])
    name = results["benchmark"]["name"] if results.get("benchmark") else "utility"
    for metric in dict.fromkeys([results.get("headline"), "accuracy", "over_refusal"]):
        if metric in summary:
            print(f"{name}: mean {metric} {summary[metric]['mean']:.4f} over {summary[metric]['n_languages']} "
                  f"of {n_languages} language(s)")
    for pair in (results.get("agreement") or {}).get("pairs", []):
        kappas = ", ".join(f"{lang} {'–' if m['kappa'] is None else format(m['kappa'], '.2f')}"
                           for lang, m in pair["per_language"].items())
        print(f"judge agreement {pair['a']} vs {pair['b']} (Cohen's kappa): {kappas}")
    return 0
