"""Hostile and broken input through the real CLI (subprocesses): exit 2, one located line, no traceback.

Every case runs ``python -m polyalign ...`` and must exit with code 2, print no traceback and
print exactly one ``polyalign: error:`` line on stderr that names the file and, where the
problem has one, the line and the field. The cases run two at a time (the machine has two
cores) from one module fixture; each case is then its own test.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from faults_helpers import PY, env, recipe, write_pairs


@dataclass
class Case:
    name: str
    build: Callable[[Path, Path], list[str]]  # (case folder, tiny model) -> CLI args
    where: Callable[[Path], list[str]] = field(default=lambda d: [])  # substrings the error line must contain
    timeout: float = 120


def _w(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _canonical_row(i: int, **over) -> str:
    row = {"id": f"r{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}], "chosen": "Fine.",
           "rejected": "Go away.", "language": "en"}
    row.update(over)
    return json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False)


def _huge_line(d: Path) -> Path:
    # 50 MB on one line: a JSON string that never closes (a truncated dump of a huge record).
    path = d / "huge.jsonl"
    with open(path, "wb") as handle:
        handle.write(b'{"id": "x", "prompt": "')
        block = b"a" * (1 << 20)
        for _ in range(50):
            handle.write(block)
    return path


def _train_recipe(d: Path, model: Path, **over) -> Path:
    settings = {"model_name_or_path": str(model), "train_file": str(write_pairs(d / "ok.jsonl", 4)),
                "output_dir": str(d / "out"), "reference_cache_dir": str(d / "cache"), "max_steps": 1}
    settings.update(over)
    return recipe(d / "r.yaml", **settings)


def _results_dir(d: Path, results: str) -> Path:
    _w(d / "run" / "results.json", results)
    return d / "run"


def _convert(path: Path, d: Path, *extra: str) -> list[str]:
    return ["data", "convert", str(path), *extra, "--to", "trl", "-o", str(d / "o.jsonl")]


def _train(d: Path, m: Path, **over) -> list[str]:
    return ["train", "--config", str(_train_recipe(d, m, **over))]


def _eval(d: Path, model: Path, *extra: str, column_map: str = "text=prompt,language=lang",
          out: Path | None = None) -> list[str]:
    data = _w(d / "p.csv", "prompt,lang\nhi,en\n")
    return ["eval", "--model", str(model), "--benchmark", "custom", "--data", str(data), "--column-map", column_map,
            *extra, "--out", str(out or d / "ev")]


# Declared German, written in Chinese: --strict makes the contradiction an error.
_ZH = {"language": "de",
       "prompt": [{"role": "user", "content": "这是一个关于天气的很长的中文问题，今天会下雨吗？"}],
       "chosen": "今天不会下雨，天气晴朗，适合出门散步。",
       "rejected": "我不知道，你自己去看天气预报吧。"}

CASES = [
    # --- data ---
    Case("data_nonexistent_path", lambda d, m: ["data", "inspect", str(d / "nope.jsonl")],
         lambda d: [str(d / "nope.jsonl"), "no such file"]),
    Case("data_empty_file", lambda d, m: _convert(_w(d / "empty.jsonl", ""), d), lambda d: [str(d / "empty.jsonl")]),
    Case("data_invalid_json_line",
         lambda d, m: _convert(_w(d / "bad.jsonl", f"{_canonical_row(0)}\n{_canonical_row(1)}\n{{not json\n"), d),
         lambda d: [f"{d / 'bad.jsonl'}:3"]),
    Case("data_latin1_encoding",
         lambda d, m: _convert(_w(d / "latin.jsonl",
                                  (f"{_canonical_row(0)}\n{_canonical_row(1, chosen='Très bien.')}\n")
                                  .encode("latin-1")), d),
         lambda d: [f"{d / 'latin.jsonl'}:2", "undecodable"]),
    Case("data_50mb_single_line", lambda d, m: _convert(_huge_line(d), d, "--format", "canonical"),
         lambda d: [f"{d / 'huge.jsonl'}:1"]),
    Case("data_missing_column",
         lambda d, m: _convert(_w(d / "nochosen.jsonl", _canonical_row(0, chosen=None) + "\n"), d,
                               "--format", "canonical"),
         lambda d: [f"{d / 'nochosen.jsonl'}:1", "chosen"]),
    Case("data_column_map_to_absent_column",
         lambda d, m: ["data", "convert", str(_w(d / "g.csv", "goal,lang\nhi,en\n")), "--format", "csv",
                       "--column-map", "text=prompt", "--to", "canonical", "-o", str(d / "o.jsonl")],
         lambda d: [str(d / "g.csv"), "prompt"]),
    Case("data_binary_file",
         lambda d, m: ["data", "inspect", str(_w(d / "image.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 100))],
         lambda d: [str(d / "image.jsonl")]),
    Case("data_mismatched_language_strict",
         lambda d, m: _convert(_w(d / "lang.jsonl", _canonical_row(0, **_ZH) + "\n"), d, "--strict"),
         lambda d: [f"{d / 'lang.jsonl'}:1", "language"]),
    Case("data_unknown_format",
         lambda d, m: ["data", "inspect", str(_w(d / "a.jsonl", _canonical_row(0) + "\n")), "--format", "parquet"],
         lambda d: ["format"]),
    # --- train ---
    Case("train_invalid_yaml",
         lambda d, m: ["train", "--config", str(_w(d / "bad.yaml", "method: dpo\noutput_dir: [x\n"))],
         lambda d: [str(d / "bad.yaml"), "invalid YAML"]),
    Case("train_unknown_key",
         lambda d, m: ["train", "--config", str(_w(d / "k.yaml", "method: dpo\noutput_dir: o\nlearning_rat: 0.1\n"))],
         lambda d: [f"{d / 'k.yaml'}:3", "learning_rat"]),
    Case("train_recipe_not_a_mapping",
         lambda d, m: ["train", "--config", str(_w(d / "list.yaml", "- method\n- dpo\n"))],
         lambda d: [f"{d / 'list.yaml'}:1"]),
    Case("train_bad_value_type",
         lambda d, m: ["train", "--config", str(_w(d / "t.yaml", "output_dir: o\nmethod: dpo\nmax_steps: many\n"))],
         lambda d: [f"{d / 't.yaml'}:3", "max_steps"]),
    Case("train_missing_train_file", lambda d, m: _train(d, m, train_file=str(d / "x.jsonl")),
         lambda d: [str(d / "x.jsonl")]),
    Case("train_missing_model", lambda d, m: _train(d, m, model_name_or_path=str(d / "nomodel")),
         lambda d: [str(d / "nomodel")]),
    Case("train_data_missing_field",
         lambda d, m: _train(d, m, train_file=str(_w(d / "norej.jsonl",
                                                     f"{_canonical_row(0)}\n{_canonical_row(1, rejected=None)}\n"))),
         lambda d: [f"{d / 'norej.jsonl'}:2", "rejected"]),
    Case("train_output_dir_under_a_file", lambda d, m: _train(d, m, output_dir=str(_w(d / "afile", "x") / "out")),
         lambda d: [str(d / "afile"), "output_dir"]),
    Case("train_resume_missing_checkpoint",
         lambda d, m: _train(d, m, resume_from_checkpoint=str(d / "out" / "checkpoint-7")),
         lambda d: [str(d / "out" / "checkpoint-7"), "resume_from_checkpoint"]),
    # --- eval ---
    Case("eval_missing_model", lambda d, m: _eval(d, d / "nomodel"), lambda d: [str(d / "nomodel")]),
    Case("eval_column_map_absent", lambda d, m: _eval(d, m, column_map="text=question"),
         lambda d: [str(d / "p.csv"), "question"]),
    Case("eval_unknown_benchmark",
         lambda d, m: ["eval", "--model", str(m), "--benchmark", "no_such_bench", "--out", str(d / "ev")],
         lambda d: ["no_such_bench"]),
    Case("eval_bad_judge_option", lambda d, m: _eval(d, m, "--judge", "openai", "--judge-option", "colour=blue"),
         lambda d: ["judge", "colour"]),
    Case("eval_out_under_a_file", lambda d, m: _eval(d, m, "--judge", "refusal", out=_w(d / "afile", "x") / "ev"),
         lambda d: [str(d / "afile")]),
    # --- analyze ---
    Case("analyze_missing_data",
         lambda d, m: ["analyze", "reward-gap", "--model", str(m), "--data", str(d / "none.json"),
                       "-o", str(d / "rg.json")],
         lambda d: [str(d / "none.json")]),
    Case("analyze_bad_json_data",
         lambda d, m: ["analyze", "retrieval", "--model", str(m), "--data",
                       str(_w(d / "par.jsonl", '{"id": 1}\n{"id": 2, \n')), "-o", str(d / "r.json")],
         lambda d: [f"{d / 'par.jsonl'}"]),
    # --- report ---
    Case("report_missing_run", lambda d, m: ["report", str(d / "norun"), "-o", str(d / "rep")],
         lambda d: [str(d / "norun")]),
    Case("report_truncated_results",
         lambda d, m: ["report", str(_results_dir(d, '{"settings": {"benchmark": "x"}, "metr')), "-o", str(d / "rep")],
         lambda d: [str(d / "run" / "results.json")]),
    Case("report_results_not_an_object",
         lambda d, m: ["report", str(_results_dir(d, "[1, 2, 3]\n")), "-o", str(d / "rep")],
         lambda d: [str(d / "run" / "results.json")]),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess, float]]:
    from polyalign.models import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("hostile")
    model = save_tiny_checkpoint(root / "model", "llama")

    def run(case: Case) -> tuple[str, tuple[Path, subprocess.CompletedProcess, float]]:
        folder = root / case.name
        folder.mkdir()
        args = case.build(folder, model)
        start = time.monotonic()
        proc = subprocess.run([PY, "-m", "polyalign", *args], cwd=folder, capture_output=True, text=True, env=env(),
                              timeout=case.timeout)
        return case.name, (folder, proc, time.monotonic() - start)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, CASES))


def test_at_least_twenty_cases_across_all_commands():
    assert len(CASES) >= 20
    assert {c.name.split("_")[0] for c in CASES} == {"data", "train", "eval", "analyze", "report"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_exits_2_with_one_located_line(outcomes, case):
    folder, proc, seconds = outcomes[case.name]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    errors = [line for line in proc.stderr.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    line = errors[0]
    assert line.startswith("polyalign"), line
    for part in case.where(folder):
        assert part in line, (part, line)
    assert len(line) < 2000  # one readable line, not a dump of the input


def test_huge_line_fails_fast_and_writes_nothing(outcomes):
    folder, proc, seconds = outcomes["data_50mb_single_line"]
    assert seconds < 30, seconds
    assert not (folder / "o.jsonl").exists()
    assert not list(folder.glob(".o.jsonl*"))
