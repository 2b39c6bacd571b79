"""``polyalign eval``: generate, judge and score a model on a benchmark (resumable), and its utility.

The flags fill an :class:`~polyalign.evaluation.config.EvalConfig` (``--config EVAL.yaml`` first, then
each flag given on the command line replaces the file's value) and the run is
:func:`polyalign.evaluation.run.evaluate` of that config: the command line and the Python API run the same.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from polyalign.errors import UserError
from polyalign.evaluation.benchmarks import list_benchmarks
from polyalign.evaluation.config import EvalConfig, load_eval_config


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
    p.add_argument("--config", metavar="EVAL.yaml",
                   help="eval settings from a YAML file (the fields of polyalign.evaluation.config.EvalConfig); "
                   "a flag given on the command line replaces the file's value")
    p.add_argument("--model", help="model folder or cached hub id")
    p.add_argument("--adapter", help="PEFT adapter folder applied on top of --model")
    p.add_argument("--benchmark", help="benchmark name (see --list-benchmarks) or a benchmark .yaml spec")
    p.add_argument("--data", help="data root holding the benchmark's default path (or the data file itself); "
                   "default $POLYALIGN_DATA")
    p.add_argument("--languages", type=_csv_list, help="comma-separated language codes (default: all in the data)")
    p.add_argument("--categories", type=_csv_list, help="comma-separated categories to keep")
    p.add_argument("--limit", type=int, help="at most N prompts per language (seeded sample)")
    p.add_argument("--seed", type=int, help="sampling seed for --limit and for generation (default 0)")
    p.add_argument("--column-map", action="append", metavar="FIELD=COLUMN[,...]",
                   help="column mapping for custom data (comma-separated or repeated), e.g. text=goal,language=lang")
    p.add_argument("--language", help="language of a single-language custom file")
    p.add_argument("--attack", metavar="ATTACK",
                   help="evaluate attacked prompts instead: code-switch[:POLICY.yaml][key=value,...] (CSRT-style "
                   "mixing of the benchmark's parallel languages), jailbreak[:TEMPLATES.yaml] or "
                   "translate:LANG[model=FOLDER,family=nllb|m2m100|marian,source=en] / "
                   "translate:LANG[translator=FILE.yaml] (machine translation through the "
                   "data-build translators and cache); written to OUT/attack_prompts.jsonl")
    p.add_argument("--judge", help="judge (safety) or toxicity scorer name; default: the benchmark's. Several safety "
                   "judges, comma-separated (refusal,openai), judge the same generations (generated once; each judge's "
                   "verdicts in its own file): the first gives the metrics, results.json 'agreement' compares them "
                   "(Cohen's kappa and confusion matrix per language). Rerun an out folder with an added judge to "
                   "judge its stored generations")
    p.add_argument("--judge-option", action="append", metavar="[JUDGE.]KEY=VALUE",
                   help="judge option (repeatable), e.g. model=gpt-4o; with several judges KEY=VALUE goes to the first "
                   "and JUDGE.KEY=VALUE to the judge named JUDGE (openai.model=gpt-4o)")
    p.add_argument("--judge-batch-size", type=int, help="items per judge call (default 32)")
    p.add_argument("--max-judge-error-share", type=float,
                   help="fail (exit 2, after writing the results) when more than this share of a language's items "
                        "could not be judged (default 0.05)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--num-samples", type=int, help="samples per prompt (needs --temperature > 0)")
    p.add_argument("--temperature", type=float, help="0 = greedy")
    p.add_argument("--top-p", type=float)
    p.add_argument("--chat-template", dest="chat_template", action="store_true", default=None,
                   help="render prompts with the chat template")
    p.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                   help="continue the raw prompt text")
    p.add_argument("--system-prompt")
    p.add_argument("--batch-size", type=int,
                   help="generation batch size (does not change outputs; default 32 for hf, 256 for vllm)")
    p.add_argument("--backend", choices=("hf", "vllm"), help="generation backend (default hf)")
    p.add_argument("--dtype", help="float32, bfloat16, float16 or auto")
    p.add_argument("--device", help="e.g. cpu, cuda, cuda:1")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the model folder (off by default)")
    p.add_argument("--scorer-model", help="language model for conditional perplexity (toxicity benchmarks)")
    p.add_argument("--batch-delay", type=float, help="sleep this many seconds after each generation batch (throttling)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", help="output folder (rerun with the same folder to resume)")
    u = p.add_argument_group("utility suite (--suite utility or safety,utility)")
    u.add_argument("--suite", metavar="SUITES",
                   help="comma-separated: safety, utility (default safety; utility alone needs no --benchmark)")
    u.add_argument("--utility-task", action="append", metavar="PATH|NAME",
                   help="utility task: a task .yaml, a JSONL/CSV data file or a registered name (repeatable)")
    u.add_argument("--lm-eval-tasks", type=_csv_list, metavar="A,B",
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


# EvalConfig field -> (argparse dest, flag) for the flags that set a field directly.
FLAGS = {name: (name, "--" + name.replace("_", "-")) for name in (
    "model", "adapter", "benchmark", "data", "languages", "categories", "limit", "seed", "language", "attack", "judge",
    "judge_batch_size", "max_judge_error_share", "max_new_tokens", "num_samples", "temperature", "top_p",
    "chat_template", "system_prompt", "batch_size", "backend", "dtype", "device", "scorer_model", "batch_delay",
    "lm_eval_tasks", "lm_eval_include", "utility_limit", "benign_benchmark", "benign_judge")}
FLAGS.update({"out_dir": ("out", "--out"), "suites": ("suite", "--suite"),
              "utility_tasks": ("utility_task", "--utility-task"), "column_map": ("column_map", "--column-map"),
              "judge_options": ("judge_option", "--judge-option"),
              "trust_remote_code": ("trust_remote_code", "--trust-remote-code"),
              "progress": ("no_progress", "--no-progress")})


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The EvalConfig fields set by flags given on the command line (a flag not given is absent)."""
    out: dict[str, Any] = {}
    for name, (dest, _) in FLAGS.items():
        value = getattr(args, dest, None)
        if value is None or (value is False and dest in ("trust_remote_code", "no_progress")):
            continue  # not given (the two switches can only be turned on)
        if name == "column_map":
            pairs = [part for item in value for part in item.split(",") if part.strip()]
            value = _key_values(pairs, "--column-map", typed=False) or None
        elif name == "judge_options":
            value = _key_values(value, "--judge-option", typed=True)
        elif name == "progress":
            value = False
        out[name] = value
    return out


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """The run's :class:`EvalConfig`: ``--config`` (if any) with the given flags on top; required settings checked."""
    config = load_eval_config(args.config, config_overrides(args), flags={k: flag for k, (_, flag) in FLAGS.items()})
    for name in ("model", "benchmark", "out_dir"):
        if not getattr(config, name) and (name != "benchmark" or "safety" in config.suites):
            raise UserError("required" + (" with --suite safety" if name == "benchmark" else "")
                            + f" (the flag, or {name}: in --config)", file=args.config, field=FLAGS[name][1])
    return config


def run(args: argparse.Namespace) -> int:
    if args.list_benchmarks:
        for name, spec in list_benchmarks().items():
            print(f"{name:18s} {spec.kind:9s} {spec.description}")
        return 0
    config = eval_config(args)
    from polyalign.evaluation.run import evaluate  # loads torch: only when a run starts

    results = evaluate(config)
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
