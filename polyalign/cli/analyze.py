"""``polyalign analyze``: retrieval, collinearity, reward gap and toxic-neuron analyses.

Each analysis loads one model (safetensors, no remote code), reads its inputs through
:mod:`polyalign.analysis.inputs`, and writes one JSON file atomically:
``{"analysis", "settings", "model", "data", "result"}``.
"""

from __future__ import annotations

import argparse
from typing import Any

from polyalign.data.readers import load_prompt_variants
from polyalign.errors import UserError
from polyalign.io import atomic_write_json, file_fingerprint


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _int_csv(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, got {text!r}") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder or cached hub id")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 or auto (default: as saved)")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cpu)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens")
    p.add_argument("-o", "--out", required=True, help="output JSON file")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("analyze", help="representation and mechanism analyses of a model",
                                   description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p = sub.add_parser("retrieval", help="bilingual sentence retrieval per layer (Li et al. 2024)")
    _common(p)
    p.add_argument("--data", required=True, help="multiway-parallel folder (one file per language)")
    p.add_argument("--languages", type=_csv, help="languages to use (default: all; the pivot is always used)")
    p.add_argument("--pivot", default="en")
    p.add_argument("--layers", type=_int_csv, help="hidden-state indices (default: all, embeddings included)")
    p.add_argument("--transfer", help="JSON {lang: value} or an eval results.json to correlate with")
    p.add_argument("--transfer-metric", help="metric name when --transfer is a results.json")
    p.add_argument("--score", default="mean_aligned_cosine",
                   choices=["mean_aligned_cosine", "acc_pivot_to_x", "acc_x_to_pivot"],
                   help="per-language score correlated with --transfer")
    p.set_defaults(func=_retrieval)

    p = sub.add_parser("collinearity", help="rank-1 share of parallel prompts' representations (MLC)")
    _common(p)
    p.add_argument("--data", required=True, help="prompt variants: MLC file, parallel folder or canonical")
    p.add_argument("--languages", type=_csv, help="the 'all' subset (default: every language seen)")
    p.add_argument("--subset", action="append", metavar="NAME=L1,L2", help="extra language subset (repeatable)")
    p.add_argument("--layers", type=_int_csv, default=[-1], help="hidden-state indices (default: -1)")
    p.set_defaults(func=_collinearity)

    p = sub.add_parser("reward-gap", help="length-normalised reward gap per language (MPO)")
    _common(p)
    p.add_argument("--data", required=True, help="preference pairs (MPO, MLC, TRL, canonical)")
    p.add_argument("--languages", type=_csv, help="keep only these languages")
    p.add_argument("--language", help="language of every pair, for files without language labels")
    p.add_argument("--no-detect-language", action="store_true",
                   help="never guess languages (files without labels then need --language)")
    p.add_argument("--results", help="eval results.json whose per-language metric is correlated with the gap")
    p.add_argument("--metric", default="asr", help="metric in --results (default: asr)")
    p.set_defaults(func=_reward_gap)

    p = sub.add_parser("neurons", help="toxicity probe, toxic MLP neurons, their tokens and activations")
    _common(p)
    p.add_argument("--probe-data", required=True, help='JSONL with "text" and "label" (1 toxic, 0 not)')
    p.add_argument("--probe-method", default="logistic", choices=["logistic", "mean_diff"])
    p.add_argument("--toxic-prompts", help="evaluation prompts whose mean activation decides which neurons are kept "
                   "(default: the probe data's toxic texts)")
    p.add_argument("--texts", help="evaluation prompts (any language) for per-language activations")
    p.add_argument("--after", help="aligned model to compare activations with (same architecture)")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--top-tokens", type=int, default=10)
    p.set_defaults(func=_neurons)


# polyalign.analysis and polyalign.models import torch and transformers: imported inside each
# command (lazily) so that every other ``polyalign`` subcommand starts without them.
def _load(args: argparse.Namespace, path: str | None = None):
    from polyalign.models import load_model_and_tokenizer  # lazy: torch (see above)

    return load_model_and_tokenizer(path or args.model, dtype=args.dtype, device=args.device)


def _write(args: argparse.Namespace, analysis: str, data: dict[str, Any], result: dict[str, Any]) -> int:
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "out", "model", "command", "analysis")}
    atomic_write_json(args.out, {"analysis": analysis, "settings": settings, "model": args.model, "data": data,
                                 "result": result})
    print(f"wrote {args.out}")
    return 0


