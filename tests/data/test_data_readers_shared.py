"""Every file in ../shared/data read with the real readers, counts checked against
independent counts (plain loops over the raw files, the csv/json modules).

Exact numbers found (and why some rows are skipped — real defects in the released data):
* MPO Llama: 600 items; item 505 has an empty target prompt -> skipped ("empty text");
  599 kept: zh 99, ja 100, ko 100, ar 100, bn 100, sw 100.
* MPO Gemma: 600 items; 17 target prompts were left in English (lingua: en, conf >= 0.94,
  no target-script character) -> "language mismatch"; 583 kept: zh 95, ja 98, ko 94,
  ar 99, bn 98, sw 99. Without the check all 600 are kept, exactly 100 per language.
* MLC: 180 rows, one (line 91) with an empty chosen answer -> 179 pairs x 10 languages.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from polyalign.data.formats.xsafety import CATEGORIES as XSAFETY_CATEGORIES
from polyalign.data.readers import detect_format, load_prompt_variants, read_records
from polyalign.data.records import EvalPrompt, ParallelPair, PreferencePair, PromptVariants
from raw_counts import first_cells

pytestmark = pytest.mark.shared_data
MPO_LANGUAGES = {"zh", "ja", "ko", "ar", "bn", "sw"}


def _raw_mpo(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.mark.parametrize("model", ["llama", "gemma"])
def test_mpo_counts_and_languages(shared_data: Path, model: str) -> None:
    path = shared_data / "mpo" / f"{model}_mpo_data.json"
    raw = _raw_mpo(path)
    assert len(raw) == 600
    empty = [i for i, item in enumerate(raw) if not item["target_conversations"][0]["value"].strip()]

    result = read_records(path)
    assert detect_format(path) == result.format == "mpo"
    assert all(isinstance(r, ParallelPair) for r in result.records)
    assert len(result.records) + sum(result.skipped.values()) == 600
    assert result.skipped["empty text"] == len(empty)
    assert len(result.problems) == sum(result.skipped.values())
    counts = Counter(r.target.language for r in result.records)
    assert set(counts) == MPO_LANGUAGES
    assert all(90 <= n <= 110 for n in counts.values()), counts
    assert sum(counts.values()) == len(result.records)
    assert {r.dominant.language for r in result.records} == {"en"}
    # Texts are the raw ones, in place (ids are list positions).
    for record in result.records[:50]:
        item = raw[int(record.id)]
        assert record.target.chosen == item["target_chosen"]["value"]
        assert record.dominant.prompt[0].content == item["source_conversations"][0]["value"]
        assert record.dominant.prompt[0].role == "user"


@pytest.mark.parametrize("model", ["llama", "gemma"])
def test_mpo_detected_languages_are_distinct_per_source_prompt(shared_data: Path, model: str) -> None:
    """Independent check of detection: each English prompt appears in exactly 6 items, one
    per target language, so the detected labels within a group must all differ."""
    path = shared_data / "mpo" / f"{model}_mpo_data.json"
    raw = _raw_mpo(path)
    groups: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(raw):
        groups[item["source_conversations"][0]["value"]].append(index)
    assert sorted(Counter(map(len, groups.values())).items()) == [(6, 100)]

    result = read_records(path, check_language=False)
    by_index = {int(r.id): r.target.language for r in result.records}
    for members in groups.values():
        labels = [by_index[i] for i in members if i in by_index]
        assert len(set(labels)) == len(labels), labels
    if model == "gemma":  # nothing skipped: exactly 100 per language
        assert Counter(by_index.values()) == {lang: 100 for lang in MPO_LANGUAGES}


def test_mlc_counts(shared_data: Path) -> None:
    path = shared_data / "mlc" / "pku_saferlhf_safety_test.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) == 180
    languages = ["en"] + [k[len("prompt_"):] for k in rows[0] if k.startswith("prompt_")]
    assert len(languages) == 10
    broken = sum(1 for r in rows if not r["chosen"]["value"].strip() or not r["rejected"]["value"].strip())

    result = read_records(path)
    assert result.format == "mlc"
    assert len(result.records) == 180 - broken and result.skipped == Counter({"empty text": broken})
    for record in result.records:
        assert isinstance(record, PreferencePair) and record.language == "en"
        assert record.variants is not None and list(record.variants.prompts) == languages
        row = rows[int(record.id)]
        assert record.variants.prompts["ja"][0].content == row["prompt_ja"][0]["value"]
        assert record.chosen == row["chosen"]["value"]


def test_mlc_prompt_variants_keep_rows_with_broken_answers(shared_data: Path) -> None:
    """The MLC loss needs only prompts: all 180 rows give variants in 10 languages."""
    variants = load_prompt_variants(shared_data / "mlc" / "pku_saferlhf_safety_test.jsonl")
    assert len(variants) == 180 and [v.id for v in variants] == [str(i) for i in range(180)]
    assert {len(v.prompts) for v in variants} == {10}


def test_multijail_counts(shared_data: Path) -> None:
    path = shared_data / "multijail" / "MultiJail.csv"
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    languages = ["en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"]
    assert len(rows) == 315

    result = read_records(path)
    assert result.format == "multijail" and not result.problems
    assert len(result.records) == 315 * 10 == 3150
    assert Counter(r.language for r in result.records) == {lang: 315 for lang in languages}
    by_id = {r.id: r for r in result.records}
    for row in rows:
        for lang in languages:
            record = by_id[f"{row['id']}-{lang}"]
            assert isinstance(record, EvalPrompt) and record.text == row[lang]
            assert record.source_id == row["id"] and record.benchmark == "multijail"
            tags = row["tags"].strip("[]").split("', '")
            assert record.category == tags[0].strip("'\"")
            assert len(record.metadata["tags"]) == len(tags)


def test_detox_parallel_aligned(shared_data: Path) -> None:
    folder = shared_data / "detox_parallel"
    files = sorted(folder.glob("*.jsonl"))
    assert len(files) == 17
    lines = {f.name.split("_")[3]: [json.loads(x)["Prompt"] for x in f.read_text(encoding="utf-8").splitlines()]
             for f in files}
    assert {len(v) for v in lines.values()} == {200}

    result = read_records(folder)
    assert result.format == "parallel" and not result.problems
    assert len(result.records) == 200
    for record in result.records:
        assert isinstance(record, PromptVariants)
        assert set(record.prompts) == set(lines)
        for lang, text in lines.items():
            assert record.prompts[lang][0].content == text[int(record.id)]


def test_rtplx_counts_per_locale(shared_data: Path) -> None:
    folder = shared_data / "rtplx"
    expected: Counter = Counter()
    for file in sorted(folder.glob("RTP_LX_*.json")):
        locale = file.stem[len("RTP_LX_"):].split("-")[0].lower()
        with open(file, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    expected[locale] += 1
    assert len(expected) == 8

    result = read_records(folder)
    assert result.format == "rtplx" and not result.problems
    assert Counter(r.language for r in result.records) == expected
    single = read_records(folder / "RTP_LX_ZH-Hans.json")
    assert len(single.records) == expected["zh"]
    first = single.records[0]
    assert first.language == "zh" and first.benchmark == "rtplx"
    assert 1.0 <= first.metadata["toxicity"] <= 5.0
    assert first.metadata["locale"] == "ZH-Hans"


XSAFETY_LANGUAGES = {"en", "zh", "ar", "bn", "ru", "fr"}


def _xsafety_raw(root: Path) -> dict[tuple[str, str], list[str]]:
    """``(language, file name) -> first cells of its data rows``, read with csv/openpyxl."""
    return {(f.parent.name, f.name): first_cells(f)
            for f in sorted(root.glob("*/*")) if f.suffix in (".csv", ".xlsx")}


def test_xsafety_counts(shared_data: Path) -> None:
    """The full release files of 6 languages: 14 files each (bn: 13 .xlsx), 200 rows per
    file counted with csv/openpyxl; one whitespace-only row (ru/Insult.csv) is a located
    skip that keeps its position, so ids stay aligned across languages."""
    root = shared_data / "xsafety"
    raw = _xsafety_raw(root)
    assert {lang for lang, _ in raw} == XSAFETY_LANGUAGES
    assert Counter(lang for lang, _ in raw) == {lang: 14 for lang in XSAFETY_LANGUAGES}
    assert sum(name.endswith(".xlsx") for _, name in raw) == 13
    assert {len(cells) for cells in raw.values()} == {200}
    blank = [(lang, name, i) for (lang, name), cells in raw.items() for i, c in enumerate(cells) if not c.strip()]
    assert [(lang, name) for lang, name, _ in blank] == [("ru", "Insult.csv")]

    result = read_records(root, check_language=False)
    assert result.format == "xsafety"
    assert len(result.records) + sum(result.skipped.values()) == 14 * 200 * 6
    assert result.skipped == Counter({"empty text": len(blank)})
    (problem,) = result.problems
    _, name, index = blank[0]
    assert problem.file.endswith("ru/Insult.csv") and problem.reason == "empty text"
    expected = Counter({lang: 2800 for lang in XSAFETY_LANGUAGES})
    expected["ru"] -= 1
    assert Counter(r.language for r in result.records) == expected

    # One canonical set of 14 categories in every language, the raw name beside it.
    by_lang = defaultdict(set)
    for r in result.records:
        by_lang[r.language].add(r.category)
    assert {frozenset(v) for v in by_lang.values()} == {frozenset(XSAFETY_CATEGORIES)}
    raw_names = {r.metadata["category_raw"] for r in result.records if r.category == "Crimes_And_Illegal_Activities"}
    assert raw_names == {"Crimes_And_Illegal_Activities", "Crimes_And_Illegal_Activities_en",
                         "Crimes_And_Illegal_Activities_n", "Crimes_And_Illegal_Activitie"}

    # Texts in place; the same id means the same row position in every language.
    by_id = {r.id: r for r in result.records}
    for (lang, file_name), cells in raw.items():
        category = next(r.category for r in result.records if r.language == lang
                        and r.metadata["file"] == f"{lang}/{file_name}")
        for i, cell in enumerate(cells):
            record = by_id.get(f"xsafety-{lang}-{category}-{i}")
            if cell.strip():
                assert record is not None and record.text == cell and record.source_id == f"{category}-{i}"
            else:
                assert record is None
    sources = defaultdict(set)
    for r in result.records:
        sources[r.language].add(r.source_id)
    assert sources["ru"] == sources["en"] - {f"Insult-{index}"}
    assert sources["en"] == sources["zh"] == sources["ar"] == sources["bn"] == sources["fr"]

    assert len(read_records(root / "en", check_language=False).records) == 2800
    one = read_records(root / "en" / "Unfairness_And_Discrimination_n.csv", check_language=False)
    assert one.format == "xsafety" and len(one.records) == 200  # trailing empty column
    bn = read_records(root / "bn" / "Insult_n.xlsx", check_language=False)
    assert bn.format == "xsafety" and [r.text for r in bn.records] == raw[("bn", "Insult_n.xlsx")]
    multiline = [r for r in result.records if "\n" in r.text]
    assert multiline
