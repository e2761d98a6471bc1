"""Test-wide setup: patch like run.py does, before anything imports sockets or threads."""

from gevent import monkey

monkey.patch_all()

from observability.logging import configure_logging  # noqa: E402

configure_logging(fmt="console", level="INFO")
