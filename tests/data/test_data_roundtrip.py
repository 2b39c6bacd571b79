"""read -> write -> read gives identical records, for every writer, on crafted and real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyalign.data.readers import read_records
from polyalign.data.records import EvalPrompt, Message, ParallelPair, PreferencePair, PromptVariants
from polyalign.data.writers import trl_row, unrepresentable, write_records
from polyalign.errors import UserError


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


TRL_STANDARD = [
    {"prompt": "How do I bake bread at home?", "chosen": "Mix flour, water, yeast and salt, knead, rest, bake.",
     "rejected": "No idea.", "language": "en"},
    {"prompt": "Wie backe ich zu Hause ein einfaches Brot mit Sauerteig und Roggenmehl?",
     "chosen": "Mehl, Wasser, Hefe und Salz mischen, kneten, backen.",
     "rejected": "Keine Ahnung.", "language": "de", "source": "handwritten"},
]
TRL_CONVERSATIONAL = [
    {"id": "c1", "language": "fr",
     "prompt": [{"role": "system", "content": "Tu es un assistant prudent."},
                {"role": "user", "content": "Comment faire du pain à la maison ?"}],
     "chosen": [{"role": "assistant", "content": "Mélangez farine, eau, levure et sel, pétrissez, cuisez."}],
     "rejected": [{"role": "assistant", "content": "Aucune idée."}]},
]
TRL_IMPLICIT = [
    {"chosen": [{"role": "user", "content": "How do I boil an egg safely?"},
                {"role": "assistant", "content": "Cover it with water, boil for nine minutes, cool it."}],
     "rejected": [{"role": "user", "content": "How do I boil an egg safely?"},
                  {"role": "assistant", "content": "Microwave it in its shell."}],
     "language": "en"},
]


def _pair(i: int, lang: str, text: str) -> PreferencePair:
    return PreferencePair(id=f"p{i}", prompt=(Message("user", text),), chosen=f"safe answer {i}",
                          rejected=f"unsafe answer {i}", language=lang, metadata={"n": i, "tags": ["a", "b"]})


def _mixed_records() -> list:
    variants = PromptVariants("v1", {"en": (Message("user", "Where is the train station?"),),
                                     "de": (Message("user", "Wo ist der Bahnhof?"),)})
    pair_with_variants = PreferencePair("m1", variants.prompts["en"], "It is north of here.", "Go away.", "en",
                                        {}, PromptVariants("m1", dict(variants.prompts)))
    parallel = ParallelPair("x1", _pair(1, "en", "How can I stay safe when hiking alone?"),
                            _pair(2, "de", "Wie bleibe ich beim Wandern allein sicher?"))
    evals = EvalPrompt("e1", "en", "Tell me about the history of bread.", "handmade", "food", "s1", {"k": 1})
    return [pair_with_variants, parallel, variants, evals]


def test_canonical_roundtrip_all_record_types(tmp_path: Path) -> None:
    records = _mixed_records()
    out = tmp_path / "mixed.jsonl"
    assert write_records(records, out, "canonical") == 4
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [x["type"] for x in lines] == ["preference_pair", "parallel_pair", "prompt_variants", "eval_prompt"]
    again = read_records(out)
    assert again.format == "canonical" and not again.problems
    assert again.records == records
    write_records(again.records, tmp_path / "twice.jsonl", "canonical")
    assert (tmp_path / "twice.jsonl").read_bytes() == out.read_bytes()


@pytest.mark.parametrize("rows", [TRL_STANDARD, TRL_CONVERSATIONAL, TRL_IMPLICIT], ids=["standard", "conv", "implicit"])
def test_trl_roundtrip(tmp_path: Path, rows: list[dict]) -> None:
    source = _jsonl(tmp_path / "in.jsonl", rows)
    first = read_records(source)
    assert first.format == "trl" and len(first.records) == len(rows) and not first.problems
    for record, row in zip(first.records, rows):
        assert record.language == row["language"]
        chosen = row["chosen"] if isinstance(row["chosen"], str) else row["chosen"][-1]["content"]
        assert record.chosen == chosen
    out = tmp_path / "out.jsonl"
    assert write_records(first.records, out, "trl") == len(rows)
    second = read_records(out)
    assert second.format == "trl" and second.records == first.records
    written = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert all(w["chosen"][0]["role"] == "assistant" and w["prompt"][-1]["role"] == "user" for w in written)


def test_trl_implicit_prompt_is_the_shared_prefix(tmp_path: Path) -> None:
    record = read_records(_jsonl(tmp_path / "i.jsonl", TRL_IMPLICIT)).records[0]
    assert record.prompt == (Message("user", "How do I boil an egg safely?"),)
    assert record.rejected == "Microwave it in its shell."


def test_trl_without_language_column_detects_or_takes_argument(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "language"} for r in TRL_STANDARD]
    path = _jsonl(tmp_path / "nolang.jsonl", rows)
    assert [r.language for r in read_records(path).records] == ["en", "de"]
    # A declared language that lingua contradicts is a problem: row 2 is German, not English.
    declared = read_records(path, language="en")
    assert [r.id for r in declared.records] == ["0"] and declared.skipped == {"language mismatch": 1}
    assert "declared language 'en'" in str(declared.problems[0])


def test_trl_writer_flattens_parallel_pairs(tmp_path: Path) -> None:
    parallel = _mixed_records()[1]
    out = tmp_path / "p.jsonl"
    assert write_records([parallel], out, "trl") == 2
    assert read_records(out).records == [parallel.dominant, parallel.target]
    assert trl_row(parallel.target)["metadata"] == {"n": 2, "tags": ["a", "b"]}


def test_mpo_roundtrip_crafted(tmp_path: Path) -> None:
    records = [r for r in _mixed_records() if isinstance(r, ParallelPair)]
    records = [ParallelPair(str(i), PreferencePair(f"{i}-en", r.dominant.prompt, r.dominant.chosen,
                                                   r.dominant.rejected, "en"),
                            PreferencePair(f"{i}-de", r.target.prompt, r.target.chosen, r.target.rejected, "de"))
               for i, r in enumerate(records)]
    out = tmp_path / "m.json"
    assert write_records(records, out, "mpo") == 1
    assert read_records(out).records == records
    item = json.loads(out.read_text(encoding="utf-8"))[0]
    assert item["target_conversations"] == [{"from": "human", "value": "Wie bleibe ich beim Wandern allein sicher?"}]
    assert item["source_chosen"] == {"from": "gpt", "value": "safe answer 1"} and "id" not in item


def test_writers_refuse_records_they_cannot_hold(tmp_path: Path) -> None:
    evals = [r for r in _mixed_records() if isinstance(r, EvalPrompt)]
    with pytest.raises(UserError, match="record 0 .* is of type EvalPrompt") as info:
        write_records(evals, tmp_path / "x.json", "mpo")
    assert info.value.file == str(tmp_path / "x.json")
    with pytest.raises(UserError, match="preference pairs"):
        write_records(evals, tmp_path / "x.jsonl", "trl")
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.jsonl").exists()
    assert unrepresentable([_mixed_records()[1]], "mpo") == {"metadata": 1}


@pytest.mark.shared_data
@pytest.mark.parametrize("model", ["llama", "gemma"])
def test_mpo_roundtrip_real(shared_data: Path, tmp_path: Path, model: str) -> None:
    source = shared_data / "mpo" / f"{model}_mpo_data.json"
    first = read_records(source)
    out = tmp_path / "mpo.json"
    write_records(first.records, out, "mpo")
    second = read_records(out)
    assert second.records == first.records and not second.problems
    # Independent check of the file itself: the kept raw items, unchanged, plus "id" where
    # the position moved because earlier items were skipped.
    raw = json.loads(source.read_text(encoding="utf-8"))
    written = json.loads(out.read_text(encoding="utf-8"))
    kept = [int(r.id) for r in first.records]
    assert [{k: v for k, v in w.items() if k != "id"} for w in written] == [raw[i] for i in kept]
    assert [int(w.get("id", pos)) for pos, w in enumerate(written)] == kept
    for name in ("canonical", "trl"):
        path = tmp_path / f"{name}.jsonl"
        write_records(first.records, path, name)
        again = read_records(path)
        flat = [p for r in first.records for p in (r.dominant, r.target)] if name == "trl" else first.records
        assert again.records == flat and not again.problems


@pytest.mark.shared_data
@pytest.mark.parametrize("relative", ["mlc/pku_saferlhf_safety_test.jsonl", "multijail/MultiJail.csv", "xsafety",
                                      "rtplx/RTP_LX_JA.json", "detox_parallel"])
def test_canonical_roundtrip_real(shared_data: Path, tmp_path: Path, relative: str) -> None:
    first = read_records(shared_data / relative)
    out = tmp_path / "c.jsonl"
    assert write_records(first.records, out, "canonical") == len(first.records)
    second = read_records(out)
    assert second.format == "canonical" and second.records == first.records and not second.problems
    if relative.startswith("mlc"):
        write_records(first.records, tmp_path / "t.jsonl", "trl")
        assert read_records(tmp_path / "t.jsonl").records == first.records
