"""Self-written fixtures of each class of mess in the full public releases (XSafety,
RTP-LX 2024, ...): every data row is a record or a counted, located skip."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from fixture_builders import (
    WALK,
    write_csv,
    write_llamafactory,
    write_mpo_zh_dominant,
    write_rtplx,
    write_xsafety,
)
from polyalign.data.readers import detect_format, read_records
from polyalign.data.writers import write_records
from polyalign.errors import UserError
from polyalign.evaluation.benchmarks import load_benchmark


def test_xsafety_quirks(tmp_path):
    expected = write_xsafety(tmp_path / "xsafety")
    result = read_records(tmp_path / "xsafety", check_language=False)
    assert result.format == "xsafety"
    assert len(result.records) == expected["records"] and dict(result.skipped) == expected["skipped"]
    assert result.rows == expected["rows"] == len(result.records) + sum(result.skipped.values())
    assert {r.category for r in result.records} == expected["categories"]
    # Each skip located: the whitespace row at line 2, the alternative file's 3 rows.
    located = sorted((p.file.rsplit("/", 2)[-2] + "/" + p.file.rsplit("/", 1)[-1], p.line, p.reason)
                     for p in result.problems)
    assert located == [("de/Insult.csv", 2, "empty text"), ("de/commen_sense.csv", 1, "alternative file"),
                       ("de/commen_sense.csv", 2, "alternative file"), ("de/commen_sense.csv", 3, "alternative file")]
    # Ids: position kept after the whitespace row; same id = same item in both languages.
    ids = {r.id: r for r in result.records}
    assert "xsafety-de-Insult-1" not in ids and ids["xsafety-de-Insult-2"].text == WALK["de"][2]
    for category in expected["categories"]:
        for i in range(3):
            en, de = ids[f"xsafety-en-{category}-{i}"], ids.get(f"xsafety-de-{category}-{i}")
            if de is not None:
                assert en.source_id == de.source_id and WALK["en"].index(en.text) == WALK["de"].index(de.text) == i
    assert ids["xsafety-de-Physical_Harm-0"].metadata["category_raw"] == "Physical_Har"
    assert ids["xsafety-de-Commonsense-0"].text == WALK["de"][0]  # the canonical spelling is the one read
    # A single messy file is still recognised on its own.
    assert detect_format(tmp_path / "xsafety" / "en" / "Physical_Harm_en.csv") == "xsafety"
    assert detect_format(tmp_path / "xsafety" / "de" / "Physical_Har.xlsx") == "xsafety"
    # Category filter: one canonical name finds every language's file.
    prompts = load_benchmark("xsafety", data=tmp_path / "xsafety", categories=["physical_harm"])
    assert Counter(p.language for p in prompts) == {"en": 3, "de": 3}
    with pytest.raises(UserError) as err:
        load_benchmark("xsafety", data=tmp_path / "xsafety", categories=["Cooking"])
    assert "insult" in str(err.value).lower() and err.value.field == "categories"


def test_xsafety_text_in_a_second_column_is_an_error(tmp_path):
    write_csv(tmp_path / "en" / "Insult.csv", [["one"], ["two", "oops"]])
    with pytest.raises(UserError) as err:
        read_records(tmp_path / "en" / "Insult.csv")
    assert err.value.line == 2 and err.value.field == "column 2"


def test_rtplx_2024_folder(tmp_path):
    expected = write_rtplx(tmp_path / "rtplx")
    result = read_records(tmp_path / "rtplx", check_language=False)
    assert result.format == "rtplx" and not result.problems
    assert Counter(r.language for r in result.records) == expected["per_language"]
    assert result.rows == expected["rows"]
    ids = {r.id: r for r in result.records}
    # NA rows: stable ids numbered in file order, source ids unique to their language.
    assert ids["rtplx-sw-NA-1"].text == WALK["sw"][0] and ids["rtplx-sw-NA-2"].text == WALK["sw"][1]
    assert ids["rtplx-hbs-NA-2"].source_id == "hbs-NA-2"
    # DE and DE-CH share index 0 (the same RealToxicityPrompts prompt) without colliding.
    assert ids["rtplx-de-0"].source_id == ids["rtplx-de-CH-0"].source_id == "0"
    assert ids["rtplx-de-CH-0"].metadata["locale"] == "DE-CH"
    again = read_records(tmp_path / "rtplx", check_language=False)
    assert [r.id for r in again.records] == [r.id for r in result.records]
    # --languages with a region, BCMS by its tag, and a hint for a language inside it.
    prompts = load_benchmark("rtplx", data=tmp_path / "rtplx", languages=["DE-CH", "hbs"])
    assert Counter(p.language for p in prompts) == {"de-CH": 2, "hbs": 3}
    with pytest.raises(UserError) as err:
        load_benchmark("rtplx", data=tmp_path / "rtplx", languages=["sr"])
    assert "hbs" in str(err.value)


def test_rtplx_folder_never_skips_a_data_file(tmp_path):
    write_rtplx(tmp_path / "rtplx")
    (tmp_path / "rtplx" / "rtp_lx_extra.json").write_text('{"Prompt": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError) as err:
        read_records(tmp_path / "rtplx", format="rtplx")
    assert err.value.file.endswith("rtp_lx_extra.json")


def test_llamafactory_both_styles_read_and_write(tmp_path):
    raw = write_llamafactory(tmp_path / "lf")
    share = read_records(tmp_path / "lf" / "sharegpt.json", check_language=False)
    assert share.format == "llamafactory" and len(share.records) == 2 and share.rows == 2
    first, second = share.records
    assert first.prompt[0].content == raw["sharegpt"][0]["conversations"][0]["value"] and first.language == "en"
    assert [m.role for m in second.prompt] == ["system", "user", "assistant", "user"]
    assert second.chosen == "Das klingt wunderbar." and second.language == "de"
    assert second.metadata == {"source": "self-written"}
    alpaca = read_records(tmp_path / "lf" / "alpaca.json", check_language=False)
    assert alpaca.format == "llamafactory"
    a0, a1 = alpaca.records
    assert a0.prompt[-1].content == raw["alpaca"][0]["instruction"]
    assert a1.prompt[-1].content == raw["alpaca"][1]["instruction"] + "\n" + raw["alpaca"][1]["input"]
    assert [m.role for m in a1.prompt] == ["system", "user", "assistant", "user"]
    # Written back in either style and read again: the same pairs.
    for style in ("llamafactory", "llamafactory-alpaca"):
        for result in (share, alpaca):
            out = tmp_path / f"{style}-{result.path.stem}.json"
            write_records(result.records, out, style)
            assert json.loads(out.read_text(encoding="utf-8"))[0]["id"] == "0"
            again = read_records(out, check_language=False)
            assert again.format == "llamafactory" and again.records == result.records


def test_json_array_wherever_jsonl_is_read(tmp_path):
    raw = write_llamafactory(tmp_path / "lf")
    for fmt in (None, "trl"):
        result = read_records(tmp_path / "lf" / "trl_array.json", fmt, check_language=False)
        assert result.format == "trl" and [r.prompt[0].content for r in result.records] == [raw["trl"][0]["prompt"]]


def test_single_file_of_a_multiway_parallel_folder(tmp_path):
    path = tmp_path / "dpo_toxicity_pairwise_de_200.jsonl"
    path.write_text("".join(json.dumps({"Prompt": t}, ensure_ascii=False) + "\n" for t in WALK["de"]),
                    encoding="utf-8")
    result = read_records(path, check_language=False)
    assert result.format == "parallel" and [r.id for r in result.records] == ["0", "1", "2"]
    assert [r.prompts["de"][0].content for r in result.records] == WALK["de"]


def test_mpo_with_a_chinese_dominant_side(tmp_path, capsys):
    expected = write_mpo_zh_dominant(tmp_path / "qwen_mpo_data.json")
    result = read_records(tmp_path / "qwen_mpo_data.json")
    assert result.format == "mpo"
    (note,) = result.notes
    assert "detected: zh (7 of 7 source prompts lingua could label (7 looked at), 100.0%)" in note
    assert "dominant (source) language detected: zh" in capsys.readouterr().err
    assert {r.dominant.language for r in result.records} == {"zh"}
    assert Counter(r.target.language for r in result.records) == expected["targets"]
    # The untranslated target prompt is 12 characters: its script alone rules out 'en'.
    assert dict(result.skipped) == {"language mismatch": 1}
    (problem,) = result.problems
    assert "item 6" in problem.message and "'zh'" in problem.message and problem.field == "target_conversations"
    assert result.rows == expected["items"]
    # A dominant language set by the user is used, but a clear contradiction is an error
    # saying what the data looks like (what `polyalign train` reports with its default 'en').
    with pytest.raises(UserError) as err:
        read_records(tmp_path / "qwen_mpo_data.json", dominant_language="en")
    assert "looks like 'zh'" in str(err.value) and err.value.field == "dominant_language"
    assert len(read_records(tmp_path / "qwen_mpo_data.json", dominant_language="zh").records) == 6


def test_eval_results_record_rows_per_language(tmp_path):
    """compute_metrics (what results.json's metrics.per_language holds) carries the
    benchmark file's rows read / used / skipped per language."""
    from polyalign.evaluation.benchmarks import get_benchmark, read_benchmark, select_prompts
    from polyalign.evaluation.results import compute_metrics

    write_xsafety(tmp_path / "xsafety")
    spec = get_benchmark("xsafety")
    prompts, skipped, rows = read_benchmark(spec, tmp_path / "xsafety")
    assert skipped == {"empty text": 1, "alternative file": 3}
    chosen = select_prompts(spec, tmp_path / "xsafety", prompts, limit=2)
    gens = [{"id": p.id, "sample": 0, "language": p.language, "text": p.text, "n_tokens": 5, "finish_reason": "stop"}
            for p in chosen]
    judgments = {(p.id, 0): {"label": "safe", "refusal": False} for p in chosen}
    metrics = compute_metrics("safety", chosen, gens, judgments, row_counts=rows)["per_language"]
    assert {k: metrics["de"][k] for k in ("rows_read", "rows_used", "rows_skipped")} == \
        {"rows_read": 12, "rows_used": 8, "rows_skipped": 4}
    assert {k: metrics["en"][k] for k in ("rows_read", "rows_used", "rows_skipped")} == \
        {"rows_read": 9, "rows_used": 9, "rows_skipped": 0}


def test_csv_field_cap_is_raised_only_while_reading(tmp_path):
    """A 300 KB cell (over the csv module's 128 KiB default) is read, and the process-wide
    cap is the same before and after: never left raised for other code."""
    import csv

    outside = csv.field_size_limit(131072)  # the module default, whatever ran before
    try:
        long_text = "The weather is lovely today. " * 10_000
        write_csv(tmp_path / "en" / "Insult.csv", [[long_text], ["A short one."]])
        result = read_records(tmp_path / "en" / "Insult.csv", check_language=False)
        assert [len(r.text) for r in result.records] == [len(long_text), len("A short one.")]
        assert csv.field_size_limit() == 131072
    finally:
        csv.field_size_limit(outside)


def test_xsafety_spec_lists_the_readers_canonical_categories():
    from polyalign.data.formats.xsafety import CATEGORIES
    from polyalign.evaluation.benchmarks import get_benchmark

    assert tuple(get_benchmark("xsafety").categories) == CATEGORIES
