"""Multiway-parallel prompt files: a folder with one file per language, line i being the
same prompt in every file -> one :class:`PromptVariants` per line (``id`` = 0-based line
index).

File kinds: ``.txt`` (one prompt per line, named e.g. ``de.txt``) or ``.jsonl``/``.json``
(one object per line with the text in the ``column_map["text"]`` field, else the only
string field, else ``Prompt``/``prompt``/``text``). The language of each file is the part
of its name that differs between files, e.g. ``dpo_toxicity_pairwise_<lang>_200.jsonl``.

A single file of such a folder is read on its own (one language; ids are still the line
index, so they match the other files'): its language is the one token of its name that
is a known language code (``..._de_200.jsonl`` -> ``de``), else ``language=``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polyalign.data.formats.common import (
    Loc,
    iter_jsonl,
    known_language,
    language_code,
    read_text,
    type_name,
    user_prompt,
)
from polyalign.data.records import PromptVariants
from polyalign.data.validation import Item, LangCheck
from polyalign.errors import UserError

PARALLEL_SUFFIXES = (".txt", ".jsonl", ".json")
_TEXT_KEYS = ("Prompt", "prompt", "text")


def _tokens(name: str) -> list[str]:
    return name.replace(".", "_").split("_")


def parallel_files(folder: Path) -> list[tuple[Path, str]]:
    """``(file, language)`` per file: language = the tokens (split on ``_``) left after
    removing the tokens every file name shares at its start and end."""
    by_suffix = Counter(p.suffix for p in folder.iterdir() if p.is_file() and p.suffix in PARALLEL_SUFFIXES)
    if not by_suffix:
        raise UserError("no .txt/.jsonl files for multiway-parallel data in this folder", file=folder)
    suffix = by_suffix.most_common(1)[0][0]
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == suffix)
    if len(files) < 2:
        raise UserError(f"multiway-parallel data needs at least two {suffix} files (one per language)",
                        file=folder)
    stems = [_tokens(p.stem) for p in files]
    head = 0
    while all(len(s) > head + 1 and s[head] == stems[0][head] for s in stems):
        head += 1
    tail = 0
    while all(len(s) > head + tail + 1 and s[-1 - tail] == stems[0][-1 - tail] for s in stems):
        tail += 1
    out = []
    for file, stem in zip(files, stems):
        middle = "_".join(stem[head:len(stem) - tail])
        out.append((file, language_code(middle, Loc(str(file), None), "file name")))
    seen: dict[str, Path] = {}
    for file, lang in out:
        if lang in seen:
            raise UserError(f"language {lang!r} twice: also {seen[lang].name}", file=file, field="file name")
        seen[lang] = file
    return out


def _lines(file: Path, text_field: str | None) -> list[tuple[int, str]]:
    """``(line number, text)`` for each prompt of one file."""
    if file.suffix == ".txt":
        text = read_text(file)
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        return [(i, line.rstrip("\r")) for i, line in enumerate(lines, start=1)]
    out = []
    for loc, obj in iter_jsonl(file):
        key = text_field
        if key is None:
            strings = [k for k, v in obj.items() if isinstance(v, str)]
            key = strings[0] if len(strings) == 1 else next((k for k in _TEXT_KEYS if k in obj), None)
        if key is None or key not in obj:
            raise loc.error(key or "text", "missing text field; pass column_map={'text': <field>} (--column-map)")
        if not isinstance(obj[key], str):
            raise loc.error(key, f"expected a string, got {type_name(obj[key])}")
        out.append((loc.line, obj[key]))
    return out


def name_language(file: Path) -> str | None:
    """The one token of a file name that is a known language code, else None."""
    found = {known_language(t) for t in _tokens(file.stem) if len(t) in (2, 3) and t.isalpha()} - {None}
    return found.pop() if len(found) == 1 else None


def single_parallel_file(path: Path, first: dict[str, Any]) -> bool:
    """Whether a JSONL file looks like one file of a multiway-parallel folder: objects with
    one text field (``Prompt``/``prompt``/``text``) and a language code in the name."""
    return (len(first) == 1 and next(iter(first)) in _TEXT_KEYS and isinstance(next(iter(first.values())), str)
            and name_language(path) is not None)


def read_parallel(path: Path, *, column_map: dict[str, str] | None = None, language: str | None = None,
                  **_: Any) -> Iterator[Item]:
    """A folder of multiway-parallel files -> PromptVariants per line; every file must
    have the same number of prompts (else a UserError naming the file and both counts).
    A single file gives one-language PromptVariants (see the module docstring)."""
    if path.is_file():
        lang = language or name_language(path)
        if lang is None:
            raise UserError("cannot tell the language of this file from its name; pass language= (--language)",
                            file=path, field="language")
        files = [(path, language_code(lang, Loc(str(path), None), "language"))]
    elif not path.is_dir():
        raise UserError("multiway-parallel data is a folder of files, one per language", file=path)
    else:
        files = parallel_files(path)
    text_field = (column_map or {}).get("text")
    columns = {lang: (file, _lines(file, text_field)) for file, lang in files}
    first_lang = next(iter(columns))
    first_file, first_lines = columns[first_lang]
    for file, lines in columns.values():
        if len(lines) != len(first_lines):
            raise UserError(
                f"{len(lines)} prompts, but {first_file.name} has {len(first_lines)}; multiway-parallel files "
                "must have the same number of lines", file=file, line=min(len(lines), len(first_lines)) + 1,
            )
    for index in range(len(first_lines)):
        prompts = {lang: user_prompt(lines[index][1]) for lang, (_, lines) in columns.items()}
        checks = [LangCheck(f"{lang}", lines[index][1], lang) for lang, (_, lines) in columns.items()]
        yield Item(PromptVariants(id=str(index), prompts=prompts), str(path), first_lines[index][0], checks,
                   label=f"prompt {index}")
