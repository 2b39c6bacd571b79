"""The project's canonical JSONL: one record per line, ``{"type": ..., **record.to_dict()}``.

``type`` is one of :data:`TYPES`. It is optional on input: without it the type is inferred
from the keys (``dominant``+``target`` -> parallel pair, ``prompts`` -> prompt variants,
``text``+``benchmark`` -> eval prompt, ``chosen`` -> preference pair). The writer always
emits it. Every field is checked for presence and type, so a hand-edited file fails with
the field named rather than a ``KeyError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polyalign.data.formats.common import Loc, get, iter_jsonl, language_code, parse_turns
from polyalign.data.formats.preference import prompt_text
from polyalign.data.records import EvalPrompt, ParallelPair, PreferencePair, PromptVariants
from polyalign.data.validation import Item, LangCheck, Record

TYPES: dict[type, str] = {
    PreferencePair: "preference_pair",
    ParallelPair: "parallel_pair",
    PromptVariants: "prompt_variants",
    EvalPrompt: "eval_prompt",
}
_BY_NAME = {name: cls for cls, name in TYPES.items()}


def canonical_row(record: Record) -> dict[str, Any]:
    """The canonical JSONL object for a record (``type`` first)."""
    return {"type": TYPES[type(record)], **record.to_dict()}


def record_type(obj: dict[str, Any], loc: Loc) -> str:
    """The ``type`` field, or the type inferred from the keys."""
    if "type" in obj:
        name = get(obj, "type", str, loc)
        if name not in _BY_NAME:
            raise loc.error("type", f"unknown record type {name!r} (expected one of {', '.join(_BY_NAME)})")
        return name
    if "dominant" in obj and "target" in obj:
        return "parallel_pair"
    if "prompts" in obj:
        return "prompt_variants"
    if "text" in obj and "benchmark" in obj:
        return "eval_prompt"
    if "chosen" in obj:
        return "preference_pair"
    raise loc.error("type", f"cannot tell the record type; add \"type\": one of {', '.join(_BY_NAME)}")


def _id(obj: dict[str, Any], loc: Loc, prefix: str) -> str:
    return str(get(obj, "id", (str, int), loc, field=prefix + "id"))


def _variants(raw: dict[str, Any], loc: Loc, field: str, record_id: str) -> tuple[PromptVariants, list[LangCheck]]:
    prompts, checks = {}, []
    for key, turns in raw.items():
        lang = language_code(key, loc, f"{field}.{key}")
        prompts[lang] = parse_turns(turns, loc, f"{field}.{key}")
        checks.append(LangCheck(f"{field}.{key}", prompt_text(prompts[lang]), lang))
    return PromptVariants(record_id, prompts), checks


def _pair(obj: Any, loc: Loc, prefix: str = "") -> tuple[PreferencePair, list[LangCheck]]:
    if not isinstance(obj, dict):
        raise loc.error(prefix.rstrip(".") or None, "expected an object")
    record_id = _id(obj, loc, prefix)
    language = language_code(get(obj, "language", str, loc, field=prefix + "language"), loc, prefix + "language")
    prompt = parse_turns(get(obj, "prompt", list, loc, field=prefix + "prompt"), loc, prefix + "prompt")
    chosen = get(obj, "chosen", str, loc, field=prefix + "chosen")
    rejected = get(obj, "rejected", str, loc, field=prefix + "rejected")
    metadata = get(obj, "metadata", dict, loc, required=False, field=prefix + "metadata") or {}
    checks = [LangCheck(prefix + "prompt", prompt_text(prompt), language)]
    variants = None
    raw_variants = get(obj, "variants", dict, loc, required=False, field=prefix + "variants")
    if raw_variants:
        variants, more = _variants(raw_variants, loc, prefix + "variants", record_id)
        checks.extend(c for c in more if c.language != language)  # base language checked once
    pair = PreferencePair(record_id, prompt, chosen, rejected, language, dict(metadata), variants)
    return pair, checks


def parse_canonical(obj: dict[str, Any], loc: Loc) -> tuple[Record, list[LangCheck]]:
    """One canonical object -> (record, declared-language checks)."""
    kind = record_type(obj, loc)
    if kind == "preference_pair":
        return _pair(obj, loc)
    if kind == "parallel_pair":
        dominant, checks_d = _pair(get(obj, "dominant", dict, loc), loc, "dominant.")
        target, checks_t = _pair(get(obj, "target", dict, loc), loc, "target.")
        return ParallelPair(_id(obj, loc, ""), dominant, target), checks_d + checks_t
    if kind == "prompt_variants":
        record_id = _id(obj, loc, "")
        return _variants(get(obj, "prompts", dict, loc), loc, "prompts", record_id)
    text = get(obj, "text", str, loc)
    language = language_code(get(obj, "language", str, loc), loc, "language")
    record = EvalPrompt(
        id=_id(obj, loc, ""), language=language, text=text, benchmark=get(obj, "benchmark", str, loc),
        category=get(obj, "category", str, loc, required=False),
        source_id=get(obj, "source_id", str, loc, required=False),
        metadata=dict(get(obj, "metadata", dict, loc, required=False) or {}),
    )
    return record, [LangCheck("text", text, language)]


def read_canonical(path: Path, **_: Any) -> Iterator[Item]:
    """Canonical JSONL -> records of any type (mixed types allowed)."""
    for loc, obj in iter_jsonl(path):
        record, checks = parse_canonical(obj, loc)
        yield Item(record, loc.file, loc.line, checks)
