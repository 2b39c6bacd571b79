"""The data card of a build: ``data_card.json`` (everything) and ``data_card.md`` (tables).

``data_card.json`` keys: ``kind``, ``languages`` (``dominant``, ``targets``), ``input``
(path, sha256, format, rows read / skipped by reason, pairs selected), ``translator``
(settings + fingerprint), ``judge`` (settings), ``model`` (source + identity, when
self-generating), ``generation``, ``strategy``, ``filters`` (``config``, ``counts``
``{stage: {language: {reason|"kept": n}}}``, ``notes``), ``stages`` (fingerprint, output
file, whether this run reused it), ``outputs`` (path, records, records per language,
sha256), ``runs`` (one entry per process: what it translated / generated / judged anew and
what it reused), ``fingerprint`` (hash of all stage fingerprints).
"""

from __future__ import annotations

from typing import Any

from polyalign.data.languages import language_name


def _table(rows: list[list[Any]], header: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def render_card_markdown(card: dict[str, Any]) -> str:
    """A human-readable summary of ``data_card.json``."""
    langs = [card["languages"]["dominant"], *card["languages"]["targets"]]
    out = [f"# Data card: {card['kind'].upper()} data built from {card['input']['path']}", ""]
    out.append(f"- input: {card['input']['n_selected']} pairs selected of {card['input']['n_read']} read "
               f"(format {card['input']['format']}, {card['input']['sha256']})")
    skipped = card["input"].get("skipped") or {}
    if skipped:
        out.append("- input rows skipped: " + ", ".join(f"{k}: {v}" for k, v in skipped.items()))
    out.append("- languages: " + ", ".join(f"{code} ({language_name(code)})" for code in langs))
    translator = card.get("translator") or {}
    out.append(f"- translator: `{translator.get('settings', {}).get('name')}` fingerprint `{translator.get('fingerprint')}`")
    if card.get("judge"):
        out.append(f"- judge: `{card['judge'].get('name')}`")
    if card.get("model"):
        out.append(f"- model (self-generation): `{card['model'].get('source')}`")
    out.append(f"- strategy: {card['strategy']}")
    out.append(f"- fingerprint: `{card['fingerprint']}`")
    out += ["", "## Outputs", ""]
    rows = [[o["path"], o["records"], ", ".join(f"{k}: {v}" for k, v in o["per_language"].items())]
            for o in card["outputs"]]
    out += _table(rows, ["file", "records", "per language"])
    out += ["", "## Filters and drops per stage and language", ""]
    for stage, per_lang in card["filters"]["counts"].items():
        reasons = sorted({r for c in per_lang.values() for r in c} - {"kept"})
        out += [f"### {stage}", ""]
        rows = [[lang, c.get("kept", 0), *[c.get(r, 0) for r in reasons]] for lang, c in per_lang.items()]
        out += _table(rows, ["language", "kept", *reasons]) + [""]
    for note in card["filters"].get("notes", []):
        out.append(f"- {note}")
    out += ["", "## Runs", ""]
    keys = ["run_id", "translated", "translation_cache_hits", "translation_errors", "generated", "generation_reused",
            "judged", "judge_reused", "judge_errors"]
    out += _table([[r.get(k, 0) for k in keys] for r in card["runs"]], keys)
    return "\n".join(out) + "\n"
