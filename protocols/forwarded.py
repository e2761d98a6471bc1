"""Who a request came from when proxies stand in front: X-Forwarded-For, trusted hop by hop.

Each proxy that speaks HTTP to us appends the address it got the request from to
X-Forwarded-For (nginx: `$proxy_add_x_forwarded_for`). Only the entries our own proxies
wrote can be believed: anything further left was sent by the client, who can write any
address there. With `trusted` proxies in front, the client is the `trusted`-th entry
from the right, the address our outermost proxy saw. This is werkzeug's ProxyFix rule
(x_for=N), applied where gevent's handler builds the request environ, so the refusal
logs that name a source, written before any WSGI middleware runs, see it too.
"""

from __future__ import annotations

import ipaddress

__all__ = ["client_address"]

# An X-Forwarded-For longer than this is not one our proxies made.
_MAX_HEADER = 1024


def client_address(remote_addr: str, forwarded_for: str | None, trusted: int) -> str:
    """The client's address: `remote_addr` unless `trusted` proxies vouch for another.

    Falls back to `remote_addr` when the header is missing, has fewer entries than
    `trusted` (a request that did not come through all of them), or the entry is not an
    IP address (a misconfigured proxy): never a value a client chose.
    """
    if trusted <= 0 or not forwarded_for or len(forwarded_for) > _MAX_HEADER:
        return remote_addr
    entries = [entry.strip() for entry in forwarded_for.split(",")]
    if len(entries) < trusted:
        return remote_addr
    candidate = entries[-trusted]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote_addr
