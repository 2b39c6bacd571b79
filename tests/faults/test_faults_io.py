"""Unwritable output: a read-only file system, a full disk, a path under a regular file.

Every result writer goes through :mod:`polyalign.io`'s atomic writes (temp file in the same
folder, fsync, rename), so each result file is complete or absent and the command fails with
one ``polyalign: error:`` line naming the file (exit 2). Tests run as root here, where chmod
does not stop writes, so "read-only" is a real read-only tmpfs (``mount -o remount,ro``) and
"disk full" a 64 KiB tmpfs; both are skipped when mounting is not permitted. The
path-under-a-file cases run everywhere.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults_helpers import REPO, cli, recipe, write_pairs


def _load_report_fixtures():
    spec = importlib.util.spec_from_file_location("faults_report_fixtures",
                                                  REPO / "tests" / "report" / "report_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mount(folder: Path, *options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=64k", *options)), "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 64 KiB tmpfs (writable)."""
    folder = tmp_path / "small"
    _mount(folder)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def read_only(tmp_path) -> Iterator[Path]:
    """A read-only tmpfs holding one empty sub-folder ``sub`` (writes fail with EROFS, even for root)."""
    folder = tmp_path / "ro"
    _mount(folder)
    (folder / "sub").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.replace("\r", "\n").splitlines() if "polyalign: error:" in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _pairs_file(tmp_path: Path, n: int) -> Path:
    return write_pairs(tmp_path / "pairs.jsonl", n)


def test_data_convert_under_a_regular_file(tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me")
    proc = cli(["data", "convert", str(_pairs_file(tmp_path, 4)), "--to", "trl", "-o", str(blocker / "out.jsonl")],
               cwd=tmp_path)
    line = _error_line(proc)
    assert str(blocker / "out.jsonl") in line and "cannot write" in line
    assert blocker.read_text() == "keep me"


def test_report_under_a_regular_file(tmp_path):
    base, _ = _load_report_fixtures().write_runs(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    line = _error_line(cli(["report", str(base), "-o", str(blocker / "rep")], cwd=tmp_path))
    assert str(blocker) in line


def test_read_only_output_for_data_report_eval_train(tmp_path, read_only):
    target = read_only / "sub"
    line = _error_line(cli(["data", "convert", str(_pairs_file(tmp_path, 4)), "--to", "trl", "-o",
                            str(target / "out.jsonl")], cwd=tmp_path))
    assert str(target / "out.jsonl") in line and "Read-only file system" in line

    base, _ = _load_report_fixtures().write_runs(tmp_path)
    line = _error_line(cli(["report", str(base), "-o", str(target / "rep")], cwd=tmp_path))
    assert str(target / "rep") in line and "Read-only file system" in line

    from polyalign.models import save_tiny_checkpoint

    model = save_tiny_checkpoint(tmp_path / "model", "llama")
    data = tmp_path / "p.csv"
    data.write_text("prompt,lang\nhello,en\n")
    line = _error_line(cli(["eval", "--model", str(model), "--benchmark", "custom", "--data", str(data), "--column-map",
                            "text=prompt,language=lang", "--judge", "refusal", "--max-new-tokens", "2",
                            "--no-progress", "--out", str(target / "ev")], cwd=tmp_path))
    assert str(target / "ev") in line and "Read-only file system" in line

    config = recipe(tmp_path / "r.yaml", model_name_or_path=str(model), train_file=str(_pairs_file(tmp_path, 4)),
                    output_dir=str(target / "run"), reference_cache_dir=str(tmp_path / "cache"))
    line = _error_line(cli(["train", "--config", str(config)], cwd=tmp_path))
    assert str(target / "run") in line and "output_dir" in line and "Read-only file system" in line
    assert _files(read_only) == []


def test_disk_full_leaves_no_partial_files(tmp_path, small_disk):
    # ~200 KiB of converted output does not fit in 64 KiB: nothing may be left behind.
    big = _pairs_file(tmp_path, 600)
    line = _error_line(cli(["data", "convert", str(big), "--to", "trl", "-o", str(small_disk / "out.jsonl")],
                           cwd=tmp_path))
    assert str(small_disk / "out.jsonl") in line and "No space left on device" in line
    assert _files(small_disk) == []

    # A report: its PNG figures and pages do not all fit; whatever was written is complete.
    base, mpo = _load_report_fixtures().write_runs(tmp_path)
    proc = cli(["report", str(base), str(mpo), "-o", str(small_disk / "rep")], cwd=tmp_path)
    line = _error_line(proc)
    assert "No space left on device" in line
    for file in _files(small_disk):
        assert not file.name.startswith("."), file  # no temp file left behind
        data = file.read_bytes()
        if file.suffix == ".png":
            assert data.endswith(b"IEND\xaeB`\x82"), file
        elif file.suffix == ".html":
            assert data.rstrip().endswith(b"</html>"), file
    assert not (small_disk / "rep" / "report.html").exists()  # written last: the run did not finish


def test_full_reference_cache_disk_is_one_error_line(tmp_path, small_disk):
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # unbuffered: fill the 64 KiB file system to the last block
    try:
        while os.write(fd, b"\0" * 512):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    from polyalign.models import save_tiny_checkpoint

    model = save_tiny_checkpoint(tmp_path / "model", "llama")
    config = recipe(tmp_path / "r.yaml", model_name_or_path=str(model), train_file=str(_pairs_file(tmp_path, 4)),
                    output_dir=str(tmp_path / "run"), reference_cache_dir=str(small_disk / "cache"))
    line = _error_line(cli(["train", "--config", str(config)], cwd=tmp_path))
    assert str(small_disk / "cache") in line and "reference_cache_dir" in line and "No space left" in line
    assert [p.name for p in _files(small_disk)] == ["filler"]


def test_result_writers_are_atomic():
    """No file in polyalign/ writes results directly: only polyalign/io.py opens files for writing,
    plus the append-only stores that recover torn lines by design (listed)."""
    import re

    package = REPO / "polyalign"
    append_only = {"polyalign/store.py", "polyalign/data/build/card.py",  # card.py: runs.jsonl
                   # the models fetch's lock file, and the GGUF chunks joined into a staging file renamed when whole
                   "polyalign/real_models/fetch.py"}
    writes = re.compile(r"""open\([^)]*["'][wax][b+t]*["']|\.write_text\(|\.write_bytes\(|\.savefig\(\s*[^b]""")
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = str(path.relative_to(REPO))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if writes.search(line) and rel != "polyalign/io.py":
                found.append(f"{rel}:{number}")
    assert {f.split(":")[0] for f in found} <= append_only, found
    assert any(f.startswith("polyalign/store.py") for f in found)  # the scan sees open(..., "a+b")
