"""The code's git checkout: whether a folder is in one, and its commit (lineage tags)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gpt.layout import PROJECT_ROOT


def in_git(path: Path) -> bool:
    """Whether ``path`` is inside a git work tree."""
    return subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=path,
                          capture_output=True).returncode == 0


def git_state(path: Path = PROJECT_ROOT) -> tuple[str, str]:
    """The code's git commit and whether tracked files have uncommitted changes: ``(sha,
    "true"|"false")``, or ``("unknown", "unknown")`` outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                             text=True, check=True).stdout.strip()
        # dvc.lock and params.yaml are recorded as data_version and the step keys: a run that
        # updates them does not make the *code* dirty.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!dvc.lock", ":!params.yaml"],
                               cwd=path, capture_output=True, text=True).stdout.strip()
        return sha, "true" if dirty else "false"
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown", "unknown"
