"""The stream ticket: what a node that takes a call's media stream needs from the webhook's node.

The webhook answers Twilio with TwiML whose `<Stream>` carries the ticket as `<Parameter>`s;
Twilio hands them back in the stream's `start.customParameters`, to whichever node the
load balancer sent the socket. The ticket is sealed with Fernet (AES-128-CBC and
HMAC-SHA256, with its issue time inside; `cryptography`'s implementation): only a node
that holds the fleet's key can read it or make one, a changed byte makes it unreadable,
and it expires. It holds:

- the CallSid it was issued for (a ticket presented on another call's socket is refused);
- the VAPI call the webhook created, if it could: its id and its `websocketCallUrl`. The
  URL alone joins that VAPI call, so it travels only inside the ticket;
- the webhook node's id and a random nonce;
- whether the stream resumes a live phone call (calls/handoff.py): its node then takes the
  call's hand-off from the directory;
- the webhook node's relay URL (NODE_URL), when that node opened the VAPI call's socket at
  once and parks it: the stream's node, if another, reaches VAPI through that node
  (docs/vapi-relay.md), since VAPI takes one socket per call.

The same sealer makes and checks **relay tokens**: what a stream's node shows the webhook's
node to be given the parked socket of one call. A token is an HMAC-SHA256, under a key
HKDF derives from the ticket key with a label of its own, over the CallSid and an expiry
(seconds since the epoch); it travels in the relay handshake's Authorization header.

The key is FLEET_SECRET's, or else derived from the Twilio auth token, so every node
configured for the same Twilio account agrees without another secret to distribute.
Both go through HKDF-SHA256 with a label of their own: the ticket key is never the
token itself. Fernet refuses tokens stamped more than 60 s in the future, so the nodes'
clocks must agree within that.

A Fernet token of a few hundred bytes of payload is longer than one `<Parameter>` may be
(name and value under 500 characters), so `ticket_parameters` splits it over numbered
parameters and `ticket_from_parameters` joins them again.

Pure: no I/O, no clock of its own (the caller passes the time).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "RELAY_PATH_PREFIX",
    "RELAY_TOKEN_TTL_S",
    "TICKET_PARAMETER",
    "Ticket",
    "TicketError",
    "TicketSealer",
    "relay_socket_url",
    "ticket_from_parameters",
    "ticket_key",
    "ticket_parameters",
]

# The `<Parameter>` names: "ticket", then "ticket1", "ticket2", ... for the rest of a long one.
TICKET_PARAMETER: Final = "ticket"
# Characters of the ticket per `<Parameter>`: with its name, under Twilio's 500.
_CHUNK: Final = 480
# More parts than this is not a ticket of ours (a real one needs two).
_MAX_PARTS: Final = 8
_NONCE_BYTES: Final = 12
# Distinct labels: a key derived for tickets is good for nothing else.
_HKDF_INFO_SECRET: Final = b"twilio-vapi-bridge stream ticket v1 (FLEET_SECRET)"
_HKDF_INFO_TOKEN: Final = b"twilio-vapi-bridge stream ticket v1 (TWILIO_AUTH_TOKEN)"
# The relay's route on every node: RELAY_PATH_PREFIX + CallSid.
RELAY_PATH_PREFIX: Final = "/relay/vapi/"
_HKDF_INFO_RELAY: Final = b"twilio-vapi-bridge vapi relay token v1"
# A relay token is made just before its handshake: a short life is plenty, and bounds a
# captured one (it is single-use anyway: the parked socket goes to the first good handshake).
RELAY_TOKEN_TTL_S: Final = 30.0
# Tokens stamped further ahead than this are refused: the nodes' clocks must agree within it,
# as Fernet's 60 s for tickets.
_RELAY_CLOCK_SKEW_S: Final = 60.0


class TicketError(Exception):
    """A ticket that cannot be used; `kind` says why (for counters), the message never quotes it."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True, slots=True, kw_only=True)
class Ticket:
    """What travels from the webhook's node to the stream's (repr hides the secret URL)."""

    call_sid: str
    node_id: str  # the node that answered the webhook
    issued_at: float  # seconds since the epoch, as Fernet stamped it
    nonce: str
    vapi_call_id: str | None = None  # None: the webhook could not create the VAPI call
    vapi_websocket_url: str | None = field(default=None, repr=False)
    resume: bool = False  # the stream continues a live phone call (after-stream issued it)
    relay_url: str | None = None  # the webhook node's NODE_URL, when it parks the VAPI call's socket

    @property
    def has_vapi_call(self) -> bool:
        return self.vapi_call_id is not None and self.vapi_websocket_url is not None


def ticket_key(*, fleet_secret: str | None, auth_token: str) -> bytes:
    """The Fernet key (url-safe base64 of 32 bytes) every node with the same settings derives."""
    material, info = (
        (fleet_secret.encode(), _HKDF_INFO_SECRET) if fleet_secret else (auth_token.encode(), _HKDF_INFO_TOKEN)
    )
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)
    return base64.urlsafe_b64encode(derived)


