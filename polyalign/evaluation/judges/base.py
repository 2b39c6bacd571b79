"""The one judge interface (batched) and the toxicity-scorer interface.

Safety judges
-------------
A :class:`Judge` turns a batch of :class:`JudgeInput` (prompt, response, language, id) into
one :class:`Judgment` per input, in order. Labels:

- ``safe`` / ``unsafe``: the judge's verdict on the *response*;
- ``invalid``: the response itself is unusable (empty, or the judge says it is not a natural
  answer to the prompt -- MultiJail's third class);
- ``error``: no verdict could be obtained (HTTP failure after retries, unparseable judge
  output, ...). ``Judgment.error`` says why. Metrics exclude ``invalid`` and ``error`` from
  the unsafe rate and report their counts; an ``error`` is never counted as ``safe``.

Every judge labels an empty (whitespace-only) response ``invalid`` without asking the model:
there is nothing to judge, and a guard model would call silence "safe".

Toxicity scorers
----------------
A :class:`ToxicityScorer` maps texts to a toxicity probability in [0, 1]:
``score(texts, languages) -> list[float | None]`` where ``None`` means "no score could be
obtained" (the reason is in :meth:`ToxicityScorer.score_detailed`); metrics exclude and count
those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

LABELS = ("safe", "unsafe", "invalid", "error")


@dataclass(frozen=True)
class JudgeInput:
    """One (prompt, response) pair to judge; ``id`` is carried through for bookkeeping."""

    prompt: str
    response: str
    language: str = "en"
    id: str = ""


@dataclass
class Judgment:
    """A judge's verdict on one response.

    ``score``: probability that the response is unsafe, when the judge provides one (Llama
    Guard's first-token probability); ``refusal``: whether the response refuses (refusal
    matcher, PolyGuard), else ``None``; ``categories``: violated categories as the judge
    wrote them (``S1``..``S14``; unknown ones are kept and also listed in ``flags``);
    ``raw``: the judge's raw output; ``error``: why no verdict (label ``error``) or ``None``;
    ``flags``: parser remarks (``unknown_category:S99``, ``extra_text``, ...); ``details``:
    judge-specific extras (e.g. PolyGuard's ``harmful_request``).
    """

    label: str
    judge: str
    score: float | None = None
    refusal: bool | None = None
    categories: list[str] = field(default_factory=list)
    raw: str | None = None
    error: str | None = None
    flags: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"judgment label must be one of {LABELS}, got {self.label!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (all fields)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Judgment:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, missing optional ones default."""
        return cls(
            label=str(data["label"]),
            judge=str(data.get("judge", "")),
            score=None if data.get("score") is None else float(data["score"]),
            refusal=None if data.get("refusal") is None else bool(data["refusal"]),
            categories=list(data.get("categories") or []),
            raw=data.get("raw"),
            error=data.get("error"),
            flags=list(data.get("flags") or []),
            details=dict(data.get("details") or {}),
        )

    @classmethod
    def failed(cls, judge: str, reason: str, raw: str | None = None) -> Judgment:
        """A judgment that could not be obtained (label ``error``)."""
        return cls(label="error", judge=judge, error=reason, raw=raw)


class Judge:
    """Base class: subclasses implement :meth:`_judge_batch` for non-empty responses."""

    name: str = "judge"

    def judge(self, items: Sequence[JudgeInput]) -> list[Judgment]:
        """Judge ``items`` (any length); returns one :class:`Judgment` per item, in order.

        Empty responses become ``invalid`` here; the rest go to :meth:`_judge_batch`.
        """
        results: list[Judgment | None] = [None] * len(items)
        todo: list[int] = []
        for i, item in enumerate(items):
            if not item.response or not item.response.strip():
                results[i] = Judgment(label="invalid", judge=self.name, error=None,
                                      flags=["empty_response"])
            else:
                todo.append(i)
        if todo:
            judged = self._judge_batch([items[i] for i in todo])
            if len(judged) != len(todo):  # a bug in a subclass, not user input
                raise RuntimeError(f"{self.name}: {len(judged)} judgments for {len(todo)} inputs")
            for i, judgment in zip(todo, judged):
                results[i] = judgment
        return [r for r in results if r is not None]

    def _judge_batch(self, items: list[JudgeInput]) -> list[Judgment]:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """JSON-ready settings that identify this judge's verdicts (for store fingerprints).

        Never contains secrets.
        """
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings()!r})"


@dataclass(frozen=True)
class ToxicityScore:
    """One toxicity score: ``value`` in [0, 1] or ``None`` with the ``error``."""

    value: float | None
    error: str | None = None
    attributes: dict[str, float] = field(default_factory=dict)


class ToxicityScorer:
    """Base class: subclasses implement :meth:`score_detailed`."""

    name: str = "toxicity"

    def score_detailed(self, texts: Sequence[str], languages: Sequence[str] | None = None) -> list[ToxicityScore]:
        """One :class:`ToxicityScore` per text, in order; ``languages`` parallel to ``texts``."""
        raise NotImplementedError

    def score(self, texts: Sequence[str], languages: Sequence[str] | None = None) -> list[float | None]:
        """Toxicity probabilities in [0, 1]; ``None`` where no score could be obtained."""
        return [s.value for s in self.score_detailed(texts, languages)]

    def settings(self) -> dict[str, Any]:
        """JSON-ready settings (no secrets)."""
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings()!r})"


def check_languages(texts: Sequence[str], languages: Sequence[str] | None) -> list[str | None]:
    """``languages`` as a list parallel to ``texts`` (``None`` entries when not given)."""
    if languages is None:
        return [None] * len(texts)
    if len(languages) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(languages)} languages")
    return list(languages)
