"""Test-wide setup: patch like run.py does, before anything imports sockets or threads."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

# Before numpy loads its BLAS: one gevent loop per process does the work, and BLAS threads
# only spin beside it (a least-squares solve of the echo filter cost 14 ms of CPU with them,
# 2 ms without).
for _blas_threads in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_blas_threads, "1")

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
