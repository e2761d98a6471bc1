"""`.env` files (run.py's load_env), `.env.example` against settings.py, and the bin/ venv bootstrap."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from run import load_env
from settings import ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / ".env.example"
_ASSIGNMENT = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")


def variables_settings_reads() -> set[str]:
    """Every NAME in settings.py's `env.get("NAME" ...)` and `r.<kind>("NAME" ...)` calls."""
    names = set()
    for node in ast.walk(ast.parse((ROOT / "settings.py").read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and (node.func.value.id == "r" or (node.func.value.id == "env" and node.func.attr == "get"))
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def example_assignments() -> dict[str, str]:
    """NAME -> default for each `NAME=default` line of .env.example, commented out or not."""
    found: dict[str, str] = {}
    for line in EXAMPLE.read_text().splitlines():
        match = _ASSIGNMENT.match(line)
        if match:
            assert match.group(1) not in found, f"{match.group(1)} is listed twice"
            found[match.group(1)] = match.group(2)
    return found


def test_the_example_lists_exactly_the_variables_settings_reads():
    read = variables_settings_reads()
    assert len(read) > 40  # the parse found the calls
    assert set(example_assignments()) == read


def test_each_variable_of_the_example_has_a_comment_line_above_it():
    lines = EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if _ASSIGNMENT.match(line):
            above = lines[number - 1]
            assert above.startswith("# ") and not _ASSIGNMENT.match(above), line


def test_the_example_defaults_are_the_real_defaults(tmp_path):
    # Uncomment every line: the file then sets each variable to its documented default.
    uncommented = tmp_path / ".env"
    uncommented.write_text(re.sub(r"(?m)^#([A-Z][A-Z0-9_]*=)", r"\1", EXAMPLE.read_text()))
    values = {name: value or "" for name, value in dotenv_values(uncommented).items()}
    assert set(values) == set(example_assignments())
    from_example = Settings.from_env({**values, "TWILIO_AUTH_TOKEN": "t"})
    from_nothing = Settings.from_env({"TWILIO_AUTH_TOKEN": "t"})
    assert dataclasses.asdict(from_example) == dataclasses.asdict(from_nothing)


def test_the_env_file_is_ignored_by_git():
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


# --- load_env ---


def test_without_a_file_the_environment_is_all(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_env({"PORT": "1"}) == ({"PORT": "1"}, None)


def test_the_file_in_the_current_directory_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text('PORT=4000\nexport ADMIN_TOKEN="a b"\n# a comment\n\nLOG_LEVEL=DEBUG\n')
    env, path = load_env({"PORT": "5000", "HOME": "/x"})
    assert path == Path(".env")
    assert env == {"PORT": "5000", "ADMIN_TOKEN": "a b", "LOG_LEVEL": "DEBUG", "HOME": "/x"}
    settings = Settings.from_env(env)
    assert settings.port == 5000 and settings.admin.token == "a b" and settings.log_level == "DEBUG"


def test_an_empty_value_in_the_environment_still_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("ADMIN_TOKEN=from-file\n")
    env, _ = load_env({"ADMIN_TOKEN": ""})
    assert Settings.from_env(env).admin.token is None


def test_dotenv_path_names_another_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("PORT=4000\n")
    named = tmp_path / "other.env"
    named.write_text("PORT=4001\n")
    env, path = load_env({"DOTENV_PATH": str(named)})
    assert env["PORT"] == "4001" and path == named


@pytest.mark.parametrize("case", ["missing", "directory", "bad line", "not utf-8"])
def test_an_unusable_env_file_is_a_config_error_naming_dotenv_path(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "settings.env"
    if case == "directory":
        target.mkdir()
    elif case == "bad line":
        target.write_text("ADMIN_TOKEN=secret-value\n=no name\n")
    elif case == "not utf-8":
        target.write_bytes(b"ADMIN_TOKEN=\xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_env({"DOTENV_PATH": str(target)})
    assert info.value.name == "DOTENV_PATH"
    assert "secret-value" not in str(info.value) and "\n" not in str(info.value)


def test_a_default_env_that_is_a_directory_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").mkdir()
    with pytest.raises(ConfigError) as info:
        load_env({})
    assert info.value.name == "DOTENV_PATH"


# --- bin/serve, bin/test, bin/lint: the Python check and the venv bootstrap ---


def scripts_copy(tmp_path: Path) -> Path:
    """The bin/ scripts in a repository of stubs: run.py and pytest only say they ran."""
    root = tmp_path / "repo"
    (root / "bin").mkdir(parents=True)
    for name in ("_venv.sh", "serve", "test", "lint"):
        shutil.copy2(ROOT / "bin" / name, root / "bin" / name)
    (root / "requirements.txt").write_text("# nothing to install\n")
    (root / "requirements-dev.txt").write_text("# nothing to install\n")
    (root / "run.py").write_text("print('stub run.py')\n")
    (root / "pytest.py").write_text("print('stub pytest')\n")  # `python -m pytest` finds it first
    return root


def fake_python(tmp_path: Path, version: str) -> Path:
    """An interpreter that answers every question with `version` ("3 9"), or fails ("")."""
    path = tmp_path / "old-python"
    path.write_text(f"#!/bin/sh\necho '{version}'\n" if version else "#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    return path


def run_script(root: Path, name: str, python: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHON": python}
    # With arguments bin/test runs one pytest (the stub); without, it would run tests/shards.py.
    args = ["-q"] if name == "test" else []
    return subprocess.run(["bash", str(root / "bin" / name), *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=240)


@pytest.mark.parametrize("script", ["serve", "test", "lint"])
@pytest.mark.parametrize("version", ["3 10", "2 7", ""])
def test_a_python_older_than_3_11_stops_the_scripts_with_one_line(tmp_path, script, version):
    root = scripts_copy(tmp_path)
    result = run_script(root, script, str(fake_python(tmp_path, version)))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "3.11" in lines[0] and lines[0].startswith(f"bin/{script}:"), lines
    assert not (root / ".venv").exists()


def made_venv(root: Path, *, version: str | None, runs: bool) -> None:
    """A .venv as another Python left it: pyvenv.cfg's version, and whether its python runs."""
    venv = root / ".venv"
    (venv / "bin").mkdir(parents=True)
    if version is not None:
        (venv / "pyvenv.cfg").write_text(f"home = /opt/old/bin\ninclude-system-site-packages = false\n"
                                         f"version = {version}\n")
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\nexit 0\n" if runs else "#!/bin/sh\nexit 127\n")
    python.chmod(0o755)
    (venv / ".installed").touch()
    (venv / ".installed-dev").touch()


@pytest.mark.parametrize(
    "script, version, runs",
    # One script per case: all three source the same bootstrap (bin/_venv.sh).
    [("serve", "3.9.18", True), ("serve", "3.11.7", False), ("test", None, True)],
)
def test_a_venv_made_by_another_python_is_rebuilt(tmp_path, script, version, runs):
    root = scripts_copy(tmp_path)
    made_venv(root, version=version, runs=runs)
    result = run_script(root, script, sys.executable)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stub" in result.stdout
    assert "rebuilding" in result.stderr
    cfg = (root / ".venv" / "pyvenv.cfg").read_text()
    assert re.search(rf"(?m)^version\w* *= *{sys.version_info[0]}\.{sys.version_info[1]}\.", cfg), cfg


def test_a_venv_of_this_python_is_kept(tmp_path):
    root = scripts_copy(tmp_path)
    first = run_script(root, "serve", sys.executable)
    assert first.returncode == 0 and "stub run.py" in first.stdout, first.stderr[-2000:]
    marker = root / ".venv" / "kept"
    marker.touch()
    again = run_script(root, "test", sys.executable)
    assert again.returncode == 0 and "stub pytest" in again.stdout and again.stderr == "", again.stderr[-2000:]
    assert marker.exists()
