"""Typed records every other layer consumes.

All records are plain frozen dataclasses with ``to_dict`` / ``from_dict`` so they
round-trip through the canonical JSONL format unchanged. Language codes are always
canonical (see :mod:`polyalign.data.languages`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One chat turn. ``role`` is ``system``, ``user`` or ``assistant``."""

    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        return cls(role=data["role"], content=data["content"])


def messages_to_dicts(messages: tuple[Message, ...]) -> list[dict[str, str]]:
    return [m.to_dict() for m in messages]


def messages_from_dicts(items: list[dict[str, Any]]) -> tuple[Message, ...]:
    return tuple(Message.from_dict(m) for m in items)


@dataclass(frozen=True)
class PromptVariants:
    """One prompt in several languages (for MLC). ``prompts`` maps language -> chat turns."""

    id: str
    prompts: dict[str, tuple[Message, ...]]

    @property
    def languages(self) -> list[str]:
        return list(self.prompts)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "prompts": {k: messages_to_dicts(v) for k, v in self.prompts.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptVariants:
        return cls(id=str(data["id"]), prompts={k: messages_from_dicts(v) for k, v in data["prompts"].items()})


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (chat turns ending with a user turn) with a chosen and a rejected answer.

    ``chosen`` and ``rejected`` are the assistant responses' text. ``variants`` optionally
    carries the same prompt in other languages (MLC).
    """

    id: str
    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    language: str
    metadata: dict[str, Any] = field(default_factory=dict)
    variants: PromptVariants | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "language": self.language,
            "prompt": messages_to_dicts(self.prompt),
            "chosen": self.chosen,
            "rejected": self.rejected,
            "metadata": dict(self.metadata),
        }
        if self.variants is not None:
            out["variants"] = self.variants.to_dict()["prompts"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreferencePair:
        variants = data.get("variants")
        return cls(
            id=str(data["id"]),
            prompt=messages_from_dicts(data["prompt"]),
            chosen=data["chosen"],
            rejected=data["rejected"],
            language=data["language"],
            metadata=dict(data.get("metadata") or {}),
            variants=PromptVariants.from_dict({"id": data["id"], "prompts": variants}) if variants else None,
        )


@dataclass(frozen=True)
class ParallelPair:
    """An MPO example: the dominant-language pair and the same example in a target language."""

    id: str
    dominant: PreferencePair
    target: PreferencePair

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "dominant": self.dominant.to_dict(), "target": self.target.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParallelPair:
        return cls(
            id=str(data["id"]),
            dominant=PreferencePair.from_dict(data["dominant"]),
            target=PreferencePair.from_dict(data["target"]),
        )


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation item. ``source_id`` joins the same item across languages."""

    id: str
    language: str
    text: str
    benchmark: str
    category: str | None = None
    source_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "language": self.language,
            "text": self.text,
            "benchmark": self.benchmark,
            "category": self.category,
            "source_id": self.source_id,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalPrompt:
        return cls(
            id=str(data["id"]),
            language=data["language"],
            text=data["text"],
            benchmark=data["benchmark"],
            category=data.get("category"),
            source_id=data.get("source_id"),
            metadata=dict(data.get("metadata") or {}),
        )


def record_parts(records: Iterable[Any]) -> Iterator[tuple[str, str, tuple[Message, ...] | str]]:
    """``(language, role, content)`` for every text part of the records, in order.

    ``role`` is ``prompt`` (content: the prompt's messages; an :class:`EvalPrompt`'s text as a
    string), ``chosen`` or ``rejected`` (the response text). A :class:`ParallelPair` gives its
    dominant pair then its target pair; :class:`PromptVariants` one prompt per language. An MLC
    pair's prompt variants are not parts (they ride on the pair, see :attr:`PreferencePair.variants`).
    """
    for record in records:
        pairs = ((record.dominant, record.target) if isinstance(record, ParallelPair)
                 else (record,) if isinstance(record, PreferencePair) else ())
        for pair in pairs:
            yield pair.language, "prompt", pair.prompt
            yield pair.language, "chosen", pair.chosen
            yield pair.language, "rejected", pair.rejected
        if isinstance(record, PromptVariants):
            for language, prompt in record.prompts.items():
                yield language, "prompt", prompt
        elif isinstance(record, EvalPrompt):
            yield record.language, "prompt", record.text
