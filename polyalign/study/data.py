"""The study's training and probe data, built from the released MPO file (and a MultiJail overlap check).

From the MPO file's items (English pair + the same item in one target language):

- ``dpo_en.jsonl``: the distinct English pairs (100 in the release), language ``en``;
- ``target.jsonl``: a seeded sample of target-language pairs per language (the same for MPO
  and for target DPO); ``mpo.jsonl``: those items as parallel pairs (English + target);
- ``mlc.jsonl``: the English pairs with their prompt in every target language as MLC
  variants (en + 6), from the same items;
- ``reward_gap.jsonl``: pairs scored before/after training, per language; target pairs are
  held out from ``target.jsonl`` (the English ones are the training pairs: there are no others).

All are canonical JSONL (:mod:`polyalign.data.writers`), labelled, so training never guesses
a language. :func:`overlap_report` compares MultiJail's prompts with the training prompts.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polyalign.data.records import ParallelPair, PreferencePair, PromptVariants
from polyalign.errors import UserError
from polyalign.evaluation.benchmarks import sample_rank

FILES = ("dpo_en.jsonl", "target.jsonl", "mpo.jsonl", "mlc.jsonl", "reward_gap.jsonl")


def _key(pair: PreferencePair) -> str:
    return " ".join(m.content.strip() for m in pair.prompt)


def _sample(items: Sequence[Any], n: int, seed: int, key: Any) -> list[Any]:
    ranked = sorted(items, key=lambda item: (sample_rank(seed, key(item)), key(item)))
    return ranked[:n]


def build_study_data(mpo_file: str | Path, out_dir: str | Path, *, target_languages: Sequence[str],
                     target_pairs_per_language: int, reward_gap_pairs_per_language: int,
                     sample_seed: int) -> dict[str, Any]:
    """Write the study's data files into ``out_dir``; returns counts per file and language."""
    from polyalign.data.readers import load_parallel_pairs
    from polyalign.data.writers import write_canonical

    items: list[ParallelPair] = load_parallel_pairs(mpo_file, format="mpo", dominant_language="en")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    english: dict[str, PreferencePair] = {}
    by_prompt: dict[str, list[ParallelPair]] = defaultdict(list)
    for item in items:
        key = _key(item.dominant)
        if key not in english:
            english[key] = PreferencePair(id=f"en-{len(english)}", prompt=item.dominant.prompt,
                                          chosen=item.dominant.chosen, rejected=item.dominant.rejected, language="en")
        by_prompt[key].append(item)
    en_id = {key: pair.id for key, pair in english.items()}
    per_lang: dict[str, list[ParallelPair]] = defaultdict(list)
    for item in items:
        per_lang[item.target.language].append(item)
    missing = [lang for lang in target_languages if not per_lang.get(lang)]
    if missing:
        raise UserError(f"no target pairs in {', '.join(missing)} (have: {', '.join(sorted(per_lang))})",
                        file=mpo_file, field="target_languages")

    def parallel(item: ParallelPair) -> ParallelPair:
        # Ids name the English item and the language: stable across runs, unique per file.
        lang, base = item.target.language, en_id[_key(item.dominant)]
        dominant = PreferencePair(id=f"{base}", prompt=item.dominant.prompt, chosen=item.dominant.chosen,
                                  rejected=item.dominant.rejected, language="en")
        target = PreferencePair(id=f"{base}-{lang}", prompt=item.target.prompt, chosen=item.target.chosen,
                                rejected=item.target.rejected, language=lang)
        return ParallelPair(id=f"{base}-{lang}", dominant=dominant, target=target)

    train_items: list[ParallelPair] = []
    gap_pairs: list[PreferencePair] = _sample(list(english.values()), reward_gap_pairs_per_language, sample_seed,
                                              lambda p: p.id)
    for lang in target_languages:
        ranked = _sample([parallel(i) for i in per_lang[lang]], len(per_lang[lang]), sample_seed, lambda p: p.id)
        train_items += ranked[:target_pairs_per_language]
        gap_pairs += [p.target for p in ranked[target_pairs_per_language:][:reward_gap_pairs_per_language]]
    mlc_pairs = []
    for key, pair in english.items():
        prompts = {"en": pair.prompt}
        for item in by_prompt[key]:
            if item.target.language in target_languages:
                prompts.setdefault(item.target.language, item.target.prompt)
        mlc_pairs.append(PreferencePair(id=pair.id, prompt=pair.prompt, chosen=pair.chosen, rejected=pair.rejected,
                                        language="en", variants=PromptVariants(id=pair.id, prompts=prompts)))
    files = {"dpo_en.jsonl": list(english.values()), "target.jsonl": [i.target for i in train_items],
             "mpo.jsonl": train_items, "mlc.jsonl": mlc_pairs, "reward_gap.jsonl": gap_pairs}
    for name, records in files.items():
        write_canonical(records, out / name)
    counts = {name: _count(records) for name, records in files.items()}
    counts["mlc_variant_languages"] = _count_variants(mlc_pairs)
    return {"source": str(mpo_file), "n_items_read": len(items), "n_english_pairs": len(english), "files": counts}


