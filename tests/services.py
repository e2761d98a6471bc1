"""Real redis-server, PostgreSQL and nginx processes for tests, on free loopback ports in temp dirs.

The services themselves are bench/_services.py's classes (the fleet soak starts them too);
here is a session-scoped pytest fixture per service that starts it on first use and stops
it when the session ends. A fixture skips, saying why, only where its binary is not
installed; under CI (CI set, as `.ci/run` runs) a missing binary fails instead, because CI
installs all three and must skip nothing.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from bench._services import (
    NginxServer,
    PostgresServer,
    RedisServer,
    ServiceUnavailable,
    die_with_parent,
    find_binary,
    free_port,
)

__all__ = [
    "NginxServer",
    "PostgresServer",
    "RedisServer",
    "ServiceUnavailable",
    "die_with_parent",
    "free_port",
    "nginx_binary",
    "nginx_server",
    "postgres_server",
    "postgres_url",
    "redis_binary",
    "redis_server",
]


def _unavailable(exc: ServiceUnavailable) -> None:
    """Skip for a missing binary, except under CI, which installs every one of them."""
    if os.environ.get("CI"):
        pytest.fail(f"{exc}: CI must install it (.ci/run)", pytrace=False)
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def redis_binary() -> str:
    """The redis-server binary, for a test that starts its own (the fleet soak)."""
    try:
        return find_binary("redis-server", "/usr/bin/redis-server")
    except ServiceUnavailable as exc:
        _unavailable(exc)
        raise


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the whole session; tests share it (use distinct keys or FLUSHALL)."""
    try:
        server = RedisServer()
    except ServiceUnavailable as exc:
        _unavailable(exc)
        raise
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.remove()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL cluster for the whole session; `create_database` gives a test its own."""
    try:
        server = PostgresServer()
    except ServiceUnavailable as exc:
        _unavailable(exc)
        raise
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.remove()


_database_names = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database on the session's PostgreSQL server; dropped after the test."""
    name = f"test_{os.getpid()}_{next(_database_names)}"
    url = postgres_server.create_database(name)
    yield url
    if postgres_server.running:
        postgres_server.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    """The nginx binary; a test builds its own NginxServer around the config it tests."""
    try:
        return find_binary("nginx", "/usr/sbin/nginx")
    except ServiceUnavailable as exc:
        _unavailable(exc)
        raise


@pytest.fixture
def nginx_server(nginx_binary: str) -> Iterator[NginxServer]:
    """An nginx not yet started: the test calls `start(http_config, port)`; stopped after the test."""
    server = NginxServer()
    try:
        yield server
    finally:
        server.stop()
        server.remove()
