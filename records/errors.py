"""What can go wrong in the call-records store.

    RecordsError
    ├── SchemaTooNew       the file was written by a newer program: refused, left untouched
    ├── StoreUnavailable   the database cannot be opened or read (path, permissions, I/O)
    │   └── DatabaseUnreachable   the database server could not be reached (or refused us)
    └── InvalidRecord      a record whose fields cannot be stored (wrong type, duplicate actor)

Writes never raise any of these to the caller: `RecordStore.submit` counts and logs instead.
"""

from __future__ import annotations

__all__ = ["DatabaseUnreachable", "InvalidRecord", "RecordsError", "SchemaTooNew", "StoreUnavailable"]


class RecordsError(Exception):
    """Base class of the records package's errors."""


class SchemaTooNew(RecordsError):
    """The database's schema version is newer than any this program knows."""

    def __init__(self, path: str, found: int, known: int) -> None:
        self.path = path
        self.found = found
        self.known = known
        super().__init__(
            f"{path}: call-records schema version {found} is newer than this program's {known}; "
            "refusing to open it (run a newer version, or point DATABASE_PATH elsewhere)"
        )


class StoreUnavailable(RecordsError):
    """The database could not be opened or read; the message names the path and the cause."""


class DatabaseUnreachable(StoreUnavailable):
    """Connecting to the database server failed: it is down, unreachable, or refused the connection."""


class InvalidRecord(RecordsError):
    """A record field holds a value the table cannot take."""

    def __init__(self, field_name: str, value: object, expected: str) -> None:
        self.field_name = field_name
        self.expected = expected
        super().__init__(f"{field_name}={value!r} cannot be stored: expected {expected}")
