"""The repository stands alone: no tracked file points at a path outside it.

A docstring or note that names a machine path (a research checkout, a home directory) means
nothing to anyone who clones the repository, so every text file git knows of is scanned.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Built from pieces so that this file does not contain what it looks for.
_FORBIDDEN = re.compile(
    "|".join(
        [
            re.escape("/" + "work" + "/"),  # a machine path of the development host
            re.escape("shared" + "/reference"),  # research notes kept outside the repository
            re.escape(".." + "/shared"),  # a relative path that climbs out of the repository
            # The research notes by name (a file name and a section): the project cites its own docs/.
            r"(?<![\w-])(?:twilio|vapi|actors|anchors|performance)" + r"\.md\b",
            r"(?<![\w.])/" + "home" + r"/[A-Za-z0-9._-]+",  # home directories
            r"(?<![\w.])/" + "Users" + r"/[A-Za-z0-9._-]+",
            r"(?<![\w.])/" + "root" + "/",
            r"(?<![\w/.])~" + "/",
            r"\b[A-Za-z]:\\" + "Users" + r"\\",
        ]
    )
)

# Known binary formats are skipped by name; anything else with a NUL byte is skipped as binary.
_BINARY_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".ico", ".wav", ".mp3", ".db", ".gz", ".zip", ".pdf"})


def _tracked_files() -> list[str]:
    result = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [name for name in result.stdout.decode("utf-8").split("\0") if name]


def _text_lines(path: Path) -> list[str] | None:
    """The file's lines, or None for a binary or missing file."""
    if path.suffix.lower() in _BINARY_SUFFIXES or not path.is_file():
        return None
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace").splitlines()


def find_outside_paths(root: Path, names: list[str]) -> list[str]:
    """`file:line: text` for every line of the named files that refers outside the repository."""
    offences = []
    for name in names:
        lines = _text_lines(root / name)
        if lines is None:
            continue
        for number, line in enumerate(lines, start=1):
            if _FORBIDDEN.search(line):
                offences.append(f"{name}:{number}: {line.strip()[:160]}")
    return offences


def test_git_lists_the_tracked_files():
    names = _tracked_files()
    assert "README.md" in names and "protocols/twilio.py" in names


def test_no_tracked_file_refers_outside_the_repository():
    offences = find_outside_paths(ROOT, _tracked_files())
    assert not offences, "tracked files refer to paths outside the repository:\n" + "\n".join(offences)


@pytest.mark.parametrize(
    "line",
    [
        "Reference: " + "/" + "work" + "/shared" + "/reference/twilio" + ".md §4.",
        "See " + "shared" + "/reference/vapi" + ".md",
        "notes in " + ".." + "/shared/twilio" + ".md",
        "cd " + "/home" + "/alice/project",
        "open " + "/Users" + "/bob/notes.txt",
        "cp x " + "/root" + "/notes",
        "cat " + "~" + "/notes.md",
        "C:" + "\\Users" + "\\carol\\notes",
    ],
)
def test_outside_paths_are_reported_with_file_and_line(tmp_path, line):
    (tmp_path / "module.py").write_text('"""Docstring.\n\n' + line + '\n"""\n')
    assert find_outside_paths(tmp_path, ["module.py"]) == [f"module.py:3: {line}"]


@pytest.mark.parametrize(
    "line",
    [
        "Protocol facts: docs/twilio-media-streams.md.",
        "wss://bridge.example.com/media/CA0123",
        "https://www.twilio.com/docs/voice/media-streams/websocket-messages",
        "approximately ~200 ms, ratio 1/2",
        "https://example.com" + "/home" + "/page and https://example.com/~user/",
    ],
)
def test_ordinary_lines_pass(tmp_path, line):
    (tmp_path / "module.py").write_text(line + "\n")
    assert find_outside_paths(tmp_path, ["module.py"]) == []


def test_binary_files_are_skipped(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n" + ("/" + "work" + "/").encode())
    (tmp_path / "blob.bin").write_bytes(b"\0\0" + ("/" + "work" + "/").encode())
    assert find_outside_paths(tmp_path, ["image.png", "blob.bin", "missing.txt"]) == []
