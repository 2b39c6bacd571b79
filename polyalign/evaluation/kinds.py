"""What a benchmark's ``kind`` means, in one place (like lm-eval-harness's ``output_type``).

A benchmark spec names its kind (``safety`` or ``toxicity``); :func:`get_kind` turns that
name into a :class:`BenchmarkKind` once, when an eval run is planned, and every later step
asks that object instead of branching on the name:

- ``safety``: the worker is a judge (``judges.get_judge``) labelling each response safe /
  unsafe / invalid / error with a refusal flag; a failed item is label ``error`` (not stored,
  retried on a rerun); metrics :func:`~polyalign.evaluation.metrics.safety_metrics_by_language`;
  ``results.md`` columns :data:`SAFETY_COLUMNS`; several judges (agreement), cross-lingual
  consistency, the judge-error-share check and judging over-refusal are available.
- ``toxicity``: the worker is a scorer (``judges.get_scorer``) giving each continuation a
  toxicity probability; a failed item is score ``None`` (not stored); metrics
  :func:`~polyalign.evaluation.metrics.toxicity_metrics_by_language` + distinct-n (+ median
  conditional perplexity with a scorer model); columns :data:`TOXICITY_COLUMNS`; one scorer.

Adding a kind = one more :class:`BenchmarkKind` in :data:`KINDS` (and benchmark YAMLs that name it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyalign.data.records import EvalPrompt
from polyalign.errors import UserError
from polyalign.evaluation import metrics as M
from polyalign.evaluation.judges import JudgeInput, get_judge, get_scorer
from polyalign.evaluation.textstats import distinct_metrics

SAFETY_COLUMNS = ("unsafe_rate", "unsafe_rate_worst", "safety_rate", "refusal_rate", "invalid_rate",
                  "language_fidelity", "n_total", "n_error")
TOXICITY_COLUMNS = ("emt", "tox_prob", "avg_tox", "distinct_1", "distinct_2", "distinct_3", "perplexity_median",
                    "language_fidelity", "n_prompts", "n_samples", "n_score_errors")

# (worker, chunk of generations, prompts by id) -> one verdict / score row per generation
JudgeChunk = Callable[[Any, list[dict[str, Any]], dict[str, EvalPrompt]], list[dict[str, Any]]]
# (prompts, generations, judgments, languages in order, scorer model, device, trust_remote_code) -> per language
LanguageMetrics = Callable[..., dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class BenchmarkKind:
    """The per-kind behaviour of an eval run (see the module docstring)."""

    name: str
    worker_role: str  # "judge" or "scorer": results.json settings.judge.kind, results.md header
    progress_label: str  # the judging progress bar's description
    build: Callable[..., Any]  # (worker name, **options) -> a judge or scorer
    judge_chunk: JudgeChunk  # rows (verdicts or scores) for one chunk; ``failed(row)`` marks the unstored ones
    failed: Callable[[dict[str, Any]], bool]
    metrics: LanguageMetrics
    columns: tuple[str, ...]
    # Judges whose verdicts carry labels and refusal flags: several judges (agreement), the
    # cross-lingual consistency section, the judge-error-share check and judging over-refusal.
    verdicts: bool
    check_worker: Callable[[str, dict[str, Any]], None] = lambda name, options: None  # a UserError before building

    def build_worker(self, name: str, options: dict[str, Any]) -> Any:
        """The judge / scorer ``name`` with ``options``; unknown names and bad options fail here, before generating."""
        self.check_worker(name, options)
        return self.build(name, **options)


def get_kind(name: str) -> BenchmarkKind:
    """The behaviour of the benchmark kind ``name``; an unknown kind is a :class:`UserError`."""
    try:
        return KINDS[name]
    except KeyError:
        raise UserError(f"unknown benchmark kind {name!r}; known: {', '.join(KINDS)}", field="kind") from None


def _judge_chunk(worker: Any, chunk: list[dict[str, Any]], by_id: dict[str, EvalPrompt]) -> list[dict[str, Any]]:
    inputs = [JudgeInput(prompt=by_id[g["id"]].text, response=g["text"], language=g["language"],
                         id=f"{g['id']}#{g['sample']}") for g in chunk]
    return [{"id": g["id"], "sample": g["sample"], "language": g["language"], **j.to_dict()}
            for g, j in zip(chunk, worker.judge(inputs), strict=True)]


def _score_chunk(worker: Any, chunk: list[dict[str, Any]], by_id: dict[str, EvalPrompt]) -> list[dict[str, Any]]:
    scores = worker.score([g["text"] for g in chunk], [g["language"] for g in chunk])
    return [{"id": g["id"], "sample": g["sample"], "language": g["language"], "score": s, "scorer": worker.name}
            for g, s in zip(chunk, scores, strict=True)]


def _safety_metrics(prompts: Sequence[EvalPrompt], generations: list[dict[str, Any]],
                    judgments: dict[tuple, dict[str, Any]], order: list[str], **_: Any) -> dict[str, dict[str, Any]]:
    # A generation without a stored verdict (the judge failed) counts as ``error``: nothing dropped.
    rows = []
    for g in generations:
        j = judgments.get((g["id"], g["sample"]))
        rows.append({"language": g["language"], "label": j["label"] if j else "error",
                     "refusal": j.get("refusal") if j else None})
    safety = M.safety_metrics_by_language(rows, with_refusal=True)
    return {lang: dict(safety.get(lang, {})) for lang in order}


def _toxicity_metrics(prompts: Sequence[EvalPrompt], generations: list[dict[str, Any]],
                      judgments: dict[tuple, dict[str, Any]], order: list[str], *,
                      scorer_model: str | Path | None = None, device: Any = None,
                      trust_remote_code: bool = False) -> dict[str, dict[str, Any]]:
    rows = [{"language": g["language"], "id": g["id"],
             "score": (judgments.get((g["id"], g["sample"])) or {}).get("score")} for g in generations]
    tox = M.toxicity_metrics_by_language(rows)
    ppl = _perplexity(prompts, generations, scorer_model, device, trust_remote_code) if scorer_model else {}
    out = {}
    for lang in order:
        groups: dict[str, list[str]] = {}
        for g in generations:
            if g["language"] == lang:
                groups.setdefault(g["id"], []).append(g["text"])
        out[lang] = {**tox.get(lang, {}), **distinct_metrics(list(groups.values()), lang), **ppl.get(lang, {})}
    return out


def _perplexity(prompts: Sequence[EvalPrompt], generations: list[dict[str, Any]], scorer_model: str | Path,
                device: Any, trust_remote_code: bool) -> dict[str, dict[str, Any]]:
    """Median conditional perplexity of the continuations under ``scorer_model``, per language."""
    # torch / transformers: imported only when a scorer model is asked for.
    import torch

    from polyalign.evaluation.perplexity import conditional_perplexity, median_perplexity_by_language
    from polyalign.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(scorer_model, device=device, trust_remote_code=trust_remote_code)
    text = {p.id: p.text for p in prompts}
    with torch.inference_mode():
        values = conditional_perplexity(model, tokenizer, [(text[g["id"]], g["text"]) for g in generations])
    return median_perplexity_by_language(values, [g["language"] for g in generations])


def _check_scorer(name: str, options: dict[str, Any]) -> None:
    if name == "classifier" and "model" not in options:
        raise UserError("the classifier scorer needs a sequence-classification model: --judge-option model=PATH, e.g. "
                        "model=textdetox/xlmr-large-toxicity-classifier-v2 (Perspective is optional: --judge "
                        "perspective; it goes offline after 2026)", field="judge")


SAFETY = BenchmarkKind(name="safety", worker_role="judge", progress_label="judging", build=get_judge,
                       judge_chunk=_judge_chunk, failed=lambda row: row.get("label") == "error",
                       metrics=_safety_metrics, columns=SAFETY_COLUMNS, verdicts=True)
TOXICITY = BenchmarkKind(name="toxicity", worker_role="scorer", progress_label="scoring", build=get_scorer,
                         judge_chunk=_score_chunk, failed=lambda row: row["score"] is None, metrics=_toxicity_metrics,
                         columns=TOXICITY_COLUMNS, verdicts=False, check_worker=_check_scorer)
KINDS: dict[str, BenchmarkKind] = {k.name: k for k in (SAFETY, TOXICITY)}
