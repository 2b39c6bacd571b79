"""Generation tasks scored by exact match (MGSM style): greedy decoding, answer extraction.

Answer extraction (:func:`extract_number`), in order:

1. Normalise: NFKC (full-width digits and punctuation become ASCII), every Unicode decimal
   digit (Arabic-Indic ``٠-٩``, Persian ``۰-۹``, Bengali ``০-৯``, Devanagari ``०-९``, Thai,
   ...) becomes its ASCII digit, the Arabic decimal/thousands separators ``٫``/``٬`` become
   ``.``/``,``, minus signs (``−``, ``－``) become ``-``.
2. If an answer marker occurs ("The answer is", "Answer:", "####", ``\\boxed{``, "答案是",
   "Jibu ni", "উত্তর", "الإجابة", ... see :data:`ANSWER_MARKERS`), only the text after the
   *last* marker is searched and its *first* number is the answer; otherwise the *last*
   number of the whole output is the answer.
3. A number is digits with optional separators. Grouping: ``1,234,567``, Indian
   ``12,34,567``, ``1.234.567``, ``1 234 567`` (also narrow/no-break spaces), ``1'234``. Decimal
   point or decimal comma: when both ``,`` and ``.`` occur the last one is the decimal mark
   (``1.234,5`` and ``1,234.5``); a lone ``,`` or ``.`` followed by exactly three digits is a
   thousands separator for ``,`` (``1,234`` = 1234) and a decimal point for ``.`` (``1.234``
   = 1.234, the English reading); otherwise a lone ``,`` is a decimal comma (``3,5`` = 3.5).
   A digit run that fits no grouping (``1,2,3``) is read as a list and its last element is
   taken. A ``-`` directly before the digits (not after a letter or digit) is a sign.
4. The value is written canonically (:func:`canonical_number`): no grouping, ``.`` as
   decimal mark, no trailing zeros (``18.50`` -> ``18.5``, ``7.0`` -> ``7``).

A prediction is correct when its canonical value equals the gold answer's (the gold is
parsed the same way, so ``"1,300"`` and ``"১০"`` are fine). ``answer_type="text"`` tasks
compare NFKC-casefolded, whitespace-collapsed strings (the text after the last marker, else
the first non-empty line), with surrounding punctuation stripped.

Per language: ``exact_match`` (correct / items), ``n``, ``n_no_answer`` (outputs with no
extractable answer, counted wrong), ``n_marker`` (answers found after a marker).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import torch

from polyalign.errors import UserError
from polyalign.evaluation.utility.tasks import EMItem, UtilityTask, render_context

ANSWER_MARKERS: tuple[str, ...] = (
    "the answer is", "the final answer is", "final answer:", "answer:", "####",
    # matched after NFKC, so full-width colons are written as ":" here
    "答案是", "答案:", "答えは", "答え:", "정답은", "정답:",
    "la respuesta es", "respuesta:", "la réponse est", "réponse :", "réponse:", "die antwort lautet",
    "die antwort ist", "antwort:", "ответ:", "ответ —", "ответ -", "jibu ni", "jibu:",
    "উত্তর হল", "উত্তর হলো", "উত্তর:", "উত্তরঃ", "उत्तर है", "उत्तर:", "الإجابة هي", "الإجابة:",
    "الجواب هو", "الجواب:", "คำตอบคือ", "câu trả lời là", "jawabannya adalah", "jawaban:",
    "cevap:", "a resposta é", "resposta:",
)
_SEPARATOR_CHARS = {"\u066b": ".", "\u066c": ",", "\u2212": "-", "\u2013": "-", "\u00a0": " ", "\u202f": " ",
                    "\u2009": " ", "\u2019": "'"}
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
# digits, then (separator + digits)*; a space separator only before exactly three digits.
# A digit run with separators; a space separator only before exactly three digits. A "-" is a
# sign only when no letter or digit precedes it ("5-3" gives 5 and 3, "x = -3" gives -3).
_NUMBER = re.compile(r"(?:(?<![A-Za-z0-9])-)?(?<![0-9])[0-9]+(?:[.,'][0-9]+|[ ][0-9]{3}(?![0-9]))*")
_SPACES = re.compile(r"\s+")


def normalize_digits(text: str) -> str:
    """NFKC, every Unicode decimal digit to ASCII, Arabic separators and minus signs to ASCII."""
    out = []
    for ch in unicodedata.normalize("NFKC", text):
        if ch in _SEPARATOR_CHARS:
            out.append(_SEPARATOR_CHARS[ch])
        elif ch.isdecimal() and not ch.isascii():
            out.append(str(unicodedata.decimal(ch)))
        else:
            out.append(ch)
    return "".join(out)


def _grouped(parts: list[str], first_max: int = 3) -> bool:
    """``parts`` (split at one separator kind) form a thousands (or Indian lakh) grouping."""
    if not 1 <= len(parts[0]) <= first_max or len(parts[-1]) != 3:
        return False
    middle = parts[1:-1]
    return all(len(p) == 3 for p in middle) or all(len(p) == 2 for p in middle)


def _parse(token: str) -> Decimal | None:
    """The value of one matched number token (see the module docstring), or None."""
    sign = -1 if token.startswith("-") else 1
    body = token.lstrip("-")
    if " " in body or "'" in body:  # space / apostrophe grouping: 1 234 567, 1'234,5
        parts = re.split(r"[ ']", body)
        if not (parts[0].isdigit() and len(parts[0]) <= 3) or any(len(p) != 3 for p in parts[1:-1]):
            return None
        if not (parts[-1][:3].isdigit() and (len(parts[-1]) == 3 or parts[-1][3] in ".,")):
            return None
        body = "".join(parts)
        if body.count(",") + body.count(".") > 1:
            return None
        body = body.replace(",", ".")
    elif "," in body and "." in body:  # the last mark is the decimal mark
        decimal_mark = "," if body.rfind(",") > body.rfind(".") else "."
        group_mark = "." if decimal_mark == "," else ","
        whole, _, frac = body.rpartition(decimal_mark)
        if decimal_mark in whole or not _grouped(whole.split(group_mark)):
            return None
        body = whole.replace(group_mark, "") + "." + frac
    elif "," in body or "." in body:
        mark = "," if "," in body else "."
        parts = body.split(mark)
        if len(parts) == 2 and not (mark == "," and len(parts[1]) == 3 and len(parts[0]) <= 3):
            body = parts[0] + "." + parts[1]  # decimal point / decimal comma
        elif _grouped(parts):
            body = "".join(parts)
        else:
            return None
    try:
        return sign * Decimal(body)
    except InvalidOperation:
        return None


def _numbers(text: str) -> list[Decimal]:
    values = []
    for match in _NUMBER.finditer(text):
        token = match.group(0)
        value = _parse(token)
        if value is None:  # not a single number: a list such as "1,2,3" -> its elements
            values.extend(v for piece in re.split(r"[,.' ]", token.lstrip("-")) if piece
                          for v in [_parse(piece)] if v is not None)
        else:
            values.append(value)
    return values


def canonical_number(value: Decimal) -> str:
    """``value`` without grouping or trailing zeros, ``.`` as decimal mark (``-0`` -> ``0``)."""
    if value == value.to_integral_value():
        return str(int(value))
    text = format(value.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _after_last_marker(text: str) -> str | None:
    # casefold() can change lengths ("ß" -> "ss"), so the tail is cut from the folded text.
    lowered = text.casefold()
    best = -1
    for marker in ANSWER_MARKERS:
        pos = lowered.rfind(marker)
        if pos >= 0:
            best = max(best, pos + len(marker))
    return lowered[best:] if best >= 0 else None


def extract_number(text: str) -> tuple[str | None, str]:
    """``(canonical answer or None, how)`` with ``how`` in ``boxed``/``marker``/``last``/``none``."""
    norm = normalize_digits(text)
    boxed = _BOXED.findall(norm)
    if boxed:
        found = _numbers(boxed[-1])
        if found:
            return canonical_number(found[0]), "boxed"
    tail = _after_last_marker(norm)
    if tail is not None:
        found = _numbers(tail)
        if found:
            return canonical_number(found[0]), "marker"
    found = _numbers(norm)
    return (canonical_number(found[-1]), "last") if found else (None, "none")


def normalize_text_answer(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed, surrounding punctuation and spaces stripped."""
    text = _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return text.strip(" .,:;!?'\"()[]{}。，！？：；「」『』«»")


