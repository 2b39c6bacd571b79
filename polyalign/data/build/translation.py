"""One translation and the translator interface every machine translator implements.

Every translator has ``translate(texts, source, target) -> list[Translation]`` (one result
per text, in order; a failure is a :class:`Translation` with ``error`` set, never an
exception that loses the batch), a ``batch_size``, ``settings()`` (JSON-ready, no secrets)
and ``fingerprint()`` = ``text_fingerprint(settings())``: the translation cache key part
that says "this exact translator, these decoding settings".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from polyalign.io import text_fingerprint


@dataclass(frozen=True)
class Translation:
    """One translation: ``text`` (``None`` when it failed, then ``error`` says why);
    ``truncated``: the input or the output was cut at a length limit."""

    text: str | None
    error: str | None = None
    truncated: bool = False


class Translator:
    """Base class (see the module docstring)."""

    name = "translator"
    batch_size = 8

    def translate(self, texts: list[str], source: str, target: str) -> list[Translation]:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {"name": self.name}

    def fingerprint(self) -> str:
        """``text_fingerprint(settings())``: identifies this translator's outputs in the cache."""
        return text_fingerprint(self.settings())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings()!r})"
