"""``polyalign data build``: English preference pairs -> multilingual MPO / MLC / DPO data.

Stages, in order; each writes its own file in ``work_dir`` and records its fingerprint
(a hash of its settings and of the upstream fingerprints) in ``work_dir/state.json``:

1. ``source``    read the English pairs (any readable format), keep the first ``limit``
                 -> ``01_source.jsonl`` (canonical :class:`PreferencePair` JSONL)
2. ``dominant``  (MPO, ``dominant_chosen: model``) the model answers each source prompt
                 ``num_samples`` times, the judge labels the answers, response filters
                 run -> ``02_dominant.jsonl`` (one row per sample: text, label, filter)
3. ``translate`` prompts (and, with ``target: translate``, the answers) into every target
                 language through the translation cache, then the text filters
                 -> ``03_translations.jsonl`` (one row per text: source, text, filter)
4. ``target``    (``target: selfgen``) the model answers the translated prompts, judged
                 and filtered -> ``04_target.jsonl``
5. ``pairs``     pairs formed (:mod:`.pairing`), pair filters; then :func:`.card.emit`
                 writes to ``out_dir``: ``mpo_pairs.jsonl`` (+ official ``mpo_pairs.json``),
                 ``mlc_pairs.jsonl`` or ``dpo_pairs.jsonl``, all canonical JSONL, and
                 ``data_card.json`` / ``data_card.md``.

A stage whose fingerprint matches and whose run was complete (no failed translation or
judgment) is reused from its file. Inside a stage, work is resumable through the
translation cache and the generation / judgment stores, so a killed build redoes nothing
that finished (each run's counts of new and reused work are in ``data_card.json``
``runs``). The environment variable ``POLYALIGN_BUILD_CRASH=STAGE[:N]`` SIGKILLs the
process after stage ``STAGE`` (or after its ``N``-th batch): for resume tests.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from polyalign.data.build.cache import TranslationCache
from polyalign.data.build.card import OUTPUT_NAMES, emit
from polyalign.data.build.config import BuildConfig
from polyalign.data.build.filters import FilterReport, TextItem, filter_texts
from polyalign.data.build.pairing import (
    Side,
    dpo_pairs,
    filter_pairs,
    mlc_pairs,
    mpo_pairs,
    response_pair,
    translated_prompt,
    translated_sides,
)
from polyalign.data.build.selfgen import SelfGenerator, gen_id, judge_generations
from polyalign.data.build.similarity import load_similarity
from polyalign.data.build.translate import build_translator
from polyalign.data.build.translate_hf import model_identity
from polyalign.data.build.translation import Translator
from polyalign.data.formats.preference import prompt_text
from polyalign.data.readers import read_records
from polyalign.data.records import EvalPrompt, ParallelPair, PreferencePair
from polyalign.errors import UserError
from polyalign.evaluation.judges import get_judge
from polyalign.io import atomic_write_json, atomic_write_jsonl, file_fingerprint, iter_jsonl, text_fingerprint
from polyalign.store import new_run_id

STAGES = ("source", "dominant", "translate", "target", "pairs")
CRASH_ENV = "POLYALIGN_BUILD_CRASH"


def _log(message: str) -> None:
    print(f"polyalign build: {message}", file=sys.stderr, flush=True)


def maybe_crash(stage: str, batch: int | None = None) -> None:
    """SIGKILL this process when ``POLYALIGN_BUILD_CRASH`` names this point (tests only)."""
    point = os.environ.get(CRASH_ENV)
    if point and point == (stage if batch is None else f"{stage}:{batch}"):
        os.kill(os.getpid(), signal.SIGKILL)


def _rows(path: Path) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(path)]


class BuildPipeline:
    """One build (see the module docstring): ``BuildPipeline(config).run() -> data card``.

    ``translator`` / ``self_generator`` / ``judge`` may be passed in (already built);
    otherwise they are built from the config, lazily (a reused stage loads no model).
    """

    def __init__(self, config: BuildConfig, *, translator: Translator | None = None,
                 self_generator: SelfGenerator | None = None, judge: Any = None) -> None:
        self.config = config
        self._translator = translator
        self._selfgen = self_generator
        self._judge = judge
        self._judge_given = judge is not None  # then its settings() identify it; else the config does
        self.work = config.work_dir
        self.state_path = self.work / "state.json"
        self.run_stats: Counter = Counter()
        self.run_id = new_run_id()

    # -- lazily built workers ------------------------------------------------------------
    @property
    def translator(self) -> Translator:
        if self._translator is None:
            self._translator = build_translator(self.config.translator)
        return self._translator

    @property
    def selfgen(self) -> SelfGenerator:
        if self._selfgen is None:
            self._selfgen = SelfGenerator.from_options(self.config.model, self.config.generation)
        return self._selfgen

    @property
    def judge(self) -> Any:
        if self._judge is None:
            self._judge = get_judge(self.config.judge["name"], **dict(self.config.judge.get("options") or {}))
        return self._judge

    # -- stage bookkeeping ---------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"stages": {}}
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError("corrupt build state; delete it to rebuild every stage", file=self.state_path) from None

    def _reusable(self, stage: str, fingerprint: str) -> dict[str, Any] | None:
        entry = self._state()["stages"].get(stage)
        if (entry and entry["fingerprint"] == fingerprint and entry.get("complete")
                and (self.work / entry["output"]).exists()):
            return entry
        return None

    def _finish(self, stage: str, fingerprint: str, output: str, rows: list[dict[str, Any]], report: FilterReport,
                complete: bool = True, **summary: Any) -> dict[str, Any]:
        atomic_write_jsonl(self.work / output, rows)
        state = self._state()
        entry = {"fingerprint": fingerprint, "output": output, "complete": complete, "filters": report.to_dict(),
                 **summary}
        state["stages"][stage] = entry
        atomic_write_json(self.state_path, state)
        maybe_crash(stage)
        return entry

    # -- stages ----------------------------------------------------------------------------
    def stage_source(self) -> tuple[list[PreferencePair], dict[str, Any]]:
        c = self.config
        fp = text_fingerprint("source", file_fingerprint(c.input_path), c.input_format, c.column_map, c.limit,
                              c.dominant_language)
        entry = self._reusable("source", fp)
        if entry is None:
            result = read_records(c.input_path, c.input_format, column_map=c.column_map, language=c.dominant_language,
                                  check_language=False)
            pairs = [r for r in result.records if isinstance(r, PreferencePair)]
            if len(pairs) != len(result.records):
                raise UserError("the input must hold preference pairs (prompt, chosen, rejected)", file=c.input_path)
            other = Counter(p.language for p in pairs if p.language != c.dominant_language)
            if other:
                raise UserError(f"pairs not in the dominant language {c.dominant_language!r}: {dict(other)}; "
                                "set input.language", file=c.input_path, field="language")
            selected = pairs[: c.limit] if c.limit else pairs
            ids = Counter(p.id for p in selected)
            if max(ids.values(), default=1) > 1:
                raise UserError(f"duplicate ids in the input, e.g. {ids.most_common(1)[0][0]!r}", file=c.input_path,
                                field="id")
            rows = [{"type": "preference_pair", **p.to_dict()} for p in selected]
            entry = self._finish("source", fp, "01_source.jsonl", rows, FilterReport(), n_read=len(result.records) +
                                 sum(result.skipped.values()), skipped=dict(result.skipped), format=result.format,
                                 n_selected=len(selected), sha256=file_fingerprint(c.input_path))
        else:
            entry = {**entry, "reused": True}
        sources = [PreferencePair.from_dict(r) for r in _rows(self.work / entry["output"])]
        return sources, {**entry, "fingerprint": fp}

    def _generate_and_judge(self, stage: str, prompts: list[EvalPrompt],
                            report: FilterReport) -> tuple[list[dict[str, Any]], int]:
        """Samples (with label and filter reason) for ``prompts``; returns (rows, judge errors)."""
        gens, gstats = self.selfgen.generate(prompts, self.work / f"{stage}_generations.jsonl",
                                             on_batch=self._batch_hook(stage), run_id=self.run_id)
        self.run_stats["generated"] += gstats["generated"]
        self.run_stats["generation_reused"] += gstats["reused"]
        generations = list(gens.values())
        gen_fp = text_fingerprint(self.selfgen.store_settings())
        labels, jstats = judge_generations(self.judge, prompts, generations, self.work / f"{stage}_judgments.jsonl",
                                           generation_fp=gen_fp,
                                           batch_size=int(self.config.judge.get("batch_size", 32)),
                                           run_id=self.run_id)
        self.run_stats["judged"] += jstats["judged"]
        self.run_stats["judge_reused"] += jstats["reused"]
        self.run_stats["judge_errors"] += jstats["errors"]
        items = [TextItem(f"{g['id']}#{g['sample']}", g["language"], g["text"],
                          truncated=g["finish_reason"] == "length")
                 for g in generations]
        reasons = filter_texts(items, self.config.filters, report, f"{stage}_responses")
        rows = []
        for g, item in zip(generations, items, strict=True):
            label = labels.get((g["id"], g["sample"]), {}).get("label")
            rows.append({"id": g["id"], "sample": g["sample"], "language": g["language"], "text": g["text"],
                         "finish_reason": g["finish_reason"], "label": label, "filter": reasons[item.key]})
        return rows, jstats["errors"]

    def _batch_hook(self, stage: str) -> Any:
        count = [0]

        def hook(_: Any) -> None:
            count[0] += 1
            maybe_crash(stage, count[0])
        return hook

    def _pairs_from_samples(self, rows: list[dict[str, Any]], report: FilterReport, stage: str,
                            need_rejected: bool) -> dict[str, tuple[str | None, str | None, str | None]]:
        by_id: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_id.setdefault(row["id"], []).append(row)
        out = {}
        for key, samples in by_id.items():
            out[key] = response_pair(samples, need_rejected=need_rejected)
            report.add(stage, samples[0]["language"], out[key][2] or "kept")
        return out

    def _generated_pairs(self, stage: str, fp: str, output: str, prompts: list[EvalPrompt], *,
                         need_rejected: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """Self-generate and judge ``prompts`` into ``output`` (or reuse the finished stage with this
        fingerprint); returns (response pairs by generation id, the stage's entry)."""
        entry = self._reusable(stage, fp)
        report = FilterReport()
        if entry is None:
            rows, errors = self._generate_and_judge(stage, prompts, report) if prompts else ([], 0)
            entry = self._finish(stage, fp, output, rows, report, complete=errors == 0)
        else:
            entry = {**entry, "reused": True}
            report = FilterReport.from_dict(entry["filters"])
        pairs = self._pairs_from_samples(_rows(self.work / entry["output"]), report, f"{stage}_pairing",
                                         need_rejected=need_rejected)
        entry["filters"] = report.to_dict()
        return pairs, entry

    def stage_dominant(self, sources: list[PreferencePair],
                       upstream: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
        c = self.config
        if not c.needs_dominant_generation:
            return {p.id: p.chosen for p in sources}, text_fingerprint("dominant", upstream,
                                                                       "dataset"), {"skipped": True}
        fp = text_fingerprint("dominant", upstream, self._gen_identity(), self._judge_identity(), c.filters.to_dict())
        prompts = [EvalPrompt(gen_id(p.id, c.dominant_language), c.dominant_language, prompt_text(p.prompt), "build")
                   for p in sources]
        pairs, entry = self._generated_pairs("dominant", fp, "02_dominant.jsonl", prompts, need_rejected=False)
        chosen: dict[str, Any] = {}
        for p in sources:
            answer, _, reason = pairs[gen_id(p.id, c.dominant_language)]
            chosen[p.id] = ("drop", reason) if reason else answer
        return chosen, fp, entry

    def _judge_identity(self) -> dict[str, Any]:
        """The judge's settings without building it (a reused stage must not load a guard model)."""
        if self._judge_given:
            return self._judge.settings()
        return {"name": self.config.judge["name"], "options": dict(self.config.judge.get("options") or {})}

    def _gen_identity(self) -> str:
        """Settings that decide self-generations, without loading the model (path + options)."""
        c = self.config
        return text_fingerprint(model_identity(str(c.model.get("path", ""))), c.generation, c.model.get("dtype"))

    def stage_translate(self, sources: list[PreferencePair], dominant_chosen: dict[str, Any],
                        upstream: str) -> tuple[dict[tuple[str, str, str], dict[str, Any]], str, dict[str, Any]]:
        c = self.config
        with_answers = c.kind in ("mpo", "dpo") and c.target == "translate"
        fp = text_fingerprint("translate", upstream, self.translator.fingerprint(), c.filters.to_dict(), c.kind,
                              c.target)
        entry = self._reusable("translate", fp)
        if entry is None:
            jobs: list[tuple[str, str, str]] = []  # (id, field, source text)
            for p in sources:
                if c.kind == "mpo" and isinstance(dominant_chosen[p.id], tuple):
                    continue  # no dominant pair: nothing to translate
                jobs += [(p.id, f"prompt.{i}", m.content) for i, m in enumerate(p.prompt)]
                if with_answers:
                    chosen = dominant_chosen[p.id] if c.kind == "mpo" else p.chosen
                    jobs += [(p.id, "chosen", chosen), (p.id, "rejected", p.rejected)]
            report, rows, errors = FilterReport(), [], 0
            similarity, note = load_similarity(c.filters.similarity_model)
            report.notes.append(note)
            with TranslationCache(c.cache_path, run_id=self.run_id) as cache:
                for lang in c.languages:
                    done = cache.translate(self.translator, [j[2] for j in jobs], c.dominant_language, lang,
                                           on_batch=lambda n, lang=lang: maybe_crash("translate", n))
                    items = [TextItem(f"{pid}|{lang}|{name}", lang, t.text, text, c.dominant_language, t.truncated)
                             for (pid, name, text), t in zip(jobs, done, strict=True)]
                    reasons = filter_texts(items, c.filters, report, "translate", similarity)
                    for (pid, name, text), t, item in zip(jobs, done, items, strict=True):
                        errors += t.error is not None
                        rows.append({"id": pid, "language": lang, "field": name, "source": text, "text": t.text,
                                     "truncated": t.truncated, "error": t.error, "filter": reasons[item.key]})
                for key in ("hits", "translated", "errors", "deduplicated"):
                    self.run_stats[{"hits": "translation_cache_hits",
                                    "errors": "translation_errors"}.get(key, key)] += cache.stats[key]
            entry = self._finish("translate", fp, "03_translations.jsonl", rows, report, complete=errors == 0)
        else:
            entry = {**entry, "reused": True}
        table = {(r["id"], r["language"], r["field"]): r for r in _rows(self.work / entry["output"])}
        return table, fp, entry

    def stage_target(self, sources: list[PreferencePair], table: dict,
                     upstream: str) -> tuple[dict, str, dict[str, Any]]:
        c = self.config
        prompts_by_key: dict[tuple[str, str], Any] = {(p.id, lang): translated_prompt(p, lang, table)
                                                      for p in sources for lang in c.languages}
        if not c.needs_target_generation:
            return prompts_by_key, text_fingerprint("target", upstream, "translate"), {"skipped": True}
        fp = text_fingerprint("target", upstream, self._gen_identity(), self._judge_identity(), c.filters.to_dict())
        prompts = [EvalPrompt(gen_id(pid, lang), lang, prompt_text(turns), "build")
                   for (pid, lang), turns in prompts_by_key.items() if not isinstance(turns, str)]
        pairs, entry = self._generated_pairs("target", fp, "04_target.jsonl", prompts, need_rejected=True)
        sides: dict[tuple[str, str], Side | str] = {}
        for key, turns in prompts_by_key.items():
            if isinstance(turns, str):
                sides[key] = turns
            else:
                chosen, rejected, reason = pairs[gen_id(*key)]
                sides[key] = reason or (turns, chosen, rejected)
        return sides, fp, entry

    # -- the whole build -------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run every stage (reusing finished ones) and return the data card (also written)."""
        c = self.config
        self.work.mkdir(parents=True, exist_ok=True)
        sources, source_entry = self.stage_source()
        fp_source = source_entry["fingerprint"]
        _log(f"{len(sources)} source pairs; languages {', '.join(c.languages)}; kind {c.kind} (run {self.run_id})")
        chosen, fp_dom, dom_entry = self.stage_dominant(sources, fp_source)
        table, fp_tr, tr_entry = self.stage_translate(sources, chosen, fp_dom)
        target, fp_tg, tg_entry = self.stage_target(sources, table, fp_tr)
        if c.kind in ("mpo", "dpo") and c.target == "translate":
            target = translated_sides(sources, c.languages, table, target)
        meta = {"translator": self.translator.fingerprint(), "strategy": c.target if c.kind != "mlc" else None}
        if c.kind == "mpo":
            records, dropped = mpo_pairs(sources, c.languages, chosen, target, metadata=meta)
        elif c.kind == "dpo":
            records, dropped = dpo_pairs(sources, c.languages, target, include_dominant=c.include_dominant,
                                         metadata=meta)
        else:
            records, dropped = mlc_pairs(sources, c.languages, target, metadata=meta)
        kept, filtered = filter_pairs(records, c.filters)
        report = FilterReport()
        for (lang, reason), n in (dropped + filtered).items():
            report.add("pairs", lang, reason, n)
        per_language: Counter = Counter()  # records holding each language (MLC: each prompt variant)
        for r in kept:
            per_language.update([r.target.language] if isinstance(r, ParallelPair)
                                else (r.variants.languages if r.variants else [r.language]))
        for lang, n in per_language.items():
            report.add("pairs", lang, "kept", n)
        return self._emit(kept, per_language, report, {"source": source_entry, "dominant": dom_entry,
                                                          "translate": tr_entry, "target": tg_entry},
                          text_fingerprint(fp_source, fp_dom, fp_tr, fp_tg, c.kind, c.include_dominant))

    def _emit(self, records: list[Any], per_language: Counter, report: FilterReport, entries: dict[str, dict],
              fingerprint: str) -> dict[str, Any]:
        """Outputs, run log and data card (:func:`.card.emit`), then a summary on stderr."""
        c = self.config
        card, run = emit(c, records, per_language, report, entries, fingerprint, work=self.work, run_id=self.run_id,
                         run_stats=self.run_stats, translator=self.translator, judge_identity=self._judge_identity,
                         gen_identity=self._gen_identity)
        _log(f"translated {run.get('translated', 0)} new ({run.get('translation_cache_hits', 0)} from the cache), "
             f"generated {run.get('generated', 0)} new ({run.get('generation_reused', 0)} reused), judged "
             f"{run.get('judged', 0)} new ({run.get('judge_reused', 0)} reused) (run {self.run_id})")
        _log(f"wrote {len(records)} records to {c.out_dir / OUTPUT_NAMES[c.kind]} "
             f"and the data card to {c.out_dir / 'data_card.json'}")
        incomplete = [s for s, e in entries.items() if e.get("complete") is False]
        if incomplete:
            _log(f"stage(s) {', '.join(incomplete)} had failures (see the data card); rerun to retry them")
        return card


def run_build(config: BuildConfig, **workers: Any) -> dict[str, Any]:
    """Run a build and return its data card (see :class:`BuildPipeline`)."""
    return BuildPipeline(config, **workers).run()
