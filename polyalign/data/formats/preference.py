"""Preference-data readers: official MPO JSON, MLC JSONL, TRL preference JSONL.

Record ids: MPO ``ParallelPair.id`` is the list index (``"41"``), its sides are
``"41-en"`` / ``"41-zh"``; MLC and TRL use an ``id`` column when present, else the
0-based record index.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from polyalign.data.formats.common import (
    Loc,
    get,
    iter_json_list,
    iter_jsonl,
    language_code,
    parse_message,
    parse_turns,
    type_name,
    user_prompt,
)
from polyalign.data.langdetect import detect_language as _detect
from polyalign.data.langdetect import vote_language
from polyalign.data.records import Message, ParallelPair, PreferencePair, PromptVariants
from polyalign.data.validation import Item, LangCheck
from polyalign.errors import UserError

MPO_KEYS = ("source_conversations", "source_chosen", "source_rejected",
            "target_conversations", "target_chosen", "target_rejected")
UNKNOWN_LANGUAGE = "und"  # ISO 639-2 "undetermined"; validation reports and skips it


def prompt_text(prompt: tuple[Message, ...]) -> str:
    """The text whose language identifies a prompt: its user turns joined."""
    return "\n".join(m.content for m in prompt if m.role == "user") or "\n".join(m.content for m in prompt)


def response_text(value: Any, loc: Loc, field: str) -> str:
    """A response given as a string, one assistant turn, or a one-turn list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if len(value) != 1:
            raise loc.error(field, f"expected exactly one assistant turn, got {len(value)} turns")
        value, field = value[0], f"{field}[0]"
    if not isinstance(value, dict):
        raise loc.error(field, f"expected a string or an assistant turn, got {type_name(value)}")
    message = parse_message(value, loc, field)
    if message.role != "assistant":
        raise loc.error(field, f"expected an assistant turn, got role {message.role!r}")
    return message.content


DOMINANT_SAMPLE = 500  # source prompts voting on the dominant language (evenly spaced)


