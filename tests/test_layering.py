"""The dependency direction the design relies on, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {"actors", "audio", "bench", "calls", "chaos", "directory", "links", "media", "observability", "protocols",
           "records", "service", "settings", "sims", "supervision", "web", "run"}


def imports(package: str) -> dict[str, set[str]]:
    """Top-level names each module of `package` imports."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_supervision_is_generic_and_imports_nothing_from_the_project():
    offenders = {
        m: n & PROJECT - {"supervision"} for m, n in imports("supervision").items() if n & PROJECT - {"supervision"}
    }
    assert offenders == {}


@pytest.mark.parametrize("package", ["audio", "protocols", "media", "calls"])
def test_pure_packages_do_no_io_and_know_no_actors(package):
    forbidden = {"gevent", "pykka", "flask", "structlog", "websocket", "geventwebsocket", "socket", "actors", "web"}
    offenders = {m: n & forbidden for m, n in imports(package).items() if n & forbidden}
    assert offenders == {}


def test_actors_see_sockets_only_through_links():
    # Sockets, their libraries and their exceptions stay in links/ (and the web layer that
    # accepts them): an actor handles messages and calls a link's small interface.
    forbidden = {"websocket", "geventwebsocket", "web", "socket", "flask"}
    offenders = {m: n & forbidden for m, n in imports("actors").items() if n & forbidden}
    assert offenders == {}


def test_links_know_no_actors_and_no_web_layer():
    forbidden = {"actors", "web", "flask", "pykka"}
    offenders = {m: n & forbidden for m, n in imports("links").items() if n & forbidden}
    assert offenders == {}
