"""Fixtures for the training tests: a tiny checkpoint and small self-written preference data."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyalign.data.writers import write_canonical
from preference_prompts import make_pairs


@pytest.fixture(scope="session")
def tiny_ckpt(request, tmp_path_factory) -> Path:
    """A tiny Llama checkpoint; ``@pytest.mark.parametrize("tiny_ckpt", ["llama", "gemma3"],
    indirect=True)`` runs a test on each architecture (Gemma-3: sliding-window + global layers,
    tied LM head)."""
    from polyalign.models import save_tiny_checkpoint

    arch = getattr(request, "param", "llama")
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / arch, arch)


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_canonical(make_pairs(8), path)
    return path
