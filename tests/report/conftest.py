"""Fixtures for the report tests (data in report_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from report_fixtures import write_runs


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """``(base, mpo)`` run folders; the MPO one also has reward_gap.json and retrieval.json."""
    return write_runs(tmp_path)
