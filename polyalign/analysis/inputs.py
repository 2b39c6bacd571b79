"""The analyses' input files, read and checked: ``polyalign analyze`` only parses arguments and calls these.

Every bad row is a :class:`~polyalign.errors.UserError` naming the file, the line and the field;
nothing is dropped silently (pairs outside ``--languages`` are counted, the reader's skips too).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from polyalign.analysis.reward_gap import pairs_from_records, per_language_metric
from polyalign.data.readers import load_eval_prompts, read_records
from polyalign.data.records import PreferencePair, PromptVariants
from polyalign.errors import UserError
from polyalign.io import iter_jsonl, read_text_strict


def read_json(path: str) -> Any:
    """A whole JSON file (strict UTF-8); invalid JSON is a :class:`UserError` with its line."""
    try:
        return json.loads(read_text_strict(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"invalid JSON: {exc.msg}", file=path, line=exc.lineno) from None


def results_metric(path: str, metric: str) -> dict[str, float]:
    """One metric per language from an evaluation ``results.json``."""
    return per_language_metric(read_json(path), metric, file=path)


def transfer_values(path: str, metric: str | None) -> dict[str, float]:
    """Per-language values to correlate with: a JSON object ``{language: number}``, or an eval
    ``results.json`` (then ``metric`` names which of its per-language metrics)."""
    obj = read_json(path)
    if isinstance(obj, dict) and "metrics" in obj:
        if not metric:
            raise UserError("this is a results.json: pass --transfer-metric", file=path, field="transfer-metric")
        return per_language_metric(obj, metric, file=path)
    if not isinstance(obj, dict) or not all(isinstance(v, (int, float)) for v in obj.values()):
        raise UserError("expected a JSON object {language: number}", file=path)
    return {str(k): float(v) for k, v in obj.items()}


def probe_data(path: str) -> tuple[list[str], list[int]]:
    """Texts and labels (1 toxic, 0 not) of a probe file: JSONL rows with ``text`` and ``label``."""
    texts, labels = [], []
    for line, obj in iter_jsonl(path):
        text, label = obj.get("text"), obj.get("label")
        if not isinstance(text, str) or not text.strip():
            raise UserError("expected a non-empty string", file=path, line=line, field="text")
        if label not in (0, 1, True, False):
            raise UserError(f"expected 0 or 1, got {label!r}", file=path, line=line, field="label")
        texts.append(text)
        labels.append(int(label))
    if not texts:
        raise UserError("no rows", file=path)
    return texts, labels


def texts_by_language(path: str) -> dict[str, list[str]]:
    """An evaluation prompt file's texts grouped by language (file order kept within a language)."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for prompt in load_eval_prompts(path, detect_language=False):
        grouped[prompt.language].append(prompt.text)
    return dict(grouped)


def language_subsets(variants: Sequence[PromptVariants], languages: list[str] | None,
                     extra: dict[str, list[str]]) -> dict[str, list[str]]:
    """Collinearity's language subsets: ``all`` (``languages``, else every language the variants
    hold, in order of first appearance) and then the named ``extra`` ones."""
    every = languages or list(dict.fromkeys(lang for v in variants for lang in v.prompts))
    return {"all": every, **extra}


@dataclass(frozen=True)
class RewardGapInput:
    """The pairs to score, the file's detected format and where the other rows went."""

    pairs: list[PreferencePair]
    format: str
    counts: dict[str, Any]


def reward_gap_pairs(path: str, *, language: str | None, detect_language: bool,
                     languages: list[str] | None) -> RewardGapInput:
    """Preference pairs from any preference format (an MPO pair gives its target and, once, its
    dominant pair), kept to ``languages`` when given; no pair left is a :class:`UserError`."""
    read = read_records(path, language=language, detect_language=detect_language)
    try:
        pairs = pairs_from_records(read.records)
    except UserError as exc:
        raise UserError(exc.message, file=path) from None
    n_read = len(pairs)
    if languages:
        pairs = [p for p in pairs if p.language in languages]
    if not pairs:
        raise UserError("no preference pairs (after the language filter)", file=path)
    counts = {"pairs_scored": len(pairs), "filtered_out_by_language": n_read - len(pairs),
              "skipped_by_reader": dict(read.skipped)}
    return RewardGapInput(pairs, read.format, counts)
