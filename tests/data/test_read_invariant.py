"""The reading invariant, over every data file in ../shared/data and over self-written
fixtures of each class of mess: the physical data rows of the input (counted here with
the plain csv / json / openpyxl modules) = records + skipped; every skip is counted by
reason and located (file and line/row); for parallel benchmarks the same id means the
same item in every language."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from fixture_builders import (
    write_csv,
    write_llamafactory,
    write_mpo_zh_dominant,
    write_rtplx,
    write_xsafety,
)
from polyalign.data.readers import ReadResult, read_records
from raw_counts import csv_data_rows, first_cells, jsonl_rows

# As tests/conftest.py's shared_data fixture (parametrisation needs the list at collection).
SHARED_DATA = Path(os.environ.get("POLYALIGN_SHARED_DATA",
                                  Path(__file__).resolve().parents[2].parent / "shared" / "data"))



def physical_rows(path: Path, fmt: str) -> int:
    """Data rows of ``path`` as a reader's unit: MultiJail gives one per (row, language),
    a multiway-parallel folder one per line index, XSafety one per row of each file."""
    if path.is_dir():
        if fmt == "xsafety":
            return sum(len(first_cells(f)) for f in path.rglob("*") if f.suffix in (".csv", ".xlsx"))
        if fmt == "parallel":
            return len(jsonl_rows(sorted(path.glob("*.jsonl"))[0]))
        return sum(physical_rows(f, fmt) for f in sorted(path.glob("*.json*")))
    if fmt == "xsafety":
        return len(first_cells(path))
    if fmt == "multijail":
        rows = csv_data_rows(path)
        languages = [h for h in rows[0] if h not in ("id", "tags", "source")]
        return (len(rows) - 1) * len(languages)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return len(json.loads(text))
    return len(jsonl_rows(path))


def check_invariant(result: ReadResult, expected_rows: int) -> None:
    skipped = sum(result.skipped.values())
    assert result.rows == expected_rows == len(result.records) + skipped, (result.rows, expected_rows)
    total = result.tally.total()
    assert total == {"read": expected_rows, "used": len(result.records), "skipped": skipped}
    for row in result.tally.per_language.values():
        assert row["read"] == row["used"] + row["skipped"]
    # Every skip has a reason and a place; each skipped row has at least one problem.
    assert all(p.file and p.line is not None and p.reason for p in result.problems)
    reasons = Counter(p.reason for p in result.problems)
    assert set(reasons) >= set(result.skipped) and all(reasons[r] >= n for r, n in result.skipped.items())


def check_parallel_ids(result: ReadResult, path: Path) -> None:
    """Same source id => the same row of the release in every language, checked against
    the raw files (XSafety: row <i> of each language's file; MultiJail: the row with that id)."""
    if result.format == "xsafety":
        root = path if path.is_dir() else path.parent.parent
        cells = {}
        for record in result.records:
            file = root / record.metadata["file"]
            if file not in cells:
                cells[file] = first_cells(file)
            index = int(record.source_id.rsplit("-", 1)[1])
            assert cells[file][index] == record.text and record.source_id.startswith(record.category)
    else:
        rows = csv_data_rows(path)
        header = rows[0]
        by_id = {row[header.index("id")]: dict(zip(header, row)) for row in rows[1:]}
        for record in result.records:
            assert by_id[record.source_id][record.language] == record.text


def _shared_inputs() -> list[str]:
    """Every data file below ../shared/data, and the folders read as one data set."""
    if not SHARED_DATA.is_dir():
        return []
    files = [str(f.relative_to(SHARED_DATA)) for f in sorted(SHARED_DATA.rglob("*"))
             if f.is_file() and f.suffix in (".json", ".jsonl", ".csv", ".xlsx")]
    return files + ["xsafety", "rtplx", "detox_parallel"]


@pytest.mark.shared_data
@pytest.mark.parametrize("relative", _shared_inputs() or [pytest.param("", marks=pytest.mark.skip("no shared data"))])
def test_every_shared_file(relative: str, shared_data: Path) -> None:
    path = shared_data / relative
    # Language checks only where the format needs detection (MPO target sides); the
    # invariant holds either way, and the check is slow on 17k XSafety rows.
    result = read_records(path, check_language=path.suffix == ".json" and "mpo" in relative)
    check_invariant(result, physical_rows(path, result.format))
    if result.format in ("xsafety", "multijail"):
        check_parallel_ids(result, path)


def test_self_written_fixtures_of_each_class(tmp_path: Path) -> None:
    write_xsafety(tmp_path / "xsafety")
    write_rtplx(tmp_path / "rtplx")
    write_llamafactory(tmp_path / "lf")
    write_mpo_zh_dominant(tmp_path / "mpo_zh.json")
    write_csv(tmp_path / "MultiJail.csv", [["id", "source", "tags", "en", "de"],
                                          ["1", "self", "['Weather']", "Nice day.", "Schöner Tag."],
                                          ["  ", " ", "", "", "  "],
                                          ["2", "self", "['Tea']", "Some tea?", "Etwas Tee?"]])
    write_csv(tmp_path / "plain.csv", [["question"], ["How are you?"], ["   "], ["Fine, thanks."]])
    cases = [(tmp_path / "xsafety", "xsafety"), (tmp_path / "rtplx", "rtplx"),
             (tmp_path / "lf" / "sharegpt.json", "llamafactory"), (tmp_path / "lf" / "alpaca.json", "llamafactory"),
             (tmp_path / "lf" / "trl_array.json", "trl"), (tmp_path / "mpo_zh.json", "mpo"),
             (tmp_path / "MultiJail.csv", "multijail")]
    for path, fmt in cases:
        result = read_records(path, check_language=fmt == "mpo")
        assert result.format == fmt
        expected = physical_rows(path, fmt) if fmt != "xsafety" else 21
        check_invariant(result, expected)
    # MultiJail / generic CSV: a row of empty cells is a located skip, not dropped silently.
    jail = read_records(tmp_path / "MultiJail.csv", check_language=False)
    assert dict(jail.skipped) == {"empty text": 2} and {p.line for p in jail.problems} == {3}
    plain = read_records(tmp_path / "plain.csv", "csv", column_map={"text": "question"}, language="en",
                         check_language=False)
    check_invariant(plain, 3)
    assert dict(plain.skipped) == {"empty text": 1} and plain.problems[0].line == 3
