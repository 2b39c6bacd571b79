"""LLaMA-Factory preference data (``ranking: true`` in its ``dataset_info.json``; format
documented in LLaMA-Factory's ``data/README.md``), a JSON array or JSON Lines:

* **sharegpt** style: ``{"conversations": [{"from": "human", "value": ...}, ...],
  "chosen": {"from": "gpt", "value": ...}, "rejected": {"from": "gpt", "value": ...},
  "system": optional}``; roles ``human``/``gpt``/``system`` (``observation`` and
  ``function_call`` turns are not preference-data roles here: an error naming the turn).
* **alpaca** style: ``{"instruction": ..., "input": optional, "chosen": ..., "rejected":
  ..., "system": optional, "history": optional [[user, assistant], ...]}``; the user turn
  is ``instruction`` and ``input`` joined by a newline, as LLaMA-Factory does.

Both read into :class:`PreferencePair` (id = an ``id`` field, else the 0-based item index;
language = a ``language`` field, else ``language=``, else lingua's guess) and are written
back by :mod:`polyalign.data.writers` (``--to llamafactory`` / ``llamafactory-alpaca``).
Other keys go to ``metadata``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polyalign.data.formats.common import Loc, get, iter_jsonl, language_code, parse_turns
from polyalign.data.formats.preference import UNKNOWN_LANGUAGE, labelled_pairs, response_text
from polyalign.data.records import Message, PreferencePair
from polyalign.data.validation import Item

SHAREGPT_KEYS = ("conversations", "chosen", "rejected")
ALPACA_KEYS = ("instruction", "chosen", "rejected")
_OWN = {"conversations", "instruction", "input", "chosen", "rejected", "system", "history", "id", "language"}


def llamafactory_style(keys: set[str]) -> str | None:
    """``"sharegpt"`` / ``"alpaca"`` for an item's keys, else None."""
    if set(SHAREGPT_KEYS) <= keys:
        return "sharegpt"
    if set(ALPACA_KEYS) <= keys:
        return "alpaca"
    return None


def _sharegpt_prompt(obj: dict[str, Any], loc: Loc) -> tuple[Message, ...]:
    turns = parse_turns(get(obj, "conversations", list, loc), loc, "conversations")
    system = get(obj, "system", str, loc, required=False)
    if system:
        turns = (Message("system", system),) + turns
    if not turns or turns[-1].role != "user":
        raise loc.error("conversations", "the conversation must end with a human turn (the prompt of "
                        "the chosen/rejected answers)")
    return turns


def _alpaca_prompt(obj: dict[str, Any], loc: Loc) -> tuple[Message, ...]:
    instruction = get(obj, "instruction", str, loc)
    extra = get(obj, "input", str, loc, required=False)
    turns: list[Message] = []
    system = get(obj, "system", str, loc, required=False)
    if system:
        turns.append(Message("system", system))
    for index, pair in enumerate(get(obj, "history", list, loc, required=False) or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise loc.error(f"history[{index}]", "expected [user text, assistant text]")
        turns += [Message("user", pair[0]), Message("assistant", pair[1])]
    turns.append(Message("user", f"{instruction}\n{extra}" if extra else instruction))
    return tuple(turns)


def read_llamafactory(path: Path, *, language: str | None = None, detect_language: bool = True,
                      **_: Any) -> Iterator[Item]:
    """LLaMA-Factory preference items (either style, per item) -> PreferencePair."""
    declared = language_code(language, Loc(str(path), None), "language") if language else None
    parsed = []
    for index, (loc, obj) in enumerate(iter_jsonl(path)):
        style = llamafactory_style(set(obj))
        if style is None:
            raise loc.error(None, "expected LLaMA-Factory preference keys: conversations/chosen/rejected "
                            "(sharegpt) or instruction/chosen/rejected (alpaca)")
        prompt = _sharegpt_prompt(obj, loc) if style == "sharegpt" else _alpaca_prompt(obj, loc)
        chosen = response_text(get(obj, "chosen", (str, list, dict), loc), loc, "chosen")
        rejected = response_text(get(obj, "rejected", (str, list, dict), loc), loc, "rejected")
        column = get(obj, "language", str, loc, required=False)
        lang = language_code(column, loc, "language") if column else declared
        if lang is None and not detect_language:
            raise loc.error("language", "no 'language' field: pass language= (--language) or allow "
                            "language detection")
        raw_id = get(obj, "id", (str, int), loc, required=False)
        metadata = {k: v for k, v in obj.items() if k not in _OWN}
        parsed.append((loc, lang, PreferencePair(
            id=str(raw_id) if raw_id is not None else str(index), prompt=prompt, chosen=chosen,
            rejected=rejected, language=lang or UNKNOWN_LANGUAGE, metadata=metadata)))
    yield from labelled_pairs(parsed)


def sharegpt_item(pair: PreferencePair) -> dict[str, Any]:
    """One sharegpt-style preference item (``system`` lifted to the top-level key)."""
    back = {"user": "human", "assistant": "gpt"}
    system = [m.content for m in pair.prompt if m.role == "system"]
    item: dict[str, Any] = {
        "id": pair.id, "language": pair.language,
        "conversations": [{"from": back[m.role], "value": m.content} for m in pair.prompt if m.role != "system"],
        "chosen": {"from": "gpt", "value": pair.chosen},
        "rejected": {"from": "gpt", "value": pair.rejected},
    }
    if system:
        item["system"] = "\n".join(system)
    item.update({k: v for k, v in pair.metadata.items() if k not in _OWN})
    return item


def alpaca_item(pair: PreferencePair) -> dict[str, Any]:
    """One alpaca-style preference item; earlier user/assistant turns become ``history``.
    A prompt that is not (system?) (user, assistant)* user cannot be written this way."""
    turns = [m for m in pair.prompt if m.role != "system"]
    system = [m.content for m in pair.prompt if m.role == "system"]
    roles = [m.role for m in turns]
    if len(roles) % 2 != 1 or roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
        raise ValueError(f"pair {pair.id!r}: its prompt turns ({', '.join(roles)}) do not fit the alpaca style")
    item: dict[str, Any] = {"id": pair.id, "language": pair.language, "instruction": turns[-1].content,
                            "input": "", "chosen": pair.chosen, "rejected": pair.rejected}
    if system:
        item["system"] = "\n".join(system)
    if len(turns) > 1:
        item["history"] = [[turns[i].content, turns[i + 1].content] for i in range(0, len(turns) - 1, 2)]
    item.update({k: v for k, v in pair.metadata.items() if k not in _OWN})
    return item
