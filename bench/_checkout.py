"""Another commit's tree in a temporary directory, so a bench can run its server side by side.

The tree is a detached git worktree of this repository (its files exactly as committed),
run with this checkout's virtualenv, and removed afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["old_tree", "short_name"]

_ROOT = Path(__file__).resolve().parents[1]
_GIT_TIMEOUT_S = 60


def short_name(commit: str) -> str:
    """The commit's abbreviated hash, as `git log --oneline` shows it."""
    return subprocess.run(
        ["git", "rev-parse", "--short", commit], cwd=_ROOT, check=True, capture_output=True, text=True,
        timeout=_GIT_TIMEOUT_S,
    ).stdout.strip()


@contextlib.contextmanager
def old_tree(commit: str) -> Iterator[Path]:
    """The tree of `commit` in a temporary directory, for as long as the block runs."""
    parent = Path(tempfile.mkdtemp(prefix=f"bench-tree-{commit[:8]}-"))
    path = parent / "tree"
    try:
        subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=_ROOT, check=True,
                       capture_output=True, timeout=_GIT_TIMEOUT_S)
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=_ROOT, check=False,
                       capture_output=True, timeout=_GIT_TIMEOUT_S)
        shutil.rmtree(parent, ignore_errors=True)
