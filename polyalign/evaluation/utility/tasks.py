"""Utility tasks as data: local JSONL/CSV files plus a column mapping.

A :class:`UtilityTask` says where the items are, which columns hold what, and how a prompt
is built. Two kinds:

- ``multiple_choice``: ``question``, ``choices`` (one list column -- a JSON list, also as a
  JSON string in CSV -- or several columns, one per choice), ``answer`` (0-based index, or a
  letter ``A``/``B``/... when ``answer_format`` is ``letter``; ``auto`` accepts both),
  ``language``. Scored by log-likelihood (:mod:`~polyalign.evaluation.utility.multiple_choice`).
- ``exact_match``: ``question``, ``answer``, ``language``. Scored by greedy generation and
  answer extraction (:mod:`~polyalign.evaluation.utility.exact_match`).

Prompt: ``context`` is ``template`` with ``{question}`` replaced by the question; a
multiple-choice continuation is ``target_delimiter + choice`` (lm-evaluation-harness
convention: ``target_delimiter=" "``, so ``"Answer:" + " Paris"``). A task is given as a
:class:`UtilityTask`, the name of a registered task (:func:`register_task`), a YAML file with the same fields (``path``
relative to the YAML's folder), or a data file (columns named as the defaults; the kind is
``multiple_choice`` when it has a ``choices`` column).

Every row becomes an item or a :class:`~polyalign.errors.UserError` naming file, line and
field: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from polyalign.data.languages import canonical_language
from polyalign.errors import UserError
from polyalign.io import iter_jsonl, read_text_strict

KINDS = ("multiple_choice", "exact_match")
ANSWER_FORMATS = ("auto", "index", "letter")
ANSWER_TYPES = ("number", "text")


@dataclass(frozen=True)
class UtilityTask:
    """One utility task (see the module docstring for the meaning of each field).

    ``choices`` is one column name (a list column) or a tuple of column names (one choice
    each). ``language`` is used for rows without a language column value. ``chat_template``
    renders the context as one user turn plus the generation prompt (default: off for
    multiple choice, as lm-eval does; on for generation, which chat models need).
    """

    name: str
    kind: str
    path: str
    format: str | None = None  # "jsonl" | "csv"; None: from the file suffix
    question: str = "question"
    choices: str | tuple[str, ...] = "choices"
    answer: str = "answer"
    language_column: str = "language"
    id_column: str = "id"
    language: str | None = None
    answer_format: str = "auto"
    answer_type: str = "number"
    template: str = "{question}"
    target_delimiter: str = " "
    chat_template: bool | None = None
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown task kind {self.kind!r}; use one of {', '.join(KINDS)}", field="kind")
        if self.answer_format not in ANSWER_FORMATS:
            raise UserError(f"answer_format must be one of {', '.join(ANSWER_FORMATS)}", field="answer_format")
        if self.answer_type not in ANSWER_TYPES:
            raise UserError(f"answer_type must be one of {', '.join(ANSWER_TYPES)}", field="answer_type")
        if "{question}" not in self.template:
            raise UserError("template must contain {question}", field="template")
        if isinstance(self.choices, list):
            object.__setattr__(self, "choices", tuple(self.choices))

    @property
    def use_chat_template(self) -> bool:
        return self.chat_template if self.chat_template is not None else self.kind == "exact_match"

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["choices"] = list(self.choices) if isinstance(self.choices, tuple) else self.choices
        return out


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice item; ``answer`` is the 0-based index of the gold choice."""

    id: str
    language: str
    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class EMItem:
    """A generation item; ``answer`` is the gold answer as written in the file."""

    id: str
    language: str
    question: str
    answer: str


_REGISTRY: dict[str, UtilityTask] = {}


def register_task(task: UtilityTask) -> UtilityTask:
    """Add ``task`` to the registry under ``task.name`` (replacing one of the same name)."""
    _REGISTRY[task.name] = task
    return task


