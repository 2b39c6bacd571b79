"""Records -> tokenised training examples, with every skip counted and reported.

:func:`load_training_data` reads a data file with :func:`polyalign.data.readers.read_records`,
checks the records suit the method (MPO needs :class:`ParallelPair` records whose dominant
side is ``dominant_language`` and whose target side is another language), keeps the first
``max_examples`` and tokenises them (:mod:`polyalign.data.tokenize`). Reader skips and
tokenisation skips both end up in :class:`DataReport` and are logged; nothing is dropped
silently.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from polyalign.data.collate import example_length
from polyalign.data.readers import read_records
from polyalign.data.records import ParallelPair, PreferencePair
from polyalign.data.tokenize import (
    TokenizeSettings,
    TokenizeStats,
    tokenize_pair,
    tokenize_parallel_pair,
    tokenize_variants,
)
from polyalign.errors import UserError
from polyalign.io import file_fingerprint

log = logging.getLogger("polyalign.training")


class ExampleDataset(Dataset):
    """A list of tokenised examples (dicts), indexable by position and by example id."""

    def __init__(self, examples: list[dict[str, Any]]) -> None:
        self.examples = examples
        self.index = {str(e["id"]): i for i, e in enumerate(examples)}

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.examples[i]

    @property
    def ids(self) -> list[str]:
        return [str(e["id"]) for e in self.examples]

    @property
    def lengths(self) -> list[int]:
        return [example_length(e) for e in self.examples]

    def by_language(self) -> dict[str, ExampleDataset]:
        """One dataset per language (the target language for MPO examples)."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for e in self.examples:
            groups.setdefault(str(e.get("language", "")), []).append(e)
        return {lang: ExampleDataset(items) for lang, items in sorted(groups.items())}


@dataclass
class DataReport:
    """What happened to a data file on its way to training."""

    path: str
    fingerprint: str
    format: str
    records: int
    read_skipped: Counter = field(default_factory=Counter)
    limited_to: int | None = None
    tokenize: TokenizeStats = field(default_factory=TokenizeStats)
    variants: Any = None  # a polyalign.data.variants.VariantReport when the MLC term is on
    # {language: {records, kept, skipped, truncated_prompts, truncated_responses}}: what each
    # language loses at the configured lengths (MPO: the target language)
    per_language: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"{self.path}: {self.records} records ({self.format})"
        if self.read_skipped:
            text += f", reader skipped {sum(self.read_skipped.values())} ({dict(self.read_skipped)})"
        if self.limited_to is not None:
            text += f", limited to the first {self.limited_to}"
        text += "; tokenisation: " + self.tokenize.summary()
        lost = {k: v for k, v in self.per_language.items()
                if v["skipped"] or v["truncated_prompts"] or v["truncated_responses"]}
        if lost:
            text += "; per language (skipped / truncated prompts / truncated responses of records): " + ", ".join(
                f"{k} {v['skipped']}/{v['truncated_prompts']}/{v['truncated_responses']} of {v['records']}"
                for k, v in sorted(lost.items()))
        if self.variants is not None:
            text += "; MLC variants: " + self.variants.summary()
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "fingerprint": self.fingerprint, "format": self.format, "records": self.records,
                "read_skipped": dict(self.read_skipped), "limited_to": self.limited_to,
                "tokenize": self.tokenize.to_dict(),
                "variants": self.variants.to_dict() if self.variants is not None else None,
                "per_language": {k: dict(v) for k, v in self.per_language.items()}}


def check_parallel_pairs(records: list[ParallelPair], dominant_language: str, path: str | Path) -> None:
    """MPO records must pair a dominant-language example with a target-language one."""
    for r in records:
        if r.dominant.language != dominant_language:
            raise UserError(
                f"example {r.id}: the dominant side is in {r.dominant.language!r} but dominant_language is "
                f"{dominant_language!r} (misaligned dominant/target records)", file=path, field="dominant_language")
        if r.target.language == dominant_language:
            raise UserError(
                f"example {r.id}: the target side is in the dominant language {dominant_language!r}; MPO needs a "
                "different target language (misaligned dominant/target records)", file=path, field="language")


