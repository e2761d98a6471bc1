"""Shared call directory backends (the interface and the in-process one: calls/directory.py).

- `SqliteDirectory`: a file the workers of one machine share; nothing to install.
- `RedisDirectory`: Redis, for nodes on several machines (REDIS_URL).
"""

from directory.redis import RedisDirectory
from directory.sqlite import SqliteDirectory

__all__ = ["RedisDirectory", "SqliteDirectory"]
