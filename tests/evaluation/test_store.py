"""The resumable JSONL store: append, skip, torn-line recovery, settings mismatch, locking."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polyalign.errors import UserError
from polyalign.store import JsonlStore


def _open(path, fingerprint="fp1", settings=None, run_id=None):
    return JsonlStore(path, kind="generations", fingerprint=fingerprint, settings=settings or {"t": 0.0}, run_id=run_id)


def _records(n, start=0):
    return [{"id": f"item-{i}", "sample": 0, "text": f"answer {i} " + "x" * 50} for i in range(start, start + n)]


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_append_reopen_and_skip(tmp_path):
    path = tmp_path / "g.jsonl"
    with _open(path, run_id="run-a") as store:
        assert store.append(_records(3)) == 3
        assert store.append(_records(2, start=2)) == 1  # item-2 already there: skipped
        assert store.duplicates == 1
    lines = _lines(path)
    assert lines[0]["_store"] == "generations" and lines[0]["fingerprint"] == "fp1"
    assert [r["id"] for r in lines[1:]] == ["item-0", "item-1", "item-2", "item-3"]
    assert {r["run"] for r in lines[1:]} == {"run-a"}
    with _open(path, run_id="run-b") as store:
        assert store.done_keys() == {(f"item-{i}", 0) for i in range(4)}
        assert store.get(("item-1", 0))["text"].startswith("answer 1")
        store.append(_records(1, start=4))
        assert store.recovered_torn_lines == 0
    runs = [r["run"] for r in _lines(path)[1:]]
    assert runs == ["run-a"] * 4 + ["run-b"]


@pytest.mark.parametrize(
    "tail",
    [
        b'{"id": "item-9", "sam',  # cut mid-object
        b'{"id": "item-9", "sample": 0, "text": "t"}',  # whole object but no newline yet
        b'{"id": "item-9", "sample": 0, "te\n',  # garbage that happens to end with a newline
    ],
)
def test_torn_last_line_is_truncated(tmp_path, tail, capsys):
    path = tmp_path / "g.jsonl"
    with _open(path) as store:
        store.append(_records(3))
    clean_size = path.stat().st_size
    with open(path, "ab") as handle:
        handle.write(tail)
    with _open(path) as store:
        assert store.recovered_torn_lines == 1
        assert len(store) == 3 and ("item-9", 0) not in store
        assert path.stat().st_size == clean_size
        store.append(_records(1, start=9))
    assert "torn" in capsys.readouterr().err
    lines = _lines(path)  # every line parses again
    assert [r["id"] for r in lines[1:]] == ["item-0", "item-1", "item-2", "item-9"]


def test_torn_header_and_empty_file(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_bytes(b'{"_store": "genera')
    with _open(path) as store:
        assert len(store) == 0
        store.append(_records(1))
    assert _lines(path)[0]["fingerprint"] == "fp1"
    empty = tmp_path / "e.jsonl"
    empty.write_bytes(b"")
    with _open(empty) as store:
        assert len(store) == 0


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "g.jsonl"
    with _open(path) as store:
        store.append(_records(3))
    lines = path.read_bytes().split(b"\n")
    lines[2] = b"{not json"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(UserError) as err:
        _open(path)
    assert err.value.line == 3 and err.value.file == str(path)


def test_settings_mismatch_is_refused(tmp_path):
    path = tmp_path / "g.jsonl"
    with _open(path, fingerprint="fp1", settings={"generation": {"temperature": 0.0, "max_new_tokens": 8}}) as store:
        store.append(_records(1))
    with pytest.raises(UserError) as err:
        _open(path, fingerprint="fp2", settings={"generation": {"temperature": 0.9, "max_new_tokens": 8}})
    message = str(err.value)
    assert str(path) in message and "generation.temperature" in message and "0.9" in message
    assert len(_lines(path)) == 2  # untouched


def test_other_kind_is_refused(tmp_path):
    path = tmp_path / "g.jsonl"
    with _open(path) as store:
        store.append(_records(1))
    with pytest.raises(UserError, match="not a polyalign judgments store"):
        JsonlStore(path, kind="judgments", fingerprint="fp1")


def test_one_writer_at_a_time(tmp_path):
    path = tmp_path / "g.jsonl"
    with _open(path):
        with pytest.raises(UserError, match="in use"):
            _open(path)
    with _open(path):  # released on close
        pass


WRITER = r"""
import sys
from polyalign.store import JsonlStore
store = JsonlStore(sys.argv[1], kind="generations", fingerprint="fp1", settings={"t": 0.0})
i = 0
while True:
    store.append([{"id": f"item-{i + k}", "sample": 0, "text": "y" * 20000} for k in range(5)])
    i += 5
"""


def test_sigkill_while_writing_never_breaks_the_store(tmp_path):
    # A real process appending big records as fast as it can is killed at arbitrary moments.
    path = tmp_path / "g.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env)
        deadline = time.time() + 30
        while time.time() < deadline and (not path.exists() or path.stat().st_size < 400_000 * (round_ + 1)):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # The killed writer's lock is gone; the store reopens, whatever the cut.
        with _open(path) as store:
            n = len(store)
            assert store.done_keys() == {(f"item-{i}", 0) for i in range(n)}  # no gaps, no duplicates
        assert len(_lines(path)) == n + 1
    assert n >= 20
