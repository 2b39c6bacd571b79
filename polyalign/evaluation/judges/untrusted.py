"""Untrusted text inside a judge's prompt: it may never produce a control token.

A judge's prompt is a template (trusted) around the user's prompt and the model's response
(untrusted). A response writing ``<|eot_id|>`` or ``<|im_end|>`` must not end the guard's turn,
and one writing ``<think>`` must not open a block. Every generative guard (Llama Guard,
PolyGuard, Qwen3Guard) builds its prompt as ``(text, untrusted)`` segments and encodes them
with :func:`encode_segments`. No torch here: the served Qwen3Guard judge uses it too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from polyalign.errors import UserError

if TYPE_CHECKING:  # transformers (and torch) stay unimported for the served judges
    from transformers import PreTrainedTokenizerBase

# Private-use code points: a template passes them through, no text to judge contains them.
_SLOTS = ("\ue000polyalign-untrusted-0\ue001", "\ue000polyalign-untrusted-1\ue001")


def render_segments(tokenizer: PreTrainedTokenizerBase, render: Callable[[str, str], str], prompt: str,
                    response: str) -> list[tuple[str, bool]]:
    """``render(prompt, response)`` as ``(text, untrusted)`` segments for :func:`encode_segments`.

    The template is rendered once with placeholders to find the pieces around the two texts; it
    must place each once, in order, and embed them unchanged (or stripped). When neither text
    holds an added token's string the whole rendering is one segment: nothing to keep apart,
    and the template is not asked to do more than render.
    """
    real = render(prompt, response)
    if not any(token in text for token in added_tokens(tokenizer) for text in (prompt, response)):
        return [(real, False)]
    marked = render(*_SLOTS)
    if any(marked.count(slot) != 1 for slot in _SLOTS) or marked.index(_SLOTS[0]) > marked.index(_SLOTS[1]):
        raise UserError("the guard's prompt template does not place the prompt and the response once each, in order",
                        field="tokenizer")
    for p_text, r_text in ((prompt, response), (prompt.strip(), response.strip())):
        if marked.replace(_SLOTS[0], p_text).replace(_SLOTS[1], r_text) == real:
            break
    else:
        raise UserError("the guard's prompt template changes the texts it embeds; cannot keep them apart from "
                        "its control tokens", field="tokenizer")
    head, rest = marked.split(_SLOTS[0])
    middle, tail = rest.split(_SLOTS[1])
    return [(head, False), (p_text, True), (middle, False), (r_text, True), (tail, False)]


def added_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The strings the tokenizer turns into added (special or control) token ids, with their ids."""
    contents = {str(token.content if hasattr(token, "content") else token): int(i)
                for i, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}
    return {text: i for text, i in contents.items() if text}


def encode_segments(tokenizer: PreTrainedTokenizerBase, segments: Sequence[tuple[str, bool]]) -> list[int]:
    """Token ids of the joined segments; added-token text counts only in trusted segments.

    Trusted pieces have their added tokens (``<|im_start|>``, ``<think>``...) extracted as
    the tokenizer would; the text between them (trusted and untrusted alike) is encoded with
    ``split_special_tokens=True``, and an added token the tokenizer still matches there (a
    non-special one such as Qwen3's ``<think>``) is broken after its first character. Text
    without added-token strings therefore gets exactly the tokenizer's own ids.
    """
    added = added_tokens(tokenizer)
    pattern = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))) if added else None
    ids: list[int] = []
    plain = ""
    for text, untrusted in segments:
        if untrusted or pattern is None:
            plain += text
            continue
        last = 0
        for match in pattern.finditer(text):
            ids += _encode_plain(tokenizer, plain + text[last:match.start()], pattern, set(added.values()))
            ids.append(added[match.group(0)])
            plain, last = "", match.end()
        plain += text[last:]
    return ids + _encode_plain(tokenizer, plain, pattern, set(added.values()))


def _encode_plain(tokenizer: PreTrainedTokenizerBase, text: str, pattern: re.Pattern[str] | None,
                  added_ids: set[int]) -> list[int]:
    out: list[int] = []
    while text:
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        match = pattern.search(text) if pattern is not None else None
        if match is None or not added_ids.intersection(ids):
            return out + ids
        # Split inside the literal token text: "<" | "think>..." can no longer match it.
        out += tokenizer(text[:match.start() + 1], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        text = text[match.start() + 1:]
    return out
