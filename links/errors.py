"""Errors of the VAPI link, classified so a retry policy knows whether to try again.

* VapiError
  + VapiUnavailable   creating or connecting the call failed (kind says why)
  + VapiLinkDead      an open link stopped working (fault says how)
"""

from __future__ import annotations

import enum

__all__ = ["ErrorKind", "LinkFault", "VapiError", "VapiLinkDead", "VapiUnavailable"]


class ErrorKind(enum.Enum):
    AUTHENTICATION = "authentication"  # 401/403: the key is wrong; retrying will not help
    BAD_REQUEST = "bad_request"  # 400/404/422: our request or assistant id is wrong
    RATE_LIMITED = "rate_limited"  # 429
    SERVER = "server"  # 5xx
    TIMEOUT = "timeout"
    CONNECTIVITY = "connectivity"  # refused, reset, DNS
    PROTOCOL = "protocol"  # an answer we cannot read, or will not follow (a redirect, a foreign scheme)

    @property
    def is_permanent(self) -> bool:
        return self in (ErrorKind.AUTHENTICATION, ErrorKind.BAD_REQUEST)


class LinkFault(enum.Enum):
    """How an open link died. OVERSIZE and PROTOCOL mean VAPI misbehaved, and are counted as such."""

    CLOSED = "closed"  # the connection dropped, was shut, or the peer closed it
    TIMEOUT = "timeout"  # a send did not finish in time: the peer stopped reading
    OVERSIZE = "oversize"  # a frame or message over the cap
    PROTOCOL = "protocol"  # a frame RFC 6455 forbids

    @property
    def is_peer_misbehaving(self) -> bool:
        return self in (LinkFault.OVERSIZE, LinkFault.PROTOCOL)


class VapiError(Exception):
    """Base of the VAPI link's errors."""


class VapiUnavailable(VapiError):
    """The VAPI call could not be created or its socket not opened."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind


class VapiLinkDead(VapiError):
    """An open VAPI link stopped working; the VapiActor fails with this to be restarted."""

    def __init__(self, detail: str, fault: LinkFault = LinkFault.CLOSED) -> None:
        super().__init__(detail)
        self.fault = fault
