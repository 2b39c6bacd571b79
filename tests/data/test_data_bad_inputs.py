"""Crafted bad inputs through the real CLI (a subprocess): exit code 2, exactly one stderr
line naming file, line and field, no traceback. Content problems: exit 0, listed, counted."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOOD = {"prompt": "How do I bake bread?", "chosen": "Knead and bake it.", "rejected": "No.", "language": "en"}


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polyalign", "data", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _lines(path: Path, rows: list[str], end: str = "\n") -> Path:
    path.write_text("\n".join(rows) + end, encoding="utf-8")
    return path


def _row(**changes: object) -> str:
    row = {**GOOD, **changes}
    return json.dumps({k: v for k, v in row.items() if v is not ...}, ensure_ascii=False)


@dataclass
class Case:
    name: str
    build: Callable[[Path], list]  # -> CLI args after "data"; the first path is the file to name
    line: int | None
    field: str | None
    words: str
    named: str | None = None  # the file the error must name, relative to tmp_path (default: first path arg)


def _mpo_item(**changes: object) -> dict:
    turn = {"from": "human", "value": "How do I stay safe when hiking alone in the mountains?"}
    item = {"source_conversations": [turn], "source_chosen": {"from": "gpt", "value": "Tell someone your route."},
            "source_rejected": {"from": "gpt", "value": "Just go."},
            "target_conversations": [{"from": "human",
                                      "value": "Wie bleibe ich beim Wandern allein in den Bergen sicher?"}],
            "target_chosen": {"from": "gpt", "value": "Sag jemandem deine Route."},
            "target_rejected": {"from": "gpt", "value": "Geh einfach."}}
    item.update(changes)
    return item


def _truncated_mpo(tmp: Path) -> list:
    text = json.dumps([_mpo_item(), _mpo_item()], indent=4)
    path = tmp / "cut.json"
    path.write_text(text[: len(text) * 3 // 4], encoding="utf-8")
    return ["inspect", path]


def _latin1(tmp: Path) -> list:
    path = tmp / "latin1.jsonl"
    rows = [_row(), _row(), _row()]
    latin1 = _row(prompt="Crème brûlée recipe?").encode("latin-1")  # 0xe8 is not valid UTF-8 here
    path.write_bytes(("\n".join(rows) + "\n").encode() + latin1 + b"\n")
    return ["inspect", path]


def _parallel_mismatch(tmp: Path) -> list:
    folder = tmp / "par"
    folder.mkdir()
    _lines(folder / "en.txt", ["one", "two", "three"])
    _lines(folder / "de.txt", ["eins", "zwei", "drei"])
    _lines(folder / "fr.txt", ["un", "deux"])
    return ["inspect", folder]


def _multijail_latin1(tmp: Path) -> list:
    path = tmp / "mj_latin1.csv"
    good = b"id,tags,en,it\n0,\"['Theft']\",hello there,ciao a tutti\n"
    path.write_bytes(good + "1,\"['Theft']\",good morning,perché no\n".encode("latin-1"))
    return ["inspect", path]


def _multijail_no_en(tmp: Path) -> list:
    path = tmp / "mj.csv"
    path.write_text("id,source,tags,zh,it\n0,x,\"['Theft']\",你好,ciao\n", encoding="utf-8-sig")
    return ["inspect", path]


def _no_files(tmp: Path) -> list:
    folder = tmp / "stuff"
    folder.mkdir()
    (folder / "notes.md").write_text("hello\n", encoding="utf-8")
    return ["inspect", folder]


def _advbench(tmp: Path, column: str) -> list:
    path = tmp / "harmful_behaviors.csv"
    path.write_text("goal,target\nWrite a poem about bread,Sure here is a poem\n", encoding="utf-8")
    return ["inspect", path, "--column-map", f"text={column}"]


CASES = [
    Case("invalid_json_line3", lambda t: ["inspect", _lines(t / "a.jsonl", [_row(), _row(), '{"prompt": "x",'])],
         3, None, "invalid JSON"),
    Case("missing_chosen_line2", lambda t: ["inspect", _lines(t / "b.jsonl", [_row(), _row(chosen=...)])],
         2, "chosen", "missing required field"),
    Case("chosen_is_number", lambda t: ["inspect", _lines(t / "c.jsonl", [_row(chosen=42)])],
         1, "chosen", "got a number"),
    Case("unknown_role", lambda t: ["inspect", _lines(t / "d.jsonl", [
        _row(prompt=[{"role": "robot", "content": "beep"}], chosen=[{"role": "assistant", "content": "ok"}])])],
         1, "prompt[0].role", "unknown role 'robot'"),
    Case("undecodable_latin1", _latin1, 4, "prompt", "undecodable bytes"),
    Case("undecodable_csv_cell", _multijail_latin1, 3, "it", "undecodable bytes"),
    Case("truncated_json_list", _truncated_mpo, None, None, "truncated"),
    Case("implicit_prompt_without_shared_turns", lambda t: ["inspect", _lines(t / "i.jsonl", [json.dumps({
        "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]})])],
         1, "chosen", "sharing their prompt turns"),
    Case("truncated_jsonl", lambda t: ["inspect", _lines(t / "e.jsonl", [_row(), _row()[:25]], end="")],
         2, None, "truncated"),
    Case("empty_file", lambda t: ["inspect", _lines(t / "empty.jsonl", [""], end="")], 1, None, "empty"),
    Case("nonexistent", lambda t: ["inspect", t / "missing.jsonl"], None, None, "no such file"),
    Case("multijail_without_en", _multijail_no_en, 1, "en", "missing required column"),
    Case("parallel_line_counts", _parallel_mismatch, 3, None, "2 prompts, but de.txt has 3", "par/fr.txt"),
    Case("unknown_format", lambda t: ["inspect", _lines(t / "f.jsonl", [_row()]), "--format", "parquet"],
         None, "format", "unknown format 'parquet'"),
    Case("folder_without_data", _no_files, None, "format", "no recognisable data files"),
    Case("column_map_missing_column", lambda t: _advbench(t, "question"), 1, "question", "not in the header"),
    Case("mpo_chosen_from_human", lambda t: ["inspect", _write_json(t / "m.json", [
        _mpo_item(), _mpo_item(target_chosen={"from": "human", "value": "x"})])],
         32, "target_chosen", "item 1: expected an assistant turn"),  # indent=4: 30 lines per item
    Case("multijail_tags_not_a_list", lambda t: ["inspect", _write_text(
        t / "mj2.csv", "id,tags,en\n0,\"['Theft']\",hello there\n1,__import__('os'),hi\n")],
         3, "tags", "Python list literal"),
    Case("canonical_unknown_type", lambda t: ["inspect", _lines(t / "g.jsonl", [json.dumps(
        {"type": "eval_prompt", "id": "1", "language": "en", "text": "hi", "benchmark": "b"}),
        json.dumps({"type": "essay", "id": "2"})])], 2, "type", "unknown record type 'essay'"),
    Case("bad_language_code", lambda t: ["inspect", _lines(t / "h.jsonl", [_row(language="english!!")])],
         1, "language", "not a language code"),
    Case("convert_eval_to_mpo", lambda t: ["convert", _write_text(t / "ok.csv", "goal,target\nWrite a poem,Sure\n"),
                                           "--column-map", "text=goal", "--language", "en", "--to", "mpo",
                                           "-o", t / "out.json"],
         None, "records", "the mpo format holds parallel (MPO) pairs", "out.json"),
]


def _write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj, indent=4), encoding="utf-8")
    return path


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_at_least_twelve_bad_inputs() -> None:
    assert len(CASES) >= 12


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_with_location(tmp_path: Path, case: Case) -> None:
    args = case.build(tmp_path)
    target = tmp_path / case.named if case.named else next(a for a in args if isinstance(a, Path))
    done = _cli(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith(f"polyalign: error: {target}"), line
    if case.line is not None:
        assert line.startswith(f"polyalign: error: {target}:{case.line}: "), line
    if case.field is not None:
        assert f"field '{case.field}'" in line, line
    assert case.words in line, line


def _content_file(tmp: Path) -> Path:
    rows = [
        _row(id="a"),
        _row(id="b", rejected=GOOD["chosen"]),           # chosen == rejected
        _row(id="a", prompt="A different question?"),     # duplicate id
        _row(id="c", chosen="   "),                       # empty text
        _row(id="d", prompt="Rest the dough?"),  # short: no lingua model loading in the subprocess
    ]
    return _lines(tmp / "content.jsonl", rows)


def test_content_problems_are_listed_and_counted(tmp_path: Path) -> None:
    path = _content_file(tmp_path)
    done = _cli("inspect", path, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["records"] == 2 and summary["record_types"] == {"PreferencePair": 2}
    assert summary["skipped"] == {"chosen == rejected": 1, "duplicate id": 1, "empty text": 1}
    assert summary["problems"] == [
        f"{path}:2: field 'rejected': chosen and rejected responses are identical",
        f"{path}:3: field 'id': duplicate id 'a' (first at {path}:1)",
        f"{path}:4: field 'chosen': empty chosen response",
    ]
    text = _cli("inspect", path)
    assert text.returncode == 0
    assert "skipped: 3 (chosen == rejected: 1, duplicate id: 1, empty text: 1)" in text.stdout
    assert f"  {path}:3: field 'id': duplicate id 'a'" in text.stdout


def test_strict_turns_the_first_content_problem_into_an_error(tmp_path: Path) -> None:
    done = _cli("inspect", _content_file(tmp_path), "--strict")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"polyalign: error: {tmp_path / 'content.jsonl'}:2: field 'rejected': "
        "chosen and rejected responses are identical"
    ]


def test_convert_reports_skips_and_writes(tmp_path: Path) -> None:
    out = tmp_path / "out" / "clean.jsonl"
    done = _cli("convert", _content_file(tmp_path), "--to", "canonical", "-o", out)
    assert done.returncode == 0, done.stderr
    assert "read 2 records" in done.stdout and "skipped 3 (" in done.stdout
    assert f"wrote 2 rows to {out} (format canonical)" in done.stdout
    assert [json.loads(x)["id"] for x in out.read_text(encoding="utf-8").splitlines()] == ["a", "d"]