def list_tasks() -> dict[str, UtilityTask]:
    """The registered tasks, by name."""
    return dict(_REGISTRY)


def load_task_spec(path: str | Path) -> UtilityTask:
    """A :class:`UtilityTask` from a YAML file; a relative ``path`` is resolved next to it."""
    spec_file = Path(path)
    try:
        data = yaml.safe_load(read_text_strict(spec_file))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"invalid YAML: {exc}", file=spec_file, line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise UserError("a task file must be a mapping", file=spec_file)
    known = {f.name for f in fields(UtilityTask)}
    for key in data:
        if key not in known:
            raise UserError(f"unknown key; known: {', '.join(sorted(known))}", file=spec_file, field=key)
    for key in ("kind", "path"):
        if key not in data:
            raise UserError("missing required key", file=spec_file, field=key)
    data.setdefault("name", spec_file.stem)
    data_path = Path(str(data["path"]))
    if not data_path.is_absolute():
        data["path"] = str((spec_file.parent / data_path).resolve())
    try:
        return UtilityTask(**data)
    except UserError as exc:
        raise UserError(exc.message, file=spec_file, field=exc.field) from None


def resolve_task(task_or_path: UtilityTask | str | Path, **overrides: Any) -> UtilityTask:
    """A task object from a task, a registered name, a YAML spec, or a JSONL/CSV data file.

    ``overrides`` replace fields (e.g. ``template=...``, ``language="sw"``).
    """
    if isinstance(task_or_path, UtilityTask):
        task = task_or_path
    elif str(task_or_path) in _REGISTRY:
        task = _REGISTRY[str(task_or_path)]
    else:
        path = Path(task_or_path)
        if not path.exists():
            raise UserError(f"not a registered utility task ({', '.join(sorted(_REGISTRY)) or 'none registered'}) "
                            "and no such file", file=path)
        if path.suffix.lower() in (".yaml", ".yml"):
            task = load_task_spec(path)
        else:  # a bare data file: the overrides describe it (kind guessed unless given)
            kind = overrides.pop("kind", None) or ("multiple_choice" if "choices" in overrides else _guess_kind(path))
            try:
                return UtilityTask(**{"name": path.stem, "kind": kind, "path": str(path), **overrides})
            except TypeError as exc:
                raise UserError(f"bad task option: {exc}", file=path) from None
    try:
        return replace(task, **overrides) if overrides else task
    except TypeError as exc:
        raise UserError(f"bad task option: {exc}", field=task.name) from None


def _file_format(task: UtilityTask) -> str:
    fmt = task.format or {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}.get(Path(task.path).suffix.lower())
    if fmt not in ("jsonl", "csv"):
        raise UserError("cannot tell the format from the suffix; set format: jsonl or csv", file=task.path,
                        field="format")
    return fmt


def _iter_rows(task: UtilityTask) -> list[tuple[int, dict[str, Any]]]:
    if _file_format(task) == "jsonl":
        return list(iter_jsonl(task.path))
    text = read_text_strict(task.path, encoding="utf-8-sig")
    reader = csv.DictReader(text.splitlines())
    # DictReader's line_num counts physical lines read, so it names the row's last line.
    return [(reader.line_num, dict(row)) for row in reader]


def _guess_kind(path: Path) -> str:
    probe = UtilityTask(name=path.stem, kind="exact_match", path=str(path))
    rows = _iter_rows(probe)
    if not rows:
        raise UserError("data file has no rows", file=path)
    return "multiple_choice" if "choices" in rows[0][1] else "exact_match"


def _text(row: dict[str, Any], column: str, task: UtilityTask, line: int) -> str:
    if column not in row or row[column] is None:
        raise UserError("missing column", file=task.path, line=line, field=column)
    value = row[column]
    if isinstance(value, (dict, list)):
        raise UserError(f"expected text, got {type(value).__name__}", file=task.path, line=line, field=column)
    text = str(value)
    if not text.strip():
        raise UserError("empty value", file=task.path, line=line, field=column)
    return text


