"""The study's representation analyses on the analysis model (Gemma-3-270M by default).

- bilingual retrieval per layer, English pivot, over the 17 detox languages (the first N
  sentences of the multiway-parallel files);
- rank-1 share (collinearity) of MultiJail's 10-language prompts per layer (a seeded sample
  of N items, the same item in every language);

each with a per-layer plot (PNG). Both call the public functions of :mod:`polyalign.analysis`.
:func:`transfer_comparison` then sets the languages' retrieval ranking beside the transfer
the study measured (unsafe-rate drop of English DPO vs base, per language).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from polyalign.io import atomic_write_bytes, atomic_write_json


def multijail_variants(path: str | Path, n: int, seed: int) -> list[Any]:
    """``n`` MultiJail items (seeded choice, as the evaluation samples) as 10-language prompt variants."""
    from polyalign.data.readers import load_eval_prompts
    from polyalign.data.records import Message, PromptVariants
    from polyalign.evaluation.benchmarks import sample_rank

    grouped: dict[str, dict[str, Any]] = {}
    for prompt in load_eval_prompts(path, format="multijail", detect_language=False):
        grouped.setdefault(prompt.source_id or prompt.id, {})[prompt.language] = (Message("user", prompt.text),)
    chosen = sorted(grouped, key=lambda key: (sample_rank(seed, key), key))[:n]
    return [PromptVariants(id=key, prompts=grouped[key]) for key in chosen]


def _plot(path: Path, layers: list[int], series: dict[str, list[float | None]], ylabel: str, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for name, values in series.items():
        axes.plot(layers, [float("nan") if v is None else v for v in values], marker=".", linewidth=1, label=name)
    axes.set_xlabel("hidden-state index (0 = embeddings)")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


def run_probes(model_path: str | Path, out_dir: str | Path, *, detox_parallel: str | Path | None, multijail: str | Path,
               settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """Retrieval (when ``detox_parallel``) and collinearity on ``model_path``; JSON + PNG into ``out_dir``."""
    from polyalign.analysis import bilingual_retrieval, collinearity, sentences_from_variants
    from polyalign.data.readers import load_prompt_variants
    from polyalign.models import load_model_and_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model_and_tokenizer(model_path)
    summary: dict[str, Any] = {"model": str(model_path)}
    if detox_parallel:
        variants = load_prompt_variants(detox_parallel, detect_language=False)
        sentences, skipped = sentences_from_variants(variants)
        n = settings["sentences_per_language"]
        sentences = {lang: texts[:n] for lang, texts in sentences.items()}
        result = bilingual_retrieval(model, tokenizer, sentences, pivot="en", batch_size=settings["batch_size"],
                                     layers=None, max_length=settings["max_length"], progress=False)
        data = {**result.to_dict(), "skipped_prompts": skipped}
        atomic_write_json(out / "retrieval.json", data)
        _plot(out / "retrieval.png", result.layers,
              {lang: result.per_layer[lang]["mean_aligned_cosine"] for lang in result.per_layer},
              "mean cosine of aligned sentences (x vs en)",
              f"Bilingual retrieval per layer, {Path(str(model_path)).name}")
        summary["retrieval"] = {"averages": result.averages, "n_sentences": n, "layers": result.layers}
    variants = multijail_variants(multijail, settings["multijail_prompts"], seed)
    languages = list(dict.fromkeys(lang for v in variants for lang in v.prompts))
    col = collinearity(model, tokenizer, variants, subsets={"all": languages}, layers=None,
                       batch_size=settings["batch_size"])
    col_dict = col.to_dict()
    atomic_write_json(out / "collinearity.json", col_dict)
    _plot(out / "collinearity.png", col.layers, {"rank-1 share": col.rank1_share["all"],
                                                 "mean pairwise cosine": col.mean_pairwise_cosine["all"]},
          "share / cosine", f"MultiJail {len(languages)}-language prompts per layer ({col.n_prompts['all']} items)")
    summary["collinearity"] = {"languages": languages, "n_prompts": col.n_prompts["all"],
                               "rank1_share": col.rank1_share["all"], "layers": col.layers,
                               "rank1_share_layer_mean": col_dict["subsets"]["all"]["rank1_share_layer_mean"]}
    atomic_write_json(out / "summary.json", summary)
    return summary


def transfer_comparison(retrieval_averages: dict[str, dict[str, float]], transfer: dict[str, float],
                        score: str = "mean_aligned_cosine") -> dict[str, Any]:
    """Correlation (Pearson/Spearman, n, p) of each language's retrieval score with its transfer."""
    from polyalign.analysis import correlate

    scores = {lang: values[score] for lang, values in retrieval_averages.items()}
    return {"score": score, **correlate(scores, transfer),
            "retrieval_rank": sorted(scores, key=lambda lang: -scores[lang]),
            "transfer_rank": sorted(transfer, key=lambda lang: -transfer[lang])}
