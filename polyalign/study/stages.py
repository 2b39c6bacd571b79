"""Resumable stages and the study's cost accounting (wall, CPU, peak memory, load).

A stage is done when ``<out>/stages/<name>.json`` exists with the same ``key`` (a hash of
the settings it depends on); it is written atomically after the stage's outputs, so a study
killed at any point reruns only the unfinished stage (and what follows). A stage whose key
changed (another recipe) is run again.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polyalign.io import atomic_write_json


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - platforms without it
        return None


class StageRunner:
    """Runs named stages once; records each stage's wall and CPU seconds in its marker."""

    def __init__(self, out_dir: str | Path, *, log: Callable[[str], None] | None = None) -> None:
        self.dir = Path(out_dir) / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def marker(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def done(self, name: str, key: str) -> dict[str, Any] | None:
        path = self.marker(name)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a damaged marker means: not done
        return record if record.get("key") == key else None

    def run(self, name: str, key: str, fn: Callable[[], Any]) -> Any:
        """``fn()``'s result, computed now or read from the stage's marker."""
        record = self.done(name, key)
        if record is not None:
            self.skipped.append(name)
            self.log(f"study: {name}: done before ({record['wall_s']:.0f} s then), skipped")
            return record["result"]
        self.log(f"study: {name}: running (load {load_average()})")
        wall, cpu = time.monotonic(), cpu_seconds()
        result = fn()
        record = {"name": name, "key": key, "wall_s": round(time.monotonic() - wall, 2),
                  "cpu_s": round(cpu_seconds() - cpu, 2), "peak_rss_mib": round(peak_rss_mib(), 1),
                  "load_after": load_average(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "result": result}
        atomic_write_json(self.marker(name), record)
        self.ran.append(name)
        self.log(f"study: {name}: done in {record['wall_s']:.0f} s wall, {record['cpu_s']:.0f} s CPU")
        return result

    def records(self) -> dict[str, dict[str, Any]]:
        out = {}
        for path in sorted(self.dir.glob("*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            out[record.get("name", path.stem)] = {k: record.get(k) for k in ("wall_s", "cpu_s", "peak_rss_mib",
                                                                                "load_after", "finished")}
        return out
