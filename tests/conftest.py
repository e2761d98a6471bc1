"""Test-wide setup: patch like run.py does, before anything imports sockets or threads."""

from gevent import monkey

monkey.patch_all()
