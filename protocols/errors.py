"""The one error the wire codecs raise, and the closed set of labels it carries.

```text
* ValueError
  + ProtocolError   a frame or body that does not follow the protocol (labelled by `kind`)
```

The websocket loops catch `ProtocolError` per frame, log and count it under `kind`, and go on
with the next frame (STYLE.md §7). Programming errors (a bad argument to an encoder) stay plain
`ValueError`s and are not caught there.
"""

from __future__ import annotations

__all__ = ["PROTOCOL_ERROR_KINDS", "ProtocolError"]

# Stable metrics labels. Adding one is fine; renaming one breaks dashboards.
PROTOCOL_ERROR_KINDS: frozenset[str] = frozenset(
    {
        "binary_frame",  # a binary websocket frame where the protocol only has text frames
        "oversize",  # longer than the protocol's frame limit; refused before decoding
        "bad_json",  # not decodable as JSON (or not UTF-8, or nested too deep)
        "not_object",  # valid JSON, but not a JSON object at the top level
        "unknown_event",  # an event/type name this protocol does not define
        "missing_field",  # a required field is absent
        "bad_field",  # a field is present but has the wrong type or an impossible value
        "bad_base64",  # a payload that is not strict base64
    }
)


class ProtocolError(ValueError):
    """A frame or body that does not follow the protocol.

    Attributes:
        kind: short stable label from `PROTOCOL_ERROR_KINDS`, used as a metrics label.
        detail: human-readable description for logs; may quote field names, never payloads.
    """

    kind: str
    detail: str

    def __init__(self, kind: str, detail: str) -> None:
        if kind not in PROTOCOL_ERROR_KINDS:
            # A typo here would silently create a new metrics label; fail loudly in tests instead.
            raise ValueError(f"unknown ProtocolError kind {kind!r}")
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[str, str]]:
        # The default reduce would call ProtocolError(message), which does not match __init__.
        return (type(self), (self.kind, self.detail))