def detect_dominant(prompts: list[str]) -> tuple[str | None, int, int, int]:
    """Majority vote of lingua over (a sample of) the source prompts: ``(language or None,
    votes for it, texts lingua could label, texts sampled)``."""
    step = max(1, len(prompts) // DOMINANT_SAMPLE)
    sample = prompts[::step]
    votes = Counter(d for d in (_detect(t) for t in sample) if d is not None)
    if not votes:
        return None, 0, 0, len(sample)
    language, count = votes.most_common(1)[0]
    return language, count, sum(votes.values()), len(sample)


def read_mpo(path: Path, *, dominant_language: str | None = None, language: str | None = None,
             detect_language: bool = True, notes: list[str] | None = None, **_: Any) -> Iterator[Item]:
    """Official MPO JSON list -> :class:`ParallelPair` items.

    The file has no language labels. The dominant (source) side's language is detected by
    majority vote over the source prompts (:func:`detect_dominant`) and used unless
    ``dominant_language`` is given; what was detected, and how sure, is printed and added
    to ``notes`` (with detection off it is ``en``, the released files' convention). A given
    ``dominant_language`` that a clear majority (> 50 %) of the
    source prompts contradicts is an error saying what the data looks like. The target
    side gets ``language`` when given (then checked like any declared label), else the vote
    of lingua over target prompt, chosen and rejected
    (:func:`~polyalign.data.langdetect.vote_language`, dominant language excluded).
    """
    declared = language_code(language, Loc(str(path), None), "language") if language else None
    if declared is None and not detect_language:
        raise UserError("MPO files carry no language labels: pass language= (--language) or allow "
                        "language detection", file=path, field="language")
    parsed = []
    for loc, index, obj in iter_json_list(path):
        if not isinstance(obj, dict):
            raise loc.error(None, f"expected an object with {', '.join(MPO_KEYS)}, got {type_name(obj)}")
        for key in MPO_KEYS:
            get(obj, key, (list, dict), loc)
        sides = {}
        for side in ("source", "target"):
            prompt = parse_turns(obj[f"{side}_conversations"], loc, f"{side}_conversations")
            chosen = response_text(obj[f"{side}_chosen"], loc, f"{side}_chosen")
            rejected = response_text(obj[f"{side}_rejected"], loc, f"{side}_rejected")
            sides[side] = (prompt, chosen, rejected)
        # The writer stores "id" only for items whose id is not their list position.
        raw_id = get(obj, "id", (str, int), loc, required=False)
        parsed.append((loc, str(raw_id) if raw_id is not None else str(index), sides))
    # Detection only after the whole file parsed: structural errors come first and fast.
    dominant = _dominant(path, parsed, dominant_language, detect_language, notes)
    for loc, item_id, sides in parsed:
        target_language = declared or vote_language(
            [prompt_text(sides["target"][0]), sides["target"][1], sides["target"][2]], exclude=dominant
        ) or UNKNOWN_LANGUAGE
        pairs = {
            side: PreferencePair(id=f"{item_id}-{lang}", prompt=p, chosen=c, rejected=r, language=lang)
            for (side, (p, c, r)), lang in zip(sides.items(), (dominant, target_language))
        }
        checks = [LangCheck("source_conversations", prompt_text(sides["source"][0]), dominant)]
        if target_language != UNKNOWN_LANGUAGE:
            # A detected label is checked too: the vote can outnumber an untranslated prompt.
            checks.append(LangCheck("target_conversations", prompt_text(sides["target"][0]), target_language))
        record = ParallelPair(id=item_id, dominant=pairs["source"], target=pairs["target"])
        yield Item(record, loc.file, loc.line, checks, loc.label)


def _dominant(path: Path, parsed: list[Any], given: str | None, detect_language: bool,
              notes: list[str] | None) -> str:
    """The dominant language: detected by majority vote unless given (then checked)."""
    if given is not None:
        given = language_code(given, Loc(str(path), None), "dominant_language")
    if not detect_language:
        if given is None:  # detection off: the released MPO files' convention, said out loud
            given = "en"
            if notes is not None:
                notes.append("dominant (source) language not detected (detection off): assumed en")
        return given
    found, votes, total, sampled = detect_dominant([prompt_text(sides["source"][0]) for _, _, sides in parsed])
    share = votes / total if total else 0.0
    how = f"{votes} of {total} source prompts lingua could label ({sampled} looked at), {share:.1%}"
    if given is not None:
        if found is not None and found != given and share > 0.5:
            raise UserError(f"the data's dominant (source) side looks like {found!r} ({how}), not {given!r} as "
                            f"set; pass --dominant-language {found} "
                            f"(dominant_language: {found})", file=path, field="dominant_language")
        return given
    if found is None:
        raise UserError("cannot tell the dominant (source) language of this MPO data; pass "
                        "--dominant-language", file=path, field="dominant_language")
    note = f"dominant (source) language detected: {found} ({how}); pass --dominant-language to set it"
    print(f"polyalign: {path}: {note}", file=sys.stderr)
    if notes is not None:
        notes.append(note)
    return found


def _row_id(obj: dict[str, Any], loc: Loc, index: int) -> str:
    value = get(obj, "id", (str, int), loc, required=False)
    return str(value) if value is not None else str(index)


def read_mlc(path: Path, *, language: str | None = None, **_: Any) -> Iterator[Item]:
    """MLC JSONL -> :class:`PreferencePair` (language ``language`` or ``en``) whose
    ``variants`` hold the prompt in every language, the base language first."""
    base = language_code(language, Loc(str(path), None), "language") if language else "en"
    for index, (loc, obj) in enumerate(iter_jsonl(path)):
        prompt = parse_turns(get(obj, "prompt", list, loc), loc, "prompt")
        chosen = response_text(get(obj, "chosen", (str, list, dict), loc), loc, "chosen")
        rejected = response_text(get(obj, "rejected", (str, list, dict), loc), loc, "rejected")
        prompts = {base: prompt}
        checks = [LangCheck("prompt", prompt_text(prompt), base)]
        metadata = {}
        for key, value in obj.items():
            if key.startswith("prompt_"):
                lang = language_code(key[len("prompt_"):], loc, key)
                prompts[lang] = parse_turns(value, loc, key)
                checks.append(LangCheck(key, prompt_text(prompts[lang]), lang))
            elif key not in ("prompt", "chosen", "rejected", "id"):
                metadata[key] = value
        row_id = _row_id(obj, loc, index)
        record = PreferencePair(id=row_id, prompt=prompt, chosen=chosen, rejected=rejected, language=base,
                                metadata=metadata, variants=PromptVariants(id=row_id, prompts=prompts))
        yield Item(record, loc.file, loc.line, checks)


def _implicit_prompt(obj: dict[str, Any], loc: Loc) -> tuple[tuple[Message, ...], str, str]:
    """Implicit-prompt TRL rows: chosen/rejected are whole conversations sharing the prompt."""
    chosen = parse_turns(get(obj, "chosen", list, loc), loc, "chosen")
    rejected = parse_turns(get(obj, "rejected", list, loc), loc, "rejected")
    if chosen == rejected:  # identical conversations: a content problem, not a shape error
        shared = len(chosen) - 1
    else:
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        rest = turns[shared:]
        if shared == 0 or len(rest) != 1 or rest[0].role != "assistant":
            raise loc.error(name, "without a 'prompt' field, chosen and rejected must be conversations "
                            "sharing their prompt turns and each ending with one assistant turn")
    return chosen[:shared], chosen[shared].content, rejected[shared].content


def read_trl(path: Path, *, language: str | None = None, detect_language: bool = True,
             **_: Any) -> Iterator[Item]:
    """TRL preference JSONL (standard, conversational, or implicit prompt) -> PreferencePair.

    Language: a ``language`` column, else the ``language`` argument, else lingua's guess
    on the prompt (``und`` -> reported and skipped when it cannot tell). Other columns go
    to ``metadata`` (merged into a ``metadata`` column if there is one); a ``variants``
    column (language -> turns) becomes ``variants``.
    """
    declared = language_code(language, Loc(str(path), None), "language") if language else None
    parsed = []
    for index, (loc, obj) in enumerate(iter_jsonl(path)):
        if "prompt" in obj:
            raw_prompt = get(obj, "prompt", (str, list), loc)
            prompt = user_prompt(raw_prompt) if isinstance(raw_prompt, str) else parse_turns(raw_prompt, loc, "prompt")
            chosen = response_text(get(obj, "chosen", (str, list, dict), loc), loc, "chosen")
            rejected = response_text(get(obj, "rejected", (str, list, dict), loc), loc, "rejected")
        else:
            prompt, chosen, rejected = _implicit_prompt(obj, loc)
        column = get(obj, "language", str, loc, required=False)
        lang = language_code(column, loc, "language") if column else declared
        if lang is None and not detect_language:
            raise loc.error("language", "no 'language' column: pass language= (--language) or allow "
                            "language detection")
        row_id = _row_id(obj, loc, index)
        variants = None
        if obj.get("variants") is not None:
            raw = get(obj, "variants", dict, loc)
            variants = PromptVariants(row_id, {
                language_code(k, loc, f"variants.{k}"): parse_turns(v, loc, f"variants.{k}") for k, v in raw.items()
            })
        metadata = dict(get(obj, "metadata", dict, loc, required=False) or {})
        metadata.update({k: v for k, v in obj.items()
                         if k not in ("prompt", "chosen", "rejected", "id", "language", "variants", "metadata")})
        parsed.append((loc, lang, PreferencePair(id=row_id, prompt=prompt, chosen=chosen, rejected=rejected,
                                                 language=lang or UNKNOWN_LANGUAGE, metadata=metadata,
                                                 variants=variants)))
    yield from labelled_pairs(parsed)


def labelled_pairs(parsed: list[tuple[Loc, str | None, PreferencePair]]) -> Iterator[Item]:
    """Items for parsed pairs; a pair without a declared language gets lingua's guess on
    its prompt (else its chosen answer). Run after parsing: structural errors come first."""
    for loc, lang, record in parsed:
        checks = [LangCheck("prompt", prompt_text(record.prompt), lang)] if lang else []
        if lang is None:
            guess = _detect(prompt_text(record.prompt)) or _detect(record.chosen)
            record = replace(record, language=guess or UNKNOWN_LANGUAGE)
        yield Item(record, loc.file, loc.line, checks, loc.label)
