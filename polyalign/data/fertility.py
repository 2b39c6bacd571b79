"""Tokenizer fertility per language, and how many texts a length limit cuts, per language.

A model's tokenizer splits some languages into many more tokens than others (low-resource
scripts often 3-10x English for the same content). That changes what a fixed
``max_length`` keeps: a language can lose most of its training examples to truncation, or
its evaluation prompts can crowd out the generation budget, while English fits.

Per language, over the texts given (:func:`fertility`):

- ``n_texts``, ``n_chars`` (Unicode code points), ``n_words`` (``str.split()`` pieces),
  ``n_tokens`` (``tokenizer(text, add_special_tokens=False)``: content tokens only, no BOS);
- ``tokens_per_char`` = n_tokens / n_chars; ``tokens_per_word`` = n_tokens / n_words;
- ``words_meaningful``: False for languages written without spaces between words (Chinese,
  Japanese, Thai, Lao, Khmer, Burmese, Tibetan): their "words" are whole phrases or
  sentences, so ``tokens_per_word`` is reported but says nothing there;
- ``tokens_per_text`` (mean) and ``relative_tokens`` = tokens_per_text / the reference
  language's (``en`` by default): on a *parallel* set (the same items in every language)
  this is the token premium a language pays for the same content;
- with ``max_length``: ``n_over_max_length`` = texts with more than ``max_length`` tokens.

Evaluation (:func:`prompt_length_stats`): the rendered prompts' token counts per language
and how many exceed the room the model's context leaves (context length minus
``max_new_tokens``; generation never truncates a prompt, so such a prompt runs past the
positions the model was trained on).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from polyalign.data.records import record_parts
from polyalign.errors import UserError

# Languages whose writing does not separate words by spaces (ISO 639 base codes).
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "wuu"})


def words_meaningful(language: str) -> bool:
    """Whether whitespace-separated pieces are words in ``language`` (``zh-Hant`` -> ``zh``: no)."""
    return language.split("-")[0].split("_")[0].lower() not in NO_SPACE_LANGUAGES


def count_tokens(tokenizer: Any, texts: Sequence[str], batch_size: int = 256) -> list[int]:
    """Content tokens per text (no special tokens), in order."""
    out: list[int] = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(list(texts[start : start + batch_size]), add_special_tokens=False)["input_ids"]
        out.extend(len(ids) for ids in encoded)
    return out


def fertility(tokenizer: Any, texts: Mapping[str, Sequence[str]], *, reference: str = "en",
              max_length: int | None = None) -> dict[str, dict[str, Any]]:
    """``{language: {n_texts, n_chars, n_words, n_tokens, tokens_per_char, tokens_per_word, ...}}``
    (see the module docstring)."""
    table: dict[str, dict[str, Any]] = {}
    for language, items in texts.items():
        tokens = count_tokens(tokenizer, items)
        chars = sum(len(t) for t in items)
        words = sum(len(t.split()) for t in items)
        n_tokens = sum(tokens)
        row: dict[str, Any] = {
            "n_texts": len(items), "n_chars": chars, "n_words": words, "n_tokens": n_tokens,
            "tokens_per_char": n_tokens / chars if chars else None,
            "tokens_per_word": n_tokens / words if words else None,
            "words_meaningful": words_meaningful(language),
            "tokens_per_text": n_tokens / len(items) if items else None,
            "max_tokens": max(tokens) if tokens else None,
        }
        if max_length is not None:
            row["max_length"] = max_length
            row["n_over_max_length"] = sum(n > max_length for n in tokens)
        table[language] = row
    base = (table.get(reference) or {}).get("tokens_per_text")
    for row in table.values():
        row["relative_tokens"] = row["tokens_per_text"] / base if base and row["tokens_per_text"] is not None else None
    return table


def load_tokenizer(model: str) -> Any:
    """The tokenizer of ``--model`` (folder, known model name or locally cached hub id; never downloads
    unless polyalign --allow-download; no remote code)."""
    # Lazy: transformers and polyalign.models (torch) are heavy; fertility() itself takes any tokenizer.
    from transformers import AutoTokenizer

    from polyalign.models import pretrained_source

    where, local_only = pretrained_source(model)
    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=False, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the tokenizer: {str(exc).splitlines()[0]}", file=where, field="--model") from None


def record_texts(records: Iterable[Any], *, responses: bool = True) -> dict[str, list[str]]:
    """Every text of the records grouped by its language (prompt turns, and responses when ``responses``)."""
    out: dict[str, list[str]] = {}
    for language, role, content in record_parts(records):
        bucket = out.setdefault(language, [])
        if isinstance(content, str):  # an evaluation prompt's text, or a response
            if role == "prompt" or (responses and content):
                bucket.append(content)
        else:
            bucket.extend(m.content for m in content if m.content)
    return out


def context_length(model: Any) -> int | None:
    """The model's trained context length (``max_position_embeddings``), or None when it has none."""
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        value = getattr(cfg, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_length_stats(languages: Sequence[str], lengths: Sequence[int], *, max_prompt_tokens: int | None,
                        ) -> dict[str, dict[str, Any]]:
    """Per language: ``prompt_tokens_mean``, ``prompt_tokens_max`` and ``n_prompts_over_context``.

    ``lengths[i]`` is the rendered prompt ``i``'s token count (chat template and special
    tokens included: what the model reads); ``max_prompt_tokens`` the room the context
    leaves. ``n_prompts_over_context`` is None when the model's context length is unknown.
    """
    out: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[int]] = {}
    for language, n in zip(languages, lengths, strict=True):
        groups.setdefault(language, []).append(n)
    for language, values in groups.items():
        out[language] = {
            "prompt_tokens_mean": sum(values) / len(values),
            "prompt_tokens_max": max(values),
            "max_prompt_tokens": max_prompt_tokens,
            "n_prompts_over_context": None if max_prompt_tokens is None else sum(n > max_prompt_tokens for n in values),
        }
    return out


def fertility_lines(table: Mapping[str, Mapping[str, Any]], *, reference: str = "en") -> list[str]:
    """A plain-text table for the terminal (``polyalign data inspect --model``)."""
    over = any("n_over_max_length" in r for r in table.values())
    head = (f"  {'language':<10} {'texts':>6} {'tok/char':>9} {'tok/word':>9} {'tok/text':>9} "
            f"{'vs ' + reference:>7} {'max':>6}" + (f" {'over max_length':>16}" if over else ""))
    lines = [head]
    for language, r in table.items():
        per_word = ("–" if r["tokens_per_word"] is None
                    else f"{r['tokens_per_word']:.2f}" + ("" if r["words_meaningful"] else "*"))
        rel = "–" if r["relative_tokens"] is None else f"{r['relative_tokens']:.2f}x"
        line = (f"  {language:<10} {r['n_texts']:>6} {_f(r['tokens_per_char']):>9} {per_word:>9} "
                f"{_f(r['tokens_per_text']):>9} {rel:>7} {r['max_tokens'] if r['max_tokens'] is not None else '–':>6}")
        if over:
            line += f" {r.get('n_over_max_length', '–'):>16}"
        lines.append(line)
    if any(not r["words_meaningful"] for r in table.values()):
        lines.append("  * written without spaces between words: tokens per whitespace word is not meaningful there")
    return lines


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
