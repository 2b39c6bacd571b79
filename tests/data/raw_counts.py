"""Independent counts of the physical data rows of released files, with the plain csv /
json / openpyxl modules (no polyalign code), for the reader tests' invariants."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def csv_data_rows(path: Path) -> list[list[str]]:
    """Every CSV row (a quoted multi-line cell is one row), trailing empty lines excluded."""
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
    finally:
        csv.field_size_limit(limit)
    while rows and not rows[-1]:
        rows.pop()
    return rows


def xlsx_data_rows(path: Path) -> list[list[str]]:
    """Rows of the first sheet, trailing empty rows excluded, cells as strings."""
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True)
    rows = [["" if c is None else str(c) for c in row] for row in book.worksheets[0].iter_rows(values_only=True)]
    book.close()
    while rows and not any(c.strip() for c in rows[-1]):
        rows.pop()
    return rows


def first_cells(path: Path) -> list[str]:
    """The first cell of each data row of an XSafety file ("" for an empty row)."""
    rows = xlsx_data_rows(path) if path.suffix == ".xlsx" else csv_data_rows(path)
    return [row[0] if row else "" for row in rows]


def jsonl_rows(path: Path) -> list[dict]:
    """Objects of the non-blank lines of a JSON Lines file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