def _retrieval(args: argparse.Namespace) -> int:
    from polyalign.analysis.inputs import transfer_values  # lazy: torch (see above)
    from polyalign.analysis.retrieval import bilingual_retrieval, sentences_from_variants
    from polyalign.analysis.stats import correlate

    variants = load_prompt_variants(args.data, detect_language=False)
    languages = None if args.languages is None else list(dict.fromkeys([args.pivot, *args.languages]))
    sentences, skipped = sentences_from_variants(variants, languages)
    model, tokenizer = _load(args)
    result = bilingual_retrieval(model, tokenizer, sentences, pivot=args.pivot, batch_size=args.batch_size,
                                 layers=args.layers, max_length=args.max_length)
    out = result.to_dict()
    out["skipped_prompts"] = skipped
    if args.transfer:
        scores = {lang: v[args.score] for lang, v in result.averages.items()}
        out["correlation"] = {"score": args.score,
                              **correlate(scores, transfer_values(args.transfer, args.transfer_metric))}
    return _write(args, "retrieval", {"path": args.data, "fingerprint": file_fingerprint(args.data)}, out)


def _subset(spec: str) -> tuple[str, list[str]]:
    name, sep, langs = spec.partition("=")
    if not sep or not name.strip():
        raise UserError(f"expected NAME=L1,L2, got {spec!r}", field="subset")
    return name.strip(), _csv(langs)


def _collinearity(args: argparse.Namespace) -> int:
    from polyalign.analysis.collinearity import collinearity  # lazy: torch (see above)
    from polyalign.analysis.inputs import language_subsets

    variants = load_prompt_variants(args.data, detect_language=False)
    subsets = language_subsets(variants, args.languages, dict(_subset(spec) for spec in args.subset or []))
    model, tokenizer = _load(args)
    result = collinearity(model, tokenizer, variants, subsets=subsets, layers=args.layers, batch_size=args.batch_size)
    return _write(args, "collinearity", {"path": args.data, "fingerprint": file_fingerprint(args.data)},
                  result.to_dict())


def _reward_gap(args: argparse.Namespace) -> int:
    from polyalign.analysis.inputs import results_metric, reward_gap_pairs  # lazy: torch (see above)
    from polyalign.analysis.reward_gap import correlate_gap_with_metric, reward_gap

    data = reward_gap_pairs(args.data, language=args.language, detect_language=not args.no_detect_language,
                            languages=args.languages)
    model, tokenizer = _load(args)
    result = reward_gap(model, tokenizer, data.pairs, batch_size=args.batch_size, max_length=args.max_length)
    out = result.to_dict()
    out["counts"] = data.counts
    if args.results:
        out["correlation"] = {"metric": args.metric,
                              **correlate_gap_with_metric(result, results_metric(args.results, args.metric))}
    return _write(args, "reward_gap", {"path": args.data, "format": data.format,
                                       "fingerprint": file_fingerprint(args.data)}, out)


def _neurons(args: argparse.Namespace) -> int:
    from polyalign.analysis.inputs import probe_data, texts_by_language  # lazy: torch (see above)
    from polyalign.analysis.mlp_access import mlp_access
    from polyalign.analysis.neurons import activations_by_language, find_toxic_neurons, neuron_top_tokens
    from polyalign.analysis.probe import train_toxicity_probe

    texts, labels = probe_data(args.probe_data)
    if args.toxic_prompts:
        toxic = [t for group in texts_by_language(args.toxic_prompts).values() for t in group]
    else:
        toxic = [t for t, y in zip(texts, labels) if y == 1]
    by_language = texts_by_language(args.texts) if args.texts else None
    model, tokenizer = _load(args)
    mlp_access(model)  # fail early on an unsupported architecture
    probe = train_toxicity_probe(model, tokenizer, texts, labels, method=args.probe_method,
                                 batch_size=args.batch_size, max_length=args.max_length)
    kept, ranked = find_toxic_neurons(model, tokenizer, toxic, probe.direction, top_k=args.top_k,
                                      batch_size=args.batch_size, max_length=args.max_length)
    out: dict[str, Any] = {
        "probe": probe.to_dict(),
        "n_ranked": len(ranked),
        "n_kept": len(kept),
        "neurons": [{**n.to_dict(), "top_tokens": neuron_top_tokens(model, tokenizer, n,
                                                                    args.top_tokens)} for n in kept],
    }
    data: dict[str, Any] = {"probe_data": args.probe_data, "probe_fingerprint": file_fingerprint(args.probe_data)}
    if by_language is not None:
        data["texts"] = args.texts
        if not kept:
            out["activations"] = None  # nothing kept: nothing to measure (n_kept says so)
        else:
            after = _load(args, args.after)[0] if args.after else None
            out["activations"] = activations_by_language(model, after, tokenizer, by_language, kept,
                                                         batch_size=args.batch_size, max_length=args.max_length)
            out["after_model"] = args.after
    return _write(args, "neurons", data, out)