def _read(config: Any, path: str, fmt: str | None) -> tuple[list[Any], Any]:
    kwargs: dict[str, Any] = {"language": config.data_language, "detect_language": config.detect_language}
    if config.method == "mpo":
        kwargs["dominant_language"] = config.dominant_language
    result = read_records(path, fmt, **kwargs)
    kind = ParallelPair if config.method == "mpo" else PreferencePair
    wrong = Counter(type(r).__name__ for r in result.records if not isinstance(r, kind))
    if wrong:
        need = "MPO parallel pairs (dominant + target)" if kind is ParallelPair else "preference pairs"
        raise UserError(f"method {config.method} needs {need}, but this {result.format} data holds "
                        f"{dict(wrong)}", file=path, field="method")
    if not result.records:
        raise UserError(f"no usable records ({dict(result.skipped) or 'empty file'})", file=path)
    return list(result.records), result


def load_training_data(
    config: Any, tokenizer: Any, path: str, fmt: str | None = None, *, limit: int | None = None
) -> tuple[ExampleDataset, DataReport]:
    """Read, check, limit and tokenise ``path`` for ``config.method``."""
    records, result = _read(config, path, fmt)
    report = DataReport(path=str(path), fingerprint=file_fingerprint(path), format=result.format,
                        records=len(records), read_skipped=Counter(result.skipped))
    if limit is not None:
        records = records[:limit]
        report.limited_to = limit
    ids = Counter(r.id for r in records)
    duplicates = [i for i, n in ids.items() if n > 1]
    if duplicates:
        raise UserError(f"duplicate example ids {duplicates[:5]} (ids key the reference cache)", file=path, field="id")
    if config.method == "mpo":
        check_parallel_pairs(records, config.dominant_language, path)
    settings = tokenize_settings(config)
    mlc = bool(getattr(config, "mlc_enabled", False))
    if mlc:
        # Prompt variants for the MLC term; every record is kept (missing languages masked, counted).
        from polyalign.training.mlc_policy import attach_mlc_variants

        variants, report.variants = attach_mlc_variants(records, config, str(path))
    else:
        variants = [None] * len(records)
    examples = []
    stats = report.tokenize
    for record, record_variants in zip(records, variants):
        before = (sum(stats.skipped.values()), stats.truncated_prompts, stats.truncated_responses)
        if isinstance(record, ParallelPair):
            example = tokenize_parallel_pair(record, tokenizer, settings, report.tokenize)
        else:
            example = tokenize_pair(record, tokenizer, settings, report.tokenize)
        if example is not None and mlc:
            example["variant_input_ids"] = (tokenize_variants(record_variants, tokenizer, settings)
                                            if record_variants is not None else {})
        if example is not None:
            examples.append(example)
        language = record.target.language if isinstance(record, ParallelPair) else record.language
        row = report.per_language.setdefault(language, {"records": 0, "kept": 0, "skipped": 0, "truncated_prompts": 0,
                                                        "truncated_responses": 0})
        row["records"] += 1
        row["kept"] += example is not None
        row["skipped"] += sum(stats.skipped.values()) - before[0]
        row["truncated_prompts"] += stats.truncated_prompts - before[1]
        row["truncated_responses"] += stats.truncated_responses - before[2]
    if report.read_skipped or report.tokenize.skipped:
        log.warning("%s", report.summary())
    else:
        log.info("%s", report.summary())
    if not examples:
        raise UserError(f"every example was skipped: {report.tokenize.summary()}", file=path, field="max_length")
    return ExampleDataset(examples), report


def tokenize_settings(config: Any) -> TokenizeSettings:
    return TokenizeSettings(
        max_length=config.max_length,
        max_prompt_length=config.max_prompt_length,
        truncation_mode=config.truncation_mode,
        on_overlong=config.on_overlong,
        prefix_mismatch=config.prefix_mismatch,
        chat_template=config.chat_template,
    )