def _count(records: Sequence[Any]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        counts[record.target.language if isinstance(record, ParallelPair) else record.language] += 1
    return dict(sorted(counts.items()))


def _count_variants(pairs: Sequence[PreferencePair]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for pair in pairs:
        for lang in (pair.variants.prompts if pair.variants else {}):
            counts[lang] += 1
    return dict(sorted(counts.items()))


_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


def normalise(text: str) -> str:
    """Casefolded NFKC text without punctuation, single spaces: what "the same prompt" means here."""
    text = _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(text.split())


def _grams(text: str) -> set[str]:
    """Word sets for spaced scripts, character trigrams otherwise (zh/ja/th have no spaces)."""
    words = text.split()
    if len(words) >= 4:
        return set(words)
    squashed = text.replace(" ", "")
    return {squashed[i:i + 3] for i in range(max(1, len(squashed) - 2))}


def jaccard(a: str, b: str) -> float:
    ga, gb = _grams(normalise(a)), _grams(normalise(b))
    return len(ga & gb) / len(ga | gb) if ga | gb else 0.0


def overlap_report(eval_prompts: dict[str, list[tuple[str, str]]], train_prompts: dict[str, list[tuple[str, str]]],
                   *, near: float = 0.6) -> dict[str, Any]:
    """Per language: MultiJail prompts equal (normalised) to a training prompt, and near
    duplicates (Jaccard of words / character trigrams >= ``near``), with the closest pair.

    Both arguments map language -> ``[(id, text), ...]``; only shared languages are compared.
    """
    report: dict[str, Any] = {"near_threshold": near, "per_language": {}}
    for lang in sorted(set(eval_prompts) & set(train_prompts)):
        train_norm = {normalise(t): i for i, t in train_prompts[lang]}
        train_grams = [(i, _grams(normalise(t))) for i, t in train_prompts[lang]]
        exact, near_dups, best = [], [], (0.0, None, None)
        for eid, text in eval_prompts[lang]:
            if normalise(text) in train_norm:
                exact.append([eid, train_norm[normalise(text)]])
                continue
            grams = _grams(normalise(text))
            for tid, tgrams in train_grams:
                union = grams | tgrams
                score = len(grams & tgrams) / len(union) if union else 0.0
                if score > best[0]:
                    best = (score, eid, tid)
                if score >= near:
                    near_dups.append([eid, tid, round(score, 3)])
        report["per_language"][lang] = {
            "n_eval": len(eval_prompts[lang]), "n_train": len(train_prompts[lang]), "exact": exact,
            "near": near_dups, "max_similarity": round(best[0], 3), "closest": [best[1], best[2]],
        }
    report["n_exact"] = sum(len(v["exact"]) for v in report["per_language"].values())
    report["n_near"] = sum(len(v["near"]) for v in report["per_language"].values())
    return report
