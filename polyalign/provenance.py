"""Which code produced a results file: the git commit of a checkout and whether it was dirty."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

# The repository root when running from a checkout (this file is polyalign/provenance.py).
REPO_ROOT = Path(__file__).resolve().parents[1]


def git_state(repo: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": HEAD or None, "dirty": bool or None}`` of the checkout at ``repo``
    (default: the one holding this package).

    ``dirty`` is true when tracked files differ from HEAD (untracked files do not count): the
    numbers then come from code that no commit holds. Both are ``None`` outside a git checkout
    (an installed wheel) or without git.
    """
    where = str(repo or REPO_ROOT)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}
