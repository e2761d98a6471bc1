"""Typed field access for decoded JSON, shared by the Twilio and VAPI parsers.

Each getter raises ProtocolError naming the field: "missing_field" when it is absent,
"bad_field" when it has the wrong JSON type. `type(...) is` rather than isinstance, so
a JSON true is never taken for the integer 1.
"""

from __future__ import annotations

from typing import Any

from protocols.errors import ProtocolError

__all__ = ["integer", "obj", "optional_string", "string"]


def _required(parent: dict[str, Any], key: str, where: str, kind: type, noun: str) -> Any:
    value = parent.get(key)
    if value is None:
        raise ProtocolError("missing_field", f"{where} has no {key!r}")
    if type(value) is not kind:
        raise ProtocolError("bad_field", f"{where}: {key!r} is not {noun}")
    return value


def obj(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    return _required(parent, key, where, dict, "an object")  # type: ignore[no-any-return]


def string(parent: dict[str, Any], key: str, where: str) -> str:
    return _required(parent, key, where, str, "a string")  # type: ignore[no-any-return]


def integer(parent: dict[str, Any], key: str, where: str) -> int:
    return _required(parent, key, where, int, "an integer")  # type: ignore[no-any-return]


def optional_string(parent: dict[str, Any], key: str, where: str) -> str | None:
    value = parent.get(key)
    if value is not None and type(value) is not str:
        raise ProtocolError("bad_field", f"{where}: {key!r} is not a string")
    return value