def _choices(row: dict[str, Any], task: UtilityTask, line: int) -> tuple[str, ...]:
    if isinstance(task.choices, tuple):
        values = [_text(row, column, task, line) for column in task.choices]
    else:
        raw = row.get(task.choices)
        if isinstance(raw, str):  # CSV: a JSON list in one cell
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                raise UserError("expected a JSON list of choices", file=task.path, line=line,
                                field=task.choices) from None
        if not isinstance(raw, list):
            raise UserError("missing or not a list", file=task.path, line=line, field=task.choices)
        values = [str(v) for v in raw]
    if len(values) < 2:
        raise UserError("need at least two choices", file=task.path, line=line, field=str(task.choices))
    if any(not v.strip() for v in values):
        raise UserError("empty choice", file=task.path, line=line, field=str(task.choices))
    return tuple(values)


def _answer_index(raw: Any, n_choices: int, task: UtilityTask, line: int) -> int:
    fmt = task.answer_format
    index: int | None = None
    if isinstance(raw, bool):
        index = None
    elif isinstance(raw, int) and fmt != "letter":
        index = raw
    elif isinstance(raw, str):
        text = raw.strip()
        if fmt != "letter" and text.lstrip("-").isdigit():
            index = int(text)
        elif fmt != "index" and len(text) == 1 and text.upper().isalpha() and text.isascii():
            index = ord(text.upper()) - ord("A")
    if index is None:
        raise UserError(f"answer {raw!r} is not a {'choice index or letter' if fmt == 'auto' else fmt}",
                        file=task.path, line=line, field=task.answer)
    if not 0 <= index < n_choices:
        raise UserError(f"answer {raw!r} is out of range for {n_choices} choices", file=task.path, line=line,
                        field=task.answer)
    return index


def _language(row: dict[str, Any], task: UtilityTask, line: int) -> str:
    raw = row.get(task.language_column) or task.language
    if not raw:
        raise UserError("no language: add the column or set the task's language", file=task.path, line=line,
                        field=task.language_column)
    try:
        return canonical_language(str(raw))
    except ValueError as exc:
        raise UserError(str(exc), file=task.path, line=line, field=task.language_column) from None


def load_items(task: UtilityTask, *, languages: list[str] | None = None) -> list[MCItem] | list[EMItem]:
    """All items of ``task`` in file order (only ``languages`` when given).

    Ids default to ``"<line>"``; a duplicated id is a :class:`UserError`.
    """
    wanted = {canonical_language(lang) for lang in languages} if languages else None
    items: list[Any] = []
    seen: dict[str, int] = {}
    for line, row in _iter_rows(task):
        item_id = str(row.get(task.id_column) or line)
        if item_id in seen:
            raise UserError(f"duplicate id {item_id!r} (first on line {seen[item_id]})", file=task.path, line=line,
                            field=task.id_column)
        seen[item_id] = line
        language = _language(row, task, line)
        question = _text(row, task.question, task, line)
        if task.kind == "multiple_choice":
            choices = _choices(row, task, line)
            if task.answer not in row:
                raise UserError("missing column", file=task.path, line=line, field=task.answer)
            answer = _answer_index(row[task.answer], len(choices), task, line)
            item: Any = MCItem(item_id, language, question, choices, answer)
        else:
            item = EMItem(item_id, language, question, _text(row, task.answer, task, line))
        if wanted is None or language in wanted:
            items.append(item)
    if not items:
        raise UserError("no items" + (f" in languages {sorted(wanted)}" if wanted else ""), file=task.path)
    return items


def render_context(tokenizer: Any, task: UtilityTask, question: str) -> str:
    """The context string: the template filled in, optionally as a chat user turn."""
    # plain replacement, not str.format: templates may hold other braces (code, JSON examples)
    text = task.template.replace("{question}", question)
    if not task.use_chat_template:
        return text
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError("task asks for the chat template but the tokenizer has none", field="chat_template")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)
