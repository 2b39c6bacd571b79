"""Generic JSONL / CSV with a column map (record field -> the file's column).

``column_map`` keys (values are the file's column names):

* eval prompts: ``text`` (required), optional ``id``, ``language``, ``category``,
  ``source_id``, ``benchmark``; e.g. AdvBench ``harmful_behaviors.csv``: ``{"text": "goal"}``.
* preference pairs: ``prompt``, ``chosen``, ``rejected`` (required), optional ``id``,
  ``language``, ``system``.

Unmapped columns go to ``metadata``. ``benchmark`` defaults to the file stem; ``id`` to the
0-based row index; language to the mapped column, else ``language=``, else lingua's guess.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from polyalign.data.formats.common import Loc, is_blank, iter_csv, iter_jsonl, language_code, parse_turns, type_name
from polyalign.data.formats.preference import UNKNOWN_LANGUAGE, prompt_text
from polyalign.data.langdetect import detect_language as _detect
from polyalign.data.records import EvalPrompt, Message, PreferencePair
from polyalign.data.validation import EMPTY, Item, LangCheck, Skip
from polyalign.errors import UserError

EVAL_KEYS = ("text", "id", "language", "category", "source_id", "benchmark")
PAIR_KEYS = ("prompt", "chosen", "rejected", "id", "language", "system")


def check_column_map(column_map: dict[str, str] | None, path: Path) -> str:
    """Validate the map's keys; return ``"pair"`` or ``"eval"``."""
    if not column_map:
        raise UserError("generic JSONL/CSV needs a column map, e.g. --column-map text=goal or "
                        "--column-map prompt=question,chosen=good,rejected=bad", file=path, field="column_map")
    kind = "pair" if "chosen" in column_map or "rejected" in column_map else "eval"
    allowed = PAIR_KEYS if kind == "pair" else EVAL_KEYS
    for key in column_map:
        if key not in allowed:
            raise UserError(f"unknown column_map key for {kind} records (expected {', '.join(allowed)})",
                            file=path, field=key)
    for key in (("prompt", "chosen", "rejected") if kind == "pair" else ("text",)):
        if key not in column_map:
            raise UserError(f"column_map lacks required key {key!r}", file=path, field=key)
    return kind


def _rows(path: Path, fmt: str, column_map: dict[str, str]) -> Iterator[tuple[Loc, dict[str, Any] | None]]:
    if fmt == "jsonl":
        for loc, obj in iter_jsonl(path):
            for key, column in column_map.items():
                if column not in obj:
                    raise loc.error(column, f"missing column mapped to {key!r}")
            yield loc, obj
        return
    rows = iter_csv(path, keep_blank=True)
    header_line, header = next(rows)
    for key, column in column_map.items():
        if column not in header:
            raise UserError(f"column_map maps {key!r} to a column that is not in the header "
                            f"(header has: {', '.join(header)})", file=path, line=header_line, field=column)
    for line, row in rows:
        if is_blank(row):
            yield Loc(str(path), line), None
            continue
        if len(row) != len(header):
            raise UserError(f"expected {len(header)} columns like the header, got {len(row)}", file=path, line=line)
        yield Loc(str(path), line), dict(zip(header, row))


def _text(obj: dict[str, Any], column: str, loc: Loc) -> str:
    value = obj[column]
    if not isinstance(value, str):
        raise loc.error(column, f"expected a string, got {type_name(value)}")
    return value


def read_generic(path: Path, *, fmt: str, column_map: dict[str, str] | None = None, language: str | None = None,
                 detect_language: bool = True, **_: Any) -> Iterator[Item | Skip]:
    """Generic ``fmt`` (``jsonl`` or ``csv``) rows -> EvalPrompt or PreferencePair."""
    kind = check_column_map(column_map, path)
    assert column_map is not None
    declared = language_code(language, Loc(str(path), None), "language") if language else None
    mapped = set(column_map.values())
    parsed: list[tuple[Item | Skip, str | None]] = []
    for index, (loc, obj) in enumerate(_rows(path, fmt, column_map)):
        if obj is None:  # a CSV row of empty cells: counted and located, never dropped silently
            parsed.append((Skip(loc.file, loc.line, None, EMPTY, "row with no text in any column", declared), None))
            continue
        row_id = str(obj[column_map["id"]]) if "id" in column_map else str(index)
        metadata = {k: v for k, v in obj.items() if k not in mapped}
        if kind == "pair":
            raw_prompt = obj[column_map["prompt"]]
            if isinstance(raw_prompt, list):
                prompt = parse_turns(raw_prompt, loc, column_map["prompt"])
            else:
                prompt = (Message("user", _text(obj, column_map["prompt"], loc)),)
            if "system" in column_map and _text(obj, column_map["system"], loc):
                prompt = (Message("system", _text(obj, column_map["system"], loc)),) + prompt
            text = prompt_text(prompt)
        else:
            text = _text(obj, column_map["text"], loc)
        column_lang = _text(obj, column_map["language"], loc) if "language" in column_map else None
        lang = language_code(column_lang, loc, column_map["language"]) if column_lang else declared
        checks = [LangCheck(column_map["prompt" if kind == "pair" else "text"], text, lang)] if lang else []
        if lang is None and not detect_language:
            raise loc.error("language", "no language: map a language column, pass language= (--language) "
                            "or allow language detection")
        if kind == "pair":
            record: Any = PreferencePair(
                id=row_id, prompt=prompt, chosen=_text(obj, column_map["chosen"], loc),
                rejected=_text(obj, column_map["rejected"], loc), language=lang or UNKNOWN_LANGUAGE,
                metadata=metadata)
        else:
            def optional(key: str, row: Any = obj) -> str | None:  # row bound now, not looked up later (B023)
                return str(row[column_map[key]]) if key in column_map and row[column_map[key]] is not None else None

            record = EvalPrompt(id=row_id, language=lang or UNKNOWN_LANGUAGE, text=text,
                                benchmark=optional("benchmark") or path.stem,
                                category=optional("category"), source_id=optional("source_id"), metadata=metadata)
        parsed.append((Item(record, loc.file, loc.line, checks), text if lang is None else None))
    for item, undetected in parsed:  # detection after parsing: structural errors come first
        if undetected is not None and isinstance(item, Item):
            item.record = replace(item.record, language=_detect(undetected) or UNKNOWN_LANGUAGE)
        yield item
