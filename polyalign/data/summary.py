"""What ``polyalign data inspect`` reports about a data set that was read: counts and lengths."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from typing import Any

from polyalign.data.formats.preference import prompt_text
from polyalign.data.readers import ReadResult
from polyalign.data.records import EvalPrompt, ParallelPair, PreferencePair, PromptVariants, record_parts


def language_counts(records: Iterable[Any]) -> Counter:
    """Records having text in each language (a parallel pair counts for both its
    languages; MLC pairs and prompt variants for each prompt language)."""
    counts: Counter = Counter()
    for record in records:
        if isinstance(record, ParallelPair):
            counts.update({record.dominant.language, record.target.language})
        elif isinstance(record, PreferencePair):
            counts.update({record.language} | set(record.variants.prompts if record.variants else ()))
        elif isinstance(record, PromptVariants):
            counts.update(set(record.prompts))
        elif isinstance(record, EvalPrompt):
            counts[record.language] += 1
    return counts


def length_stats(records: Iterable[Any]) -> dict[str, dict[str, float]]:
    """Character lengths ``{"prompt"|"chosen"|"rejected": {"n", "min", "median", "max"}}``; a prompt
    of several turns counts its user turns joined (:func:`~polyalign.data.formats.preference.prompt_text`)."""
    texts: dict[str, list[int]] = {"prompt": [], "chosen": [], "rejected": []}
    for _, role, content in record_parts(records):
        texts[role].append(len(content if isinstance(content, str) else prompt_text(content)))
    return {name: {"n": len(v), "min": min(v), "median": statistics.median(v), "max": max(v)}
            for name, v in texts.items() if v}


def summarize(result: ReadResult) -> dict[str, Any]:
    """The JSON-ready summary ``data inspect`` prints: format, rows, records, skips, languages,
    lengths and every problem."""
    return {
        "path": str(result.path),
        "format": result.format,
        "rows": result.tally.total(),
        "rows_per_language": result.tally.to_dict(),
        "notes": list(result.notes),
        "records": len(result.records),
        "record_types": dict(result.record_types()),
        "skipped": dict(result.skipped),
        "languages": dict(sorted(language_counts(result.records).items())),
        "lengths": length_stats(result.records),
        "problems": [str(p) for p in result.problems],
    }
