"""Utility task descriptions: loading JSONL/CSV with column maps, YAML specs, and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyalign.errors import UserError
from polyalign.evaluation.utility.tasks import (
    EMItem,
    MCItem,
    UtilityTask,
    list_tasks,
    load_items,
    register_task,
    resolve_task,
)

FIXTURES = Path(__file__).parent / "fixtures" / "utility"
MC = FIXTURES / "mc_multilingual.jsonl"


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_multiple_choice_fixture_loads_every_row():
    task = resolve_task(MC)
    assert task.kind == "multiple_choice"
    items = load_items(task)
    raw = [json.loads(line) for line in MC.read_text(encoding="utf-8").splitlines()]
    assert len(items) == len(raw) == 30
    assert all(isinstance(i, MCItem) for i in items)
    assert [i.id for i in items] == [r["id"] for r in raw]
    assert [i.answer for i in items] == [r["answer"] for r in raw]
    counts = {}
    for item in items:
        counts[item.language] = counts.get(item.language, 0) + 1
    assert counts == {"en": 6, "zh": 6, "sw": 6, "bn": 6, "ar": 6}
    assert items[6].choices == ("上海", "北京", "广州", "深圳") and items[10].choices == ("5", "六", "七", "8")


def test_language_filter_keeps_only_those_languages():
    items = load_items(resolve_task(MC), languages=["SW", "bn"])
    assert {i.language for i in items} == {"sw", "bn"} and len(items) == 12


def test_csv_with_choice_columns_letter_answers_and_language_aliases():
    task = resolve_task(FIXTURES / "mc_columns.csv", choices=("A", "B", "C"), answer="gold",
                        language_column="lang", question="q")
    items = load_items(task)
    assert task.kind == "multiple_choice"
    assert [(i.id, i.language, i.answer) for i in items] == [("c1", "en", 1), ("c2", "zh", 0), ("c3", "sw", 2)]
    assert items[2].choices == ("magharibi", "kaskazini", "mashariki")


def test_csv_list_column_as_json(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('question,choices,answer,language\n"1+1?","[""2"", ""3""]",0,en\n', encoding="utf-8")
    items = load_items(resolve_task(path))
    assert items[0].choices == ("2", "3") and items[0].answer == 0


def test_exact_match_file_is_detected():
    task = resolve_task(FIXTURES / "em_multilingual.jsonl")
    items = load_items(task)
    assert task.kind == "exact_match" and task.use_chat_template
    assert all(isinstance(i, EMItem) for i in items) and len(items) == 10
    assert items[7].answer == "১০"


def test_yaml_spec_resolves_relative_path_and_registry(tmp_path):
    data = _write(tmp_path / "d.jsonl", [{"q": "x?", "opts": ["a", "b"], "y": "B"}])
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: tiny\nkind: multiple_choice\npath: d.jsonl\nquestion: q\nchoices: opts\nanswer: y\n"
                    "language: sw\nanswer_format: letter\ntemplate: \"Q: {question}\\nA:\"\n", encoding="utf-8")
    task = resolve_task(spec)
    assert Path(task.path) == data.resolve() and task.template == "Q: {question}\nA:"
    (item,) = load_items(task)
    assert item.answer == 1 and item.language == "sw" and item.id == "1"
    register_task(task)
    assert resolve_task("tiny") is task and "tiny" in list_tasks()


@pytest.mark.parametrize(
    ("rows", "options", "line", "field", "message"),
    [
        ([{"question": "q", "choices": ["a", "b"], "answer": 0}], {}, 1, "language", "no language"),
        ([{"question": "q", "choices": ["a", "b"], "answer": 2, "language": "en"}], {}, 1, "answer", "out of range"),
        ([{"question": "q", "choices": ["a", "b"], "answer": "Z", "language": "en"}], {}, 1, "answer", "out of range"),
        ([{"question": "q", "choices": ["a", "b"], "answer": "B", "language": "en"}], {"answer_format": "index"}, 1,
         "answer", "not a index"),
        ([{"question": "q", "choices": ["a", "b"], "answer": 0, "language": "en"},
          {"question": "", "choices": ["a", "b"], "answer": 0, "language": "en"}], {}, 2, "question", "empty value"),
        ([{"question": "q", "choices": ["a"], "answer": 0, "language": "en"}], {}, 1, "choices", "two choices"),
        ([{"question": "q", "choices": "ab", "answer": 0, "language": "en"}], {}, 1, "choices", "JSON list"),
        ([{"id": "a", "question": "q", "choices": ["a", "b"], "answer": 0, "language": "en"},
          {"id": "a", "question": "q", "choices": ["a", "b"], "answer": 0, "language": "en"}], {}, 2, "id",
         "duplicate id"),
        ([{"question": "q", "choices": ["a", "b"], "language": "en"}], {}, 1, "answer", "missing column"),
        ([{"question": "q", "choices": ["a", "b"], "answer": 0, "language": "12"}], {}, 1, "language",
         "not a language"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, rows, options, line, field, message):
    path = _write(tmp_path / "bad.jsonl", rows)
    task = UtilityTask(name="bad", kind="multiple_choice", path=str(path), **options)
    with pytest.raises(UserError) as err:
        load_items(task)
    assert err.value.line == line and err.value.field == field and message in err.value.message
    assert err.value.file == str(path)


def test_bad_task_descriptions(tmp_path):
    with pytest.raises(UserError, match="unknown task kind"):
        UtilityTask(name="x", kind="essay", path="x.jsonl")
    with pytest.raises(UserError, match="must contain"):
        UtilityTask(name="x", kind="exact_match", path="x.jsonl", template="no placeholder")
    spec = tmp_path / "s.yaml"
    spec.write_text("kind: exact_match\npath: x.jsonl\ncolumnz: 1\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        resolve_task(spec)
    assert err.value.field == "columnz"
    with pytest.raises(UserError, match="no such file"):
        resolve_task(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="bad task option"):
        resolve_task(MC, no_such_option=1)
