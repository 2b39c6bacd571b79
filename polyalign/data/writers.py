"""Write records as canonical JSONL, TRL preference JSONL, or official MPO JSON (atomically).

Each writer is the inverse of its reader: ``read -> write -> read`` gives equal records.

* ``canonical``: any records, one ``{"type": ..., **to_dict()}`` per line.
* ``trl``: TRL's conversational preference form, one row per pair:
  ``{"id", "language", "prompt": [{"role", "content"}, ...], "chosen": [{"role":
  "assistant", "content"}], "rejected": [...]}`` plus ``"variants"`` (language -> turns)
  and ``"metadata"`` when present. A :class:`ParallelPair` becomes two rows (dominant,
  then target). Eval prompts / bare variants cannot be written as TRL.
* ``mpo``: the official JSON list (``source_*``/``target_*``, ShareGPT turns), indented
  like the released files. Only :class:`ParallelPair`. The format has no place for
  languages (the reader re-detects the target side, ``dominant_language`` must be passed
  again) nor metadata; an ``"id"`` key is added only to items whose id is not their
  list position, so re-reading keeps ids.
* ``llamafactory`` / ``llamafactory-alpaca``: LLaMA-Factory preference data as one JSON
  array (sharegpt: ``conversations`` + ``chosen``/``rejected`` turns; alpaca:
  ``instruction`` + ``chosen``/``rejected`` strings, earlier turns in ``history``), with
  ``id`` and ``language`` kept as extra keys; see :mod:`polyalign.data.formats.llamafactory`.
  A :class:`ParallelPair` becomes two items, like TRL.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from polyalign.data.formats.canonical import canonical_row
from polyalign.data.formats.common import message_dicts_sharegpt
from polyalign.data.formats.llamafactory import alpaca_item, sharegpt_item
from polyalign.data.records import ParallelPair, PreferencePair, messages_to_dicts
from polyalign.data.validation import Record
from polyalign.errors import UserError
from polyalign.io import atomic_write_jsonl, atomic_write_text

WRITE_FORMATS = ("canonical", "trl", "mpo", "llamafactory", "llamafactory-alpaca")


def trl_row(pair: PreferencePair) -> dict[str, Any]:
    """One TRL conversational preference row."""
    row: dict[str, Any] = {
        "id": pair.id,
        "language": pair.language,
        "prompt": messages_to_dicts(pair.prompt),
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
    }
    if pair.variants is not None:
        row["variants"] = pair.variants.to_dict()["prompts"]
    if pair.metadata:
        row["metadata"] = dict(pair.metadata)
    return row


def _wrong(record: Record, index: int, fmt: str, wanted: str) -> UserError:
    return UserError(f"the {fmt} format holds {wanted}; record {index} (id {record.id!r}) is of type "
                     f"{type(record).__name__}", field="records")


def trl_rows(records: Iterable[Record], row: Any = trl_row, fmt: str = "trl") -> Iterator[dict[str, Any]]:
    """TRL rows (or ``row(pair)``) for pairs and parallel pairs (a UserError for any other record)."""
    for index, record in enumerate(records):
        try:
            if isinstance(record, ParallelPair):
                yield row(record.dominant)
                yield row(record.target)
            elif isinstance(record, PreferencePair):
                yield row(record)
            else:
                raise _wrong(record, index, fmt, "preference pairs")
        except ValueError as exc:
            raise UserError(f"record {index}: {exc}", field="records") from None


def mpo_item(pair: ParallelPair, position: int) -> dict[str, Any]:
    """One official MPO item (ShareGPT turns ``{"from": "human"|"gpt", "value"}``)."""
    item: dict[str, Any] = {} if pair.id == str(position) else {"id": pair.id}
    for side, half in (("source", pair.dominant), ("target", pair.target)):
        item[f"{side}_conversations"] = message_dicts_sharegpt(half.prompt)
        item[f"{side}_chosen"] = {"from": "gpt", "value": half.chosen}
        item[f"{side}_rejected"] = {"from": "gpt", "value": half.rejected}
    # Keep the released files' key order: conversations, chosen, rejected per side.
    order = ["id"] + [f"{s}_{k}" for s in ("source", "target") for k in ("conversations", "chosen", "rejected")]
    return {k: item[k] for k in order if k in item}


def mpo_items(records: Iterable[Record]) -> list[dict[str, Any]]:
    out = []
    for index, record in enumerate(records):
        if not isinstance(record, ParallelPair):
            raise _wrong(record, index, "mpo", "parallel (MPO) pairs")
        out.append(mpo_item(record, index))
    return out


def unrepresentable(records: Iterable[Record], to: str) -> Counter:
    """What writing ``records`` as ``to`` cannot keep, as ``{what: number of records}``."""
    lost: Counter = Counter()
    if to != "mpo":
        return lost
    for record in records:
        if isinstance(record, ParallelPair):
            if record.dominant.metadata or record.target.metadata:
                lost["metadata"] += 1
            if record.dominant.variants or record.target.variants:
                lost["variants"] += 1
    return lost


def write_records(records: Iterable[Record], path: str | Path, to: str = "canonical") -> int:
    """Write ``records`` to ``path`` in format ``to`` atomically; return the rows written
    (JSONL lines, or MPO list items)."""
    records = list(records)
    try:
        return _write(records, path, to)
    except UserError as exc:
        if exc.file is not None:
            raise
        raise UserError(exc.message, file=path, line=exc.line, field=exc.field) from None


def _write(records: list[Record], path: str | Path, to: str) -> int:
    if to == "canonical":
        rows = [canonical_row(r) for r in records]
        atomic_write_jsonl(path, rows)
    elif to == "trl":
        rows = list(trl_rows(records))
        atomic_write_jsonl(path, rows)
    elif to == "mpo":
        rows = mpo_items(records)
        atomic_write_text(path, json.dumps(rows, ensure_ascii=False, indent=4) + "\n")
    elif to in ("llamafactory", "llamafactory-alpaca"):
        item = sharegpt_item if to == "llamafactory" else alpaca_item
        rows = list(trl_rows(records, item, to))
        atomic_write_text(path, json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
    else:
        raise UserError(f"unknown output format {to!r} (expected one of {', '.join(WRITE_FORMATS)})", field="to")
    return len(rows)


def write_canonical(records: Iterable[Record], path: str | Path) -> int:
    return write_records(records, path, "canonical")


def write_trl(records: Iterable[Record], path: str | Path) -> int:
    return write_records(records, path, "trl")


def write_mpo(records: Iterable[Record], path: str | Path) -> int:
    return write_records(records, path, "mpo")