def extract_text(text: str) -> tuple[str | None, str]:
    """Text answer: after the last marker (to the end of its line), else the first non-empty line."""
    tail = _after_last_marker(text)
    if tail is not None and tail.strip():
        answer = normalize_text_answer(tail.strip().splitlines()[0])
        return (answer or None), "marker"
    for line in text.splitlines():
        if line.strip():
            return (normalize_text_answer(line) or None), "last"
    return None, "none"


def gold_answer(answer: str, answer_type: str) -> str:
    """The gold answer in the form predictions are compared in (UserError if unparseable)."""
    if answer_type == "text":
        return normalize_text_answer(answer)
    found = _numbers(normalize_digits(answer))
    if len(found) != 1:
        raise UserError(f"gold answer {answer!r} is not one number", field="answer")
    return canonical_number(found[0])


@torch.no_grad()
def generate_greedy(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 64,
                    batch_size: int = 8) -> list[str]:
    """Greedy continuations of ``prompts`` (strings already rendered), special tokens skipped.

    Each prompt is encoded as lm-eval does (the tokenizer's special tokens, except when the
    string already starts with the BOS text, e.g. a rendered chat template); batches are
    left-padded with an attention mask, longest first; outputs come back in input order.
    """
    device = next(model.parameters()).device
    bos = tokenizer.bos_token
    encoded = [list(tokenizer.encode(p, add_special_tokens=not (bos and p.startswith(bos)))) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    outputs = [""] * len(prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):  # left padding: the new tokens start at column `width` for every row
            input_ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
            attention[r, width - len(encoded[i]):] = 1
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad_id)
        for i, text in zip(idx, tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
            outputs[i] = text
    return outputs


def score_outputs(items: Sequence[EMItem], outputs: Sequence[str], answer_type: str = "number") -> list[dict[str, Any]]:
    """One row per item: the output, the extracted answer, how it was found, and 0/1 correctness."""
    if len(items) != len(outputs):
        raise ValueError(f"{len(items)} items but {len(outputs)} outputs")
    extract = extract_text if answer_type == "text" else extract_number
    rows = []
    for item, output in zip(items, outputs):
        gold = gold_answer(item.answer, answer_type)
        pred, how = extract(output)
        rows.append({"id": item.id, "language": item.language, "output": output, "gold": gold,
                     "prediction": pred, "extracted_by": how, "exact_match": float(pred is not None and pred == gold)})
    return rows


def per_language_exact_match(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    """``{language: {exact_match, n, n_no_answer, n_marker}}``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["language"], []).append(row)
    return {lang: {"exact_match": sum(r["exact_match"] for r in g) / len(g), "n": len(g),
                   "n_no_answer": sum(r["prediction"] is None for r in g),
                   "n_marker": sum(r["extracted_by"] in ("marker", "boxed") for r in g)}
            for lang, g in groups.items()}


def evaluate_exact_match(model: Any, tokenizer: Any, task: UtilityTask, items: Sequence[EMItem], *,
                         batch_size: int = 8, max_new_tokens: int | None = None) -> dict[str, Any]:
    """Generate greedily for ``items`` and score: ``{"per_language": ..., "items": rows}``."""
    if task.kind != "exact_match":
        raise UserError(f"task {task.name!r} is {task.kind}, not exact_match", field="kind")
    for item in items:  # an unparseable gold answer is a data error: report it before generating
        try:
            gold_answer(item.answer, task.answer_type)
        except UserError as exc:
            raise UserError(f"item {item.id!r}: {exc.message}", file=task.path, field=task.answer) from None
    prompts = [render_context(tokenizer, task, item.question) for item in items]
    outputs = generate_greedy(model, tokenizer, prompts, max_new_tokens=max_new_tokens or task.max_new_tokens,
                              batch_size=batch_size)
    rows = score_outputs(items, outputs, task.answer_type)
    return {"per_language": per_language_exact_match(rows), "items": rows}
