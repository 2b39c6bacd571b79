"""Pluggable machine translators, built from config options (:func:`build_translator`).

Two kinds: local seq2seq models (NLLB, M2M100, Marian; :mod:`.translate_hf`) and any
OpenAI-compatible chat endpoint (:mod:`.translate_openai`), both implementing
:class:`~polyalign.data.build.translation.Translator` (:mod:`.translation`).
"""

from __future__ import annotations

from typing import Any

from polyalign.data.build.translate_hf import HFSeq2SeqTranslator
from polyalign.data.build.translate_openai import OpenAITranslator
from polyalign.data.build.translation import Translator
from polyalign.errors import UserError
from polyalign.http_client import RetryPolicy


def build_translator(options: dict[str, Any]) -> Translator:
    """A translator from config options: ``{"type": "hf"|"openai", ...}`` (see the YAML recipe)."""
    opts = dict(options)
    kind = str(opts.pop("type", "hf")).lower()
    try:
        if kind in ("hf", "seq2seq", "hf_seq2seq"):
            if "model" not in opts:
                raise UserError("the hf translator needs 'model' (a model folder)", field="translator.model")
            return HFSeq2SeqTranslator(opts.pop("model"), **opts)
        if kind in ("openai", "openai_compatible"):
            if "base_url" not in opts or "model" not in opts:
                raise UserError("the openai translator needs 'base_url' and 'model'", field="translator")
            if isinstance(opts.get("retry"), dict):
                opts["retry"] = RetryPolicy(**opts["retry"])
            return OpenAITranslator(opts.pop("base_url"), opts.pop("model"), **opts)
    except TypeError as exc:
        raise UserError(f"bad translator option: {exc}", field="translator") from None
    raise UserError(f"unknown translator type {kind!r}; use hf or openai", field="translator.type")
