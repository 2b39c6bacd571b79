"""Fixtures of the fault tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh polyalign cache (content hashes of model files) for one test."""
    monkeypatch.setenv("POLYALIGN_CACHE_DIR", str(tmp_path / "cache"))
