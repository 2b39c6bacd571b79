"""Fixtures for the training tests: a tiny checkpoint and small self-written preference data."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyalign.data.writers import write_canonical
from training_helpers import make_pairs


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    from polyalign.models import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_canonical(make_pairs(8), path)
    return path
