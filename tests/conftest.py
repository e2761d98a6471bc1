"""Test-wide setup: patch like run.py does, before anything imports sockets or threads."""

from gevent import monkey

monkey.patch_all()

from observability.logging import configure_logging  # noqa: E402

configure_logging(fmt="console", level="INFO")

# Real redis-server, PostgreSQL and nginx processes, started on first use (tests/services.py).
from tests.services import (  # noqa: E402, F401
    nginx_binary,
    nginx_server,
    postgres_server,
    postgres_url,
    redis_server,
)
