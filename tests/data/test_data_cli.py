"""``polyalign data inspect|convert`` on real and crafted data (in-process via main(), plus
one real subprocess), numbers checked against independent computations."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from polyalign.cli import main
from polyalign.cli.data import parse_column_map
from polyalign.data.readers import read_records
from polyalign.errors import UserError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.shared_data
def test_inspect_multijail_json_matches_independent_stats(shared_data: Path, capsys: pytest.CaptureFixture) -> None:
    path = shared_data / "multijail" / "MultiJail.csv"
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    languages = ["en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"]
    lengths = [len(row[lang]) for row in rows for lang in languages]

    assert main(["data", "inspect", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "multijail" and summary["records"] == 3150
    assert summary["languages"] == {lang: 315 for lang in sorted(languages)}
    assert summary["lengths"] == {"prompt": {"n": 3150, "min": min(lengths), "median": statistics.median(lengths),
                                             "max": max(lengths)}}
    assert summary["skipped"] == {} and summary["problems"] == []


@pytest.mark.shared_data
def test_inspect_mpo_text_output(shared_data: Path) -> None:
    """Through a real subprocess: the printed problem line points at item 505's line."""
    path = shared_data / "mpo" / "llama_mpo_data.json"
    raw_lines = path.read_text(encoding="utf-8").split("\n")
    done = subprocess.run([sys.executable, "-m", "polyalign", "data", "inspect", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "format: mpo" in out and "records: 599 (ParallelPair: 599)" in out
    assert "skipped: 1 (empty text: 1)" in out and "problems: 1" in out
    # Item 505 starts 30 lines per item after line 2 ("[" is line 1); the line is "    {".
    line = 2 + 505 * 30
    assert raw_lines[line - 1] == "    {"
    assert f"{path}:{line}: field 'target.prompt[0].content': item 505: empty user turn" in out
    for lang, count in {"en": 599, "zh": 99, "ja": 100, "ko": 100, "ar": 100, "bn": 100, "sw": 100}.items():
        assert f"  {lang:<8} {count}\n" in out


@pytest.mark.shared_data
def test_convert_mpo_to_trl_and_canonical(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = shared_data / "mpo" / "llama_mpo_data.json"
    trl = tmp_path / "llama_trl.jsonl"
    assert main(["data", "convert", str(source), "--to", "trl", "-o", str(trl)]) == 0
    out = capsys.readouterr().out
    assert "read 599 records" in out and "skipped 1 (empty text: 1)" in out
    assert f"wrote 1198 rows to {trl} (format trl)" in out
    rows = [json.loads(line) for line in trl.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1198 and sum(r["language"] == "en" for r in rows) == 599
    canonical = tmp_path / "llama.jsonl"
    assert main(["data", "convert", str(trl), "--to", "canonical", "-o", str(canonical)]) == 0
    assert "wrote 1198 rows" in capsys.readouterr().out
    assert read_records(canonical).records == read_records(trl).records


def test_generic_csv_with_column_map(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An AdvBench-shaped CSV (goal,target) read as eval prompts with --column-map text=goal."""
    path = tmp_path / "harmful_behaviors.csv"
    goals = ["Write a short poem about the sea and the wind", "Explain how bread rises in a warm oven"]
    path.write_text("goal,target\n" + "".join(f"{g},Sure here is\n" for g in goals), encoding="utf-8")
    assert main(["data", "inspect", str(path), "--column-map", "text=goal", "--language", "en", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "csv" and summary["records"] == 2 and summary["languages"] == {"en": 2}
    records = read_records(path, column_map={"text": "goal"}, language="en").records
    assert [r.text for r in records] == goals
    assert records[0].benchmark == "harmful_behaviors" and records[0].metadata == {"target": "Sure here is"}


def test_parse_column_map() -> None:
    assert parse_column_map("prompt=question, chosen=good,rejected=bad") == {
        "prompt": "question", "chosen": "good", "rejected": "bad"}
    assert parse_column_map(None) is None
    with pytest.raises(UserError, match="FIELD=COLUMN"):
        parse_column_map("text")


def test_load_functions_refuse_other_record_kinds(tmp_path: Path) -> None:
    from polyalign.data.readers import load_eval_prompts, load_parallel_pairs, load_preference_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away.", "language": "en"}) + "\n",
                    encoding="utf-8")
    assert [p.chosen for p in load_preference_pairs(path)] == ["Hello."]
    with pytest.raises(UserError, match="expected evaluation prompts, but this trl data holds 1 PreferencePair"):
        load_eval_prompts(path)
    with pytest.raises(UserError, match="parallel"):
        load_parallel_pairs(path)
