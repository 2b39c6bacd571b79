"""polyalign.provenance.git_state and the benchmark report's code line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from polyalign.provenance import git_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.run_all import code_line  # noqa: E402


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_git_state_reports_commit_and_dirty_tracked_files(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "untracked.txt").write_text("x\n")  # untracked files do not make it dirty
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.txt").write_text("two\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}


def test_git_state_outside_a_checkout(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


def test_benchmark_code_line():
    assert code_line({"commit": "abc", "dirty": False}) == "Code: commit `abc`, clean."
    assert "with uncommitted changes" in code_line({"commit": "abc", "dirty": True})
    assert "not recorded" in code_line(None) and "not recorded" in code_line({"commit": None, "dirty": None})