class TicketSealer:
    """Seals and opens tickets with one key; `ttl_s` is how long a ticket stays good."""

    def __init__(self, key: bytes, *, ttl_s: float) -> None:
        self._fernet = Fernet(key)
        self._ttl_s = ttl_s
        self._relay_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO_RELAY).derive(key)

    def __repr__(self) -> str:
        return f"TicketSealer(key=***, ttl_s={self._ttl_s:g})"

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def seal(
        self,
        *,
        call_sid: str,
        node_id: str,
        now: float,
        vapi_call_id: str | None = None,
        vapi_websocket_url: str | None = None,
        resume: bool = False,
        relay_url: str | None = None,
    ) -> str:
        """A new ticket for `call_sid`, stamped `now` (seconds since the epoch)."""
        payload: dict[str, Any] = {"c": call_sid, "n": node_id, "r": secrets.token_urlsafe(_NONCE_BYTES)}
        if resume:
            payload["m"] = 1
        if relay_url is not None:
            payload["u"] = relay_url
        if vapi_call_id is not None and vapi_websocket_url is not None:
            payload["v"] = vapi_call_id
            payload["w"] = vapi_websocket_url
        data = json.dumps(payload, separators=(",", ":")).encode()
        return self._fernet.encrypt_at_time(data, int(now)).decode("ascii")

    def open(self, text: str, *, call_sid: str, now: float) -> Ticket:
        """The ticket in `text`, if it is ours, unexpired at `now` and issued for `call_sid`.

        Raises:
            TicketError: `bad_ticket` (not sealed with our key, altered, or not a ticket),
                `ticket_expired`, or `ticket_for_another_call`.
        """
        token = text.encode("ascii", "replace")
        try:
            data = self._fernet.decrypt_at_time(token, int(self._ttl_s), int(now))
        except InvalidToken:
            # Fernet does not say which check failed; tell an expired one apart for the log.
            try:
                self._fernet.extract_timestamp(token)
            except InvalidToken:
                raise TicketError("bad_ticket", "not a ticket sealed with this fleet's key") from None
            raise TicketError("ticket_expired", f"ticket older than {self._ttl_s:g}s (or from the future)") from None
        ticket = _parse(data, issued_at=float(self._fernet.extract_timestamp(token)))
        if ticket.call_sid != call_sid:
            raise TicketError("ticket_for_another_call", "ticket was issued for another CallSid")
        return ticket

    def relay_token(self, call_sid: str, *, now: float) -> str:
        """A token that asks the webhook's node for `call_sid`'s parked VAPI socket until now + RELAY_TOKEN_TTL_S."""
        expires = int(now + RELAY_TOKEN_TTL_S)
        return f"{expires}.{self._relay_mac(call_sid, expires)}"

    def relay_refusal(self, token: str, *, call_sid: str, now: float) -> str | None:
        """None when `token` is a good relay token for `call_sid` at `now`; else why not (a counter label)."""
        expires_text, dot, mac = token.partition(".")
        if not dot or not expires_text.isdigit() or len(expires_text) > 12:
            return "bad_relay_token"
        expires = int(expires_text)
        # The MAC first, in constant time: whether the expiry was good says nothing to a forger.
        if not hmac.compare_digest(mac.encode("ascii", "replace"), self._relay_mac(call_sid, expires).encode()):
            return "bad_relay_token"
        if expires < now or expires > now + RELAY_TOKEN_TTL_S + _RELAY_CLOCK_SKEW_S:
            return "relay_token_expired"
        return None

    def _relay_mac(self, call_sid: str, expires: int) -> str:
        message = f"relay|{call_sid}|{expires}".encode()
        digest = hmac.new(self._relay_key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _parse(data: bytes, *, issued_at: float) -> Ticket:
    try:
        payload = json.loads(data)
    except ValueError:
        raise TicketError("bad_ticket", "ticket payload is not JSON") from None
    if not isinstance(payload, dict):
        raise TicketError("bad_ticket", "ticket payload is not an object")
    call_sid, node_id, nonce = payload.get("c"), payload.get("n"), payload.get("r")
    vapi_call_id, websocket_url = payload.get("v"), payload.get("w")
    relay_url = payload.get("u")
    if not (isinstance(call_sid, str) and isinstance(node_id, str) and isinstance(nonce, str)):
        raise TicketError("bad_ticket", "ticket payload lacks its call, node or nonce")
    if not (isinstance(vapi_call_id, str) and isinstance(websocket_url, str)):
        vapi_call_id = websocket_url = None
    return Ticket(
        call_sid=call_sid,
        node_id=node_id,
        issued_at=issued_at,
        nonce=nonce,
        vapi_call_id=vapi_call_id,
        vapi_websocket_url=websocket_url,
        resume=payload.get("m") == 1,
        relay_url=relay_url if isinstance(relay_url, str) and vapi_call_id is not None else None,
    )


def ticket_parameters(ticket: str) -> dict[str, str]:
    """The `<Parameter>`s that carry `ticket`: `ticket`, then `ticket1`, `ticket2`, ..."""
    chunks = [ticket[i : i + _CHUNK] for i in range(0, len(ticket), _CHUNK)] or [""]
    if len(chunks) > _MAX_PARTS:
        raise ValueError(f"ticket too long for {_MAX_PARTS} parameters")
    return {(TICKET_PARAMETER if i == 0 else f"{TICKET_PARAMETER}{i}"): chunk for i, chunk in enumerate(chunks)}


def ticket_from_parameters(parameters: Mapping[str, str]) -> str:
    """The ticket that `start.customParameters` carries, joined again; "" when there is none."""
    parts = [parameters.get(TICKET_PARAMETER, "")]
    for i in range(1, _MAX_PARTS):
        part = parameters.get(f"{TICKET_PARAMETER}{i}")
        if part is None:
            break
        parts.append(part)
    return "".join(parts)


def relay_socket_url(node_url: str, call_sid: str) -> str:
    """The WebSocket URL of `call_sid`'s relay on the node whose NODE_URL is `node_url` (http -> ws)."""
    base = node_url.rstrip("/")
    scheme, sep, rest = base.partition("://")
    ws_scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme)
    return f"{ws_scheme}{sep}{rest}{RELAY_PATH_PREFIX}{call_sid}"
