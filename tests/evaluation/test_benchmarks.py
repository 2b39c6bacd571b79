"""Benchmark registry: every benchmark loads from the shared data with the right counts; filters."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
from collections import Counter

import pytest

from polyalign.errors import UserError
from polyalign.evaluation.benchmarks import get_benchmark, list_benchmarks, load_benchmark

MULTIJAIL_LANGS = {"en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"}
MLC_LANGS = {"en", "zh", "ar", "ru", "ja", "bn", "sw", "ur", "ps", "ku"}
RTPLX_FILES = {"en": "EN", "de": "DE", "zh": "ZH-Hans", "ar": "AR", "hi": "HI", "ja": "JA", "ko": "KO", "ru": "RU"}


def _per_language(prompts):
    return Counter(p.language for p in prompts)


def test_registry_lists_every_benchmark():
    specs = list_benchmarks()
    assert set(specs) == {"multijail", "xsafety", "pku-saferlhf-10", "rtplx", "advbench", "custom"}
    assert get_benchmark("MLC").name == "pku-saferlhf-10"
    assert get_benchmark("rtp-lx").kind == "toxicity"
    rtplx = specs["rtplx"].generation
    assert (rtplx["num_samples"], rtplx["max_new_tokens"], rtplx["temperature"], rtplx["top_p"],
            rtplx["chat_template"]) == (25, 20, 0.9, 0.8, False)
    assert specs["multijail"].generation["temperature"] == 0.0
    assert specs["multijail"].generation["chat_template"] is True
    with pytest.raises(UserError, match="unknown benchmark 'nope'"):
        get_benchmark("nope")


def test_multijail_counts(shared_data):
    prompts = load_benchmark("multijail", data=shared_data)
    assert _per_language(prompts) == {lang: 315 for lang in MULTIJAIL_LANGS}
    assert all(p.benchmark == "multijail" and p.text.strip() for p in prompts)
    assert len({p.id for p in prompts}) == len(prompts)


def _xsafety_nonblank_rows(root):
    """Independent count: non-blank first cells per language (csv module / openpyxl)."""
    import openpyxl

    counts = Counter()
    for file in root.glob("*/*"):
        if file.suffix == ".csv":
            with open(file, encoding="utf-8-sig", newline="") as handle:
                cells = [row[0] if row else "" for row in csv.reader(handle)]
        elif file.suffix == ".xlsx":
            book = openpyxl.load_workbook(file, read_only=True)
            cells = [str(row[0] or "") for row in book.worksheets[0].iter_rows(values_only=True)]
            book.close()
        else:
            continue
        counts[file.parent.name] += sum(1 for c in cells if c.strip())
    return counts


def test_xsafety_counts(shared_data):
    prompts = load_benchmark("xsafety", data=shared_data)
    assert _per_language(prompts) == _xsafety_nonblank_rows(shared_data / "xsafety")
    assert sum(_per_language(prompts).values()) == 6 * 14 * 200 - 1  # one whitespace-only row
    # Category names match case- and separator-insensitively, against one canonical set.
    harm = load_benchmark("xsafety", data=shared_data, categories=["physical harm"], languages=["zh"])
    assert _per_language(harm) == {"zh": 200} and {p.category for p in harm} == {"Physical_Harm"}
    # Every language's file for a category is found, whatever its name (ru's is truncated,
    # en's ends in _en, bn's is .xlsx).
    crimes = load_benchmark("xsafety", data=shared_data, categories=["Crimes_And_Illegal_Activities"])
    assert _per_language(crimes) == {lang: 200 for lang in ("en", "zh", "ar", "bn", "ru", "fr")}
    with pytest.raises(UserError) as err:
        load_benchmark("xsafety", data=shared_data, categories=["Crimes"])
    assert "not in xsafety data" in str(err.value) and "physical_harm" in str(err.value).lower()


def test_mlc_counts(shared_data):
    prompts = load_benchmark("pku-saferlhf-10", data=shared_data)
    assert _per_language(prompts) == {lang: 180 for lang in MLC_LANGS}
    # One prompt per language variant of each source item.
    by_source = Counter(p.source_id for p in prompts)
    assert len(by_source) == 180 and set(by_source.values()) == {10}


def test_rtplx_counts(shared_data):
    prompts = load_benchmark("rtplx", data=shared_data)
    expected = {}
    for lang, locale in RTPLX_FILES.items():
        lines = (shared_data / "rtplx" / f"RTP_LX_{locale}.json").read_text(encoding="utf-8").splitlines()
        expected[lang] = sum(1 for line in lines if line.strip())
    assert _per_language(prompts) == expected


def test_data_root_file_and_env(shared_data, monkeypatch, tmp_path):
    direct = load_benchmark("multijail", data=shared_data / "multijail" / "MultiJail.csv", languages=["en"])
    assert len(direct) == 315
    monkeypatch.setenv("POLYALIGN_DATA", str(shared_data))
    assert len(load_benchmark("multijail", languages=["sw"])) == 315
    monkeypatch.delenv("POLYALIGN_DATA")
    with pytest.raises(UserError, match="needs its data"):
        load_benchmark("multijail")
    with pytest.raises(UserError, match="multijail/MultiJail.csv"):
        load_benchmark("multijail", data=tmp_path)


def test_language_filter(shared_data):
    prompts = load_benchmark("multijail", data=shared_data, languages=["zh", "SW"])
    assert _per_language(prompts) == {"zh": 315, "sw": 315}
    with pytest.raises(UserError) as err:
        load_benchmark("multijail", data=shared_data, languages=["fr"])
    assert "fr" in str(err.value) and "available" in str(err.value) and err.value.field == "languages"


def test_category_filter(shared_data):
    # Independent count from the CSV's tags column.
    with open(shared_data / "multijail" / "MultiJail.csv", encoding="utf-8-sig", newline="") as handle:
        tags = [ast.literal_eval(row["tags"]) for row in csv.DictReader(handle)]
    counts = Counter(tag for row in tags for tag in row)
    tag, n = counts.most_common(1)[0]
    prompts = load_benchmark("multijail", data=shared_data, categories=[tag], languages=["en", "ko"])
    assert _per_language(prompts) == {"en": n, "ko": n}
    with pytest.raises(UserError, match="not in multijail data"):
        load_benchmark("multijail", data=shared_data, categories=["no such category"])


def test_limit_per_language_and_seed(shared_data):
    a = load_benchmark("multijail", data=shared_data, languages=["en", "zh", "bn"], limit=7, seed=1)
    b = load_benchmark("multijail", data=shared_data, languages=["en", "zh", "bn"], limit=7, seed=1)
    c = load_benchmark("multijail", data=shared_data, languages=["en", "zh", "bn"], limit=7, seed=2)
    assert _per_language(a) == {"en": 7, "zh": 7, "bn": 7}
    assert [p.id for p in a] == [p.id for p in b]
    assert {p.id for p in a} != {p.id for p in c}
    # Parallel benchmark: the same source items in every language.
    sources = {lang: {p.source_id for p in a if p.language == lang} for lang in ("en", "zh", "bn")}
    assert sources["en"] == sources["zh"] == sources["bn"]
    # Independent computation of the seeded choice: the 7 smallest sha256("seed:source_id").
    everything = load_benchmark("multijail", data=shared_data, languages=["en"])
    ranked = sorted(everything, key=lambda p: hashlib.sha256(f"1:{p.source_id}".encode()).hexdigest())
    assert sources["en"] == {p.source_id for p in ranked[:7]}
    # Kept items stay in file order.
    order = [p.id for p in everything]
    kept = [p.id for p in a if p.language == "en"]
    assert kept == sorted(kept, key=order.index)
    with pytest.raises(UserError, match="positive"):
        load_benchmark("multijail", data=shared_data, limit=0)


def test_advbench_from_self_written_csv(tmp_path):
    folder = tmp_path / "advbench"
    folder.mkdir()
    rows = [("Write a poem about tea", "Sure, here is a poem"), ("Explain, briefly, photosynthesis", "Sure, here is"),
            ("Describe a sunny day", "Sure")]
    with open(folder / "harmful_behaviors.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["goal", "target"])
        writer.writerows(rows)
    for data in (tmp_path, folder / "harmful_behaviors.csv"):
        prompts = load_benchmark("advbench", data=data)
        assert [p.text for p in prompts] == [goal for goal, _ in rows]
        assert {p.language for p in prompts} == {"en"} and {p.benchmark for p in prompts} == {"advbench"}
    assert len(load_benchmark("advbench", data=tmp_path, limit=2)) == 2


def test_custom_jsonl_with_column_map(tmp_path):
    path = tmp_path / "mine.jsonl"
    items = [{"q": f"question {i}", "lang": lang, "uid": f"u{i}"} for i, lang in enumerate(["en", "de", "de", "ja"])]
    path.write_text("".join(json.dumps(x) + "\n" for x in items), encoding="utf-8")
    prompts = load_benchmark("custom", data=path, column_map={"text": "q", "language": "lang", "id": "uid"})
    assert _per_language(prompts) == {"en": 1, "de": 2, "ja": 1}
    assert [p.text for p in prompts] == [x["q"] for x in items]
    assert {p.benchmark for p in prompts} == {"custom"}
    with pytest.raises(UserError, match="needs its data"):
        load_benchmark("custom")


def test_user_spec_file(tmp_path):
    data = tmp_path / "p.csv"
    data.write_text("prompt\nhello\nworld\n", encoding="utf-8")
    spec = tmp_path / "mine.yaml"
    spec.write_text(f"name: mine\nkind: safety\nformat: csv\npath: {data.name}\ncolumn_map: {{text: prompt}}\n"
                    "language: en\n", encoding="utf-8")
    prompts = load_benchmark(str(spec), data=tmp_path)
    assert [p.text for p in prompts] == ["hello", "world"] and {p.benchmark for p in prompts} == {"mine"}
    spec.write_text("name: mine\nkind: safety\nformat: csv\ncolour: red\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        get_benchmark(str(spec))
    assert err.value.field == "colour" and err.value.file == str(spec)
