"""The data card of a build: ``data_card.json`` (everything) and ``data_card.md`` (tables).

``data_card.json`` keys: ``kind``, ``languages`` (``dominant``, ``targets``), ``input``
(path, sha256, format, rows read / skipped by reason, pairs selected), ``translator``
(settings + fingerprint), ``judge`` (settings), ``model`` (source + identity, when
self-generating), ``generation``, ``strategy``, ``filters`` (``config``, ``counts``
``{stage: {language: {reason|"kept": n}}}``, ``notes``), ``stages`` (fingerprint, output
file, whether this run reused it), ``outputs`` (path, records, records per language,
sha256), ``runs`` (one entry per process: what it translated / generated / judged anew and
what it reused), ``fingerprint`` (hash of all stage fingerprints).

:func:`emit` is the build's last step: it writes the records, appends this process's run to
``work_dir/runs.jsonl`` and writes both card files; the pipeline only logs what it returns.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polyalign.data.build.filters import FilterReport
from polyalign.data.languages import language_name
from polyalign.io import (
    append_jsonl_durably,
    atomic_write_json,
    atomic_write_text,
    file_fingerprint,
    read_jsonl_tolerant,
)

if TYPE_CHECKING:
    from polyalign.data.build.config import BuildConfig
    from polyalign.data.build.translation import Translator

OUTPUT_NAMES = {"mpo": "mpo_pairs.jsonl", "mlc": "mlc_pairs.jsonl", "dpo": "dpo_pairs.jsonl"}


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
    name, fingerprint = translator.get("settings", {}).get("name"), translator.get("fingerprint")
    out.append(f"- translator: `{name}` fingerprint `{fingerprint}`")
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


def _write_outputs(config: BuildConfig, records: list[Any], per_language: Mapping[str, int]) -> list[dict[str, Any]]:
    """Write the records (canonical JSONL; MPO also the released trainer's JSON) -> card ``outputs``."""
    from polyalign.data.writers import write_canonical, write_mpo  # lazy: keeps ``import`` of this module light

    out_path = config.out_dir / OUTPUT_NAMES[config.kind]
    written = [(out_path, "canonical", write_canonical)]
    if config.kind == "mpo":
        written.append((out_path.with_suffix(".json"), "mpo", write_mpo))
    outputs = []
    for path, fmt, write in written:
        write(records, path)
        outputs.append({"path": str(path), "format": fmt, "records": len(records),
                        "per_language": dict(sorted(per_language.items())), "sha256": file_fingerprint(path)})
    return outputs


def _record_run(work: Path, run_id: str, run_stats: Mapping[str, int],
                entries: dict[str, dict]) -> tuple[dict[str, Any], list[dict]]:
    """Append this process's run to ``runs.jsonl``; returns (this run, every run so far).

    Appended, not rewritten: each process that touched the build keeps its own line, so the
    card shows how a resumed build's work was split between runs."""
    run = {"run_id": run_id, **{k: int(v) for k, v in run_stats.items()},
           "stages_reused": [s for s, e in entries.items() if e.get("reused")]}
    runs_path = work / "runs.jsonl"
    append_jsonl_durably(runs_path, run)  # one O_APPEND write + fsync: a kill leaves whole lines
    runs, torn = read_jsonl_tolerant(runs_path)
    for number in torn:
        print(f"polyalign build: {runs_path}:{number}: skipped a line cut by an interrupted write", file=sys.stderr)
    return run, runs


def emit(config: BuildConfig, records: list[Any], per_language: Mapping[str, int], report: FilterReport,
         entries: dict[str, dict], fingerprint: str, *, work: Path, run_id: str, run_stats: Mapping[str, int],
         translator: Translator, judge_identity: Callable[[], dict[str, Any]],
         gen_identity: Callable[[], str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the outputs, the run log and ``data_card.json`` / ``.md``; returns (card, this run).

    ``report`` holds the pair stage's counts; the earlier stages' counts and notes come from
    their ``entries``. The judge / model identities are callables, called only when the card
    records them (a judge: when the build generates; a model: when ``model.path`` is set),
    because a build that reused every stage must not load a judge or a model to describe it."""
    from polyalign.evaluation.fingerprints import redact  # lazy: it imports torch

    c = config
    outputs = _write_outputs(c, records, per_language)
    counts: dict[str, Any] = {}
    notes: list[str] = []
    for entry in entries.values():
        part = FilterReport.from_dict(entry.get("filters") or {})
        counts.update(part.to_dict()["counts"])
        notes += part.notes
    counts.update(report.to_dict()["counts"])
    run, runs = _record_run(work, run_id, run_stats, entries)
    source = entries["source"]
    generating = c.needs_dominant_generation or c.needs_target_generation
    card = {
        "kind": c.kind,
        "languages": {"dominant": c.dominant_language, "targets": list(c.languages)},
        "input": {"path": str(c.input_path), "sha256": source.get("sha256"), "format": source.get("format"),
                  "n_read": source.get("n_read"), "skipped": source.get("skipped", {}),
                  "n_selected": source.get("n_selected")},
        "translator": {"settings": redact(translator.settings()), "fingerprint": translator.fingerprint()},
        "judge": judge_identity() if generating else None,
        "model": {"source": c.model.get("path"), "identity": gen_identity()} if c.model.get("path") else None,
        "generation": dict(c.generation) if generating else None,
        "strategy": {"dominant_chosen": c.dominant_chosen if c.kind == "mpo" else None,
                     "target": c.target if c.kind != "mlc" else None},
        "filters": {"config": c.filters.to_dict(), "counts": counts, "notes": notes},
        "stages": {s: {"fingerprint": e.get("fingerprint"), "output": e.get("output"), "reused": bool(e.get("reused")),
                       "skipped": bool(e.get("skipped")), "complete": e.get("complete", True)}
                   for s, e in entries.items()},
        "outputs": outputs,
        "runs": runs,
        "config": redact(c.to_dict()),  # the translator / judge options may carry URL secrets
        "fingerprint": fingerprint,
    }
    atomic_write_json(c.out_dir / "data_card.json", card)
    atomic_write_text(c.out_dir / "data_card.md", render_card_markdown(card))
    return card, run
