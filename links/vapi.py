"""Creating a VAPI call over REST and running its WebSocket (vapi.websocket transport).

VAPI is a peer we do not control, so nothing it answers is trusted: redirects are not
followed, the API key goes only to the configured origin, frames and messages are capped
before their bytes are read, and no send or close waits on it for long.

Blocking calls, meant for greenlets of the VapiActor's own: under gevent's monkey
patching they yield while waiting, and every one of them is bounded in time.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

import gevent
import websocket
from websocket import ABNF

from links.errors import ErrorKind, LinkFault, VapiLinkDead, VapiUnavailable
from links.recv import SocketReader
from protocols.errors import ProtocolError
from protocols.vapi import AudioFormat, CreatedCall, create_call_body, encode_end_call, parse_create_response
from protocols.websocket import (
    OP_BINARY,
    Closed,
    FrameReader,
    Message,
    Ping,
    Pong,
    WebSocketProtocolError,
    encode_masked_frame,
)

__all__ = [
    "CLOSE_BUDGET_S",
    "MAX_FRAGMENTS",
    "MAX_MESSAGE_BYTES",
    "RELAY_CONNECT_TIMEOUT_S",
    "SOCKET_TIMEOUT_S",
    "USER_AGENT",
    "Received",
    "Signal",
    "VapiConnector",
    "VapiLink",
    "check_websocket_url",
]

# Cloudflare in front of api.vapi.ai answers 403 "error code: 1010" without a User-Agent.
USER_AGENT = "twilio-vapi-bridge/1.0"
# A create-call answer is a few hundred bytes; more than this is not an answer we want.
_MAX_RESPONSE_BYTES = 1 << 20
# VAPI's audio chunks and events are KiB-sized; a message this large is a peer trying
# to make us buffer.
MAX_MESSAGE_BYTES: Final = 1 << 20
# Fragments of one message. Without a count cap a stream of empty continuation frames
# would grow the fragment list forever while adding no bytes.
MAX_FRAGMENTS: Final = 4096
# Once the socket is open: a send that cannot finish in this time means VAPI stopped
# reading. Half the actor's 1 s handler deadline, so the link dies before the watchdog acts.
SOCKET_TIMEOUT_S: Final = 0.5
# Everything close() may take: the goodbye, the closing handshake, VAPI's answer to it.
CLOSE_BUDGET_S: Final = 0.5
# Opening a socket through another node's relay: nodes share a network, so one that has
# not answered by then is taken for gone and the call goes on without it.
RELAY_CONNECT_TIMEOUT_S: Final = 1.0

_CLOSE_NORMAL: Final = 1000
_CLOSE_PROTOCOL_ERROR: Final = 1002
_CLOSE_TOO_BIG: Final = 1009
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS: Final = {"http": 80, "ws": 80, "https": 443, "wss": 443}

_TEXT: Final = ABNF.OPCODE_TEXT
_PING: Final = ABNF.OPCODE_PING
_PONG: Final = ABNF.OPCODE_PONG
# Masking keys for audio frames come from the OS in blocks: one getrandom() per 1024
# frames, where websocket-client makes one per frame. Each key is used once.
_KEY_BLOCK: Final = 4096
_RECV_BYTES: Final = 16384  # a burst of audio frames; a larger message is read in several turns


class Signal(enum.Enum):
    """What VapiLink.recv returns besides messages."""

    PONG = "pong"
    CLOSED = "closed"  # VAPI sent a close frame (already answered)


# bytes: assistant audio; str: a JSON event's text; or a Signal. Plain types, so the
# 50-a-second audio path allocates nothing beyond the frame itself.
Received: TypeAlias = bytes | str | Signal


def check_websocket_url(websocket_url: str, base_url: str) -> bool:
    """Vet VAPI's `websocketCallUrl` against the configured base URL.

    Only `wss://` is dialled, and `ws://` too when the base URL is plain `http://` (the
    loopback simulator). Returns whether the API key may go with the handshake: only to
    the base URL's own host and port. The URL alone joins the call, so the key must never
    follow VAPI's answer to another host.

    Raises:
        VapiUnavailable: PROTOCOL, for a URL we will not dial (the detail never names it).
    """
    base_scheme, base_host, base_port = _origin(base_url)
    allowed = ("wss", "ws") if base_scheme == "http" else ("wss",)
    try:
        scheme, host, port = _origin(websocket_url)
    except ValueError:
        raise VapiUnavailable(ErrorKind.PROTOCOL, "websocketCallUrl is not a URL we can dial") from None
    if scheme not in allowed:
        wanted = " or ".join(f"{s}://" for s in allowed)
        raise VapiUnavailable(ErrorKind.PROTOCOL, f"websocketCallUrl is not {wanted}")
    return (host, port) == (base_host, base_port)


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL; ValueError for one without a host or with credentials."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        raise ValueError("not an absolute http(s)/ws(s) URL without credentials")
    return scheme, parts.hostname, parts.port or _DEFAULT_PORTS[scheme]


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx stays an error: the key and the request go to the configured origin or nowhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@contextlib.contextmanager
def _deadline(seconds: float, what: str) -> Iterator[None]:
    """Bound a whole operation: socket timeouts bound each wait, not a peer that drips bytes."""
    timeout = gevent.Timeout(seconds)
    timeout.start()
    try:
        yield
    except gevent.Timeout as exc:
        if exc is not timeout:
            raise
        raise VapiUnavailable(ErrorKind.TIMEOUT, f"{what} did not finish within {seconds:g}s") from None
    finally:
        timeout.close()


class VapiConnector:
    """Creates VAPI calls and connects their sockets. Holds the API key; never logs it."""

    def __init__(self, *, base_url: str, api_key: str, assistant_id: str, timeout_s: float) -> None:
        self._base_url = base_url.rstrip("/")
        if _origin(self._base_url)[0] not in ("http", "https"):
            raise ValueError("base_url must be an http(s):// URL")
        self._api_key = api_key
        self._assistant_id = assistant_id
        self._timeout_s = timeout_s
        self._opener = urllib.request.build_opener(_RefuseRedirects)

    def __repr__(self) -> str:
        return f"VapiConnector(base_url={self._base_url!r}, api_key=***)"

    def create_call(self, audio_format: AudioFormat, first_message_mode: str | None) -> CreatedCall:
        body = create_call_body(
            assistant_id=self._assistant_id,
            audio_format=audio_format,
            first_message_mode=first_message_mode,
        )
        # The configured base URL, checked to be http(s) in __init__: no file: or custom scheme.
        request = urllib.request.Request(  # noqa: S310
            f"{self._base_url}/call",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        )
        # Unredirected: even a handler that did follow a redirect would not carry it along.
        request.add_unredirected_header("Authorization", f"Bearer {self._api_key}")
        try:
            with (
                _deadline(self._timeout_s, "POST /call"),
                self._opener.open(request, timeout=self._timeout_s) as response,
            ):
                raw = response.read(_MAX_RESPONSE_BYTES)
        except urllib.error.HTTPError as exc:
            exc.close()
            if 300 <= exc.code < 400:
                detail = f"POST /call answered {exc.code}; redirects are not followed"
                raise VapiUnavailable(ErrorKind.PROTOCOL, detail) from exc
            raise VapiUnavailable(_kind_for_status(exc.code), f"POST /call answered {exc.code}") from exc
        except TimeoutError as exc:  # socket.timeout is TimeoutError
            raise VapiUnavailable(ErrorKind.TIMEOUT, "POST /call timed out") from exc
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            raise VapiUnavailable(ErrorKind.CONNECTIVITY, f"POST /call failed: {type(exc).__name__}") from exc
        try:
            return parse_create_response(raw)
        except ProtocolError as exc:
            raise VapiUnavailable(ErrorKind.PROTOCOL, f"POST /call answer unreadable: {exc.kind}") from exc

    def connect(self, websocket_url: str) -> VapiLink:
        """Open the call's socket; the URL is a secret (it alone joins the call)."""
        send_key = check_websocket_url(websocket_url, self._base_url)
        return self._open(websocket_url, [f"Authorization: Bearer {self._api_key}"] if send_key else [],
                          self._timeout_s)

    def connect_relay(self, relay_url: str, token: str) -> VapiLink:
        """Open the call's socket through the node that holds it open (docs/vapi-relay.md).

        That node splices VAPI's bytes to this socket unchanged, so the link speaks to VAPI
        as if directly. The relay token goes with the handshake, never the API key; the
        wait is short (RELAY_CONNECT_TIMEOUT_S): nodes are near each other, and a node that
        does not answer at once is taken for gone.
        """
        if urlsplit(relay_url).scheme.lower() not in ("ws", "wss"):
            raise VapiUnavailable(ErrorKind.PROTOCOL, "relay URL is not ws:// or wss://")
        return self._open(relay_url, [f"Authorization: Bearer {token}"], min(self._timeout_s, RELAY_CONNECT_TIMEOUT_S))

    def _open(self, url: str, header: list[str], timeout_s: float) -> VapiLink:
        ws = websocket.WebSocket(enable_multithread=True, skip_utf8_validation=True)
        try:
            with _deadline(timeout_s, "opening the call socket"):
                ws.connect(
                    url,
                    timeout=timeout_s,
                    header=header,
                    # A redirect would carry the key (and the call) to a host VAPI names.
                    redirect_limit=0,
                )
        except websocket.WebSocketTimeoutException as exc:
            raise VapiUnavailable(ErrorKind.TIMEOUT, "call socket did not open in time") from exc
        except websocket.WebSocketBadStatusException as exc:
            raise VapiUnavailable(_kind_for_status(exc.status_code), f"call socket refused: {exc.status_code}") from exc
        except (websocket.WebSocketException, OSError) as exc:
            status = ws.handshake_response.status if ws.handshake_response is not None else None
            if status in _REDIRECTS:
                detail = f"call socket answered {status}; redirects are not followed"
                raise VapiUnavailable(ErrorKind.PROTOCOL, detail) from exc
            raise VapiUnavailable(ErrorKind.CONNECTIVITY, f"call socket failed: {type(exc).__name__}") from exc
        except VapiUnavailable:  # the deadline: do not leave a half-open socket behind
            ws.shutdown()
            raise
        # From now on a send that cannot finish soon means the link is dead. Reads wait
        # with no timeout (a TLS socket's time out and retry: VapiLink._fill); the
        # keepalive decides liveness.
        ws.settimeout(SOCKET_TIMEOUT_S)
        return VapiLink(ws)


class VapiLink:
    """One open call socket: capped, linear reads; sends and close bounded in time.

    recv() belongs to one reader greenlet; sends may come from any greenlet (the socket's
    send lock keeps frames whole). Every failure is a VapiLinkDead, never a websocket or
    socket exception.
    """

    def __init__(self, ws: websocket.WebSocket, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._ws = ws
        # Reads bypass websocket-client: its parser reads a frame with two or three recv()
        # calls of exactly the bytes it needs next and builds a frame object, and its
        # message API has no cap and joins fragments quadratically. Ours reads what the
        # socket has, one recv() per burst with no timer per wait (links/recv.py), and
        # parses it with protocols.websocket, which refuses a frame from its header when
        # it would take the message over the cap. websocket-client keeps the handshake,
        # the socket and the sends (its lock keeps frames whole).
        self._reader = FrameReader(max_message_bytes, masked=False, skip_oversize=False,
                                   max_fragments=MAX_FRAGMENTS)
        if ws.sock is None:
            raise ValueError("VapiLink needs a connected WebSocket")
        self._recv = SocketReader(ws.sock)
        self._view = memoryview(bytearray(_RECV_BYTES))
        self._drained = False  # the last read left the socket empty (as far as we know)
        self._dead = False
        self._close_sent = False
        self._keys = b""
        self._key_pos = 0

    def __repr__(self) -> str:
        return f"VapiLink(dead={self._dead})"

    @property
    def dead(self) -> bool:
        return self._dead

    # Reading -------------------------------------------------------------------------

    def recv(self) -> Received:
        """The next message or signal; waits as long as VAPI is silent.

        Raises:
            VapiLinkDead: the connection failed (CLOSED), or VAPI sent an oversize
                (OVERSIZE, closed with 1009) or forbidden (PROTOCOL, 1002) frame.
        """
        if self._dead:
            raise VapiLinkDead("link is closed")
        reader = self._reader
        while True:
            try:
                event = reader.next_event()
            except WebSocketProtocolError as exc:
                fault = LinkFault.OVERSIZE if exc.code == _CLOSE_TOO_BIG else LinkFault.PROTOCOL
                raise self._refuse(fault, f"bad frame: {exc.reason}") from None
            if event is None:
                self._fill()
            elif type(event) is Message:
                return event.payload.decode("utf-8", "replace") if event.text else event.payload
            elif type(event) is Pong:
                return Signal.PONG
            elif type(event) is Ping:
                self._send(event.payload, _PONG)
            elif type(event) is Closed:
                self._dead = True
                with contextlib.suppress(websocket.WebSocketException, OSError):
                    self._send_close(_CLOSE_NORMAL)  # the answer is a courtesy; the link is over
                return Signal.CLOSED
            else:  # Oversize: never, as oversize messages are refused, not skipped
                raise self._refuse(LinkFault.OVERSIZE, "message over the cap")

    def _fill(self) -> None:
        """Read what the socket has into the frame reader; VapiLinkDead when it cannot."""
        view = self._view
        while True:
            try:
                n = self._recv.recv_into(view, self._drained)
            except TimeoutError:
                continue  # a TLS socket's read timeout: silence; the keepalive decides liveness
            except OSError as exc:
                self._dead = True
                raise VapiLinkDead(f"read failed: {type(exc).__name__}") from exc
            if not n:
                self._dead = True
                raise VapiLinkDead("read failed: the connection was closed")
            # Less than a full buffer: the socket is empty now, so the next read waits first.
            self._drained = n < len(view)
            self._reader.feed(view[:n])
            return

    @property
    def buffered(self) -> bool:
        """Bytes already read from the socket and not yet taken by a frame."""
        return self._reader.buffered > 0

    def _refuse(self, fault: LinkFault, detail: str) -> VapiLinkDead:
        """The peer broke the rules: tell it (best effort), and the link is dead."""
        if not self._dead:
            self._dead = True
            code = _CLOSE_TOO_BIG if fault is LinkFault.OVERSIZE else _CLOSE_PROTOCOL_ERROR
            with contextlib.suppress(websocket.WebSocketException, OSError):
                self._send_close(code)
        return VapiLinkDead(detail, fault)

    # Sending -------------------------------------------------------------------------

    def send_audio(self, data: bytes) -> None:
        """One binary frame of audio, framed and masked here (in C) and written under
        websocket-client's own send lock, so it never interleaves with the library's
        frames (pings, text, close). websocket-client's send builds a frame object,
        validates it, draws a key from the OS and masks per frame: 50 times a second
        a call, that was the largest cost of the uplink after the actor hops."""
        if self._dead:
            raise VapiLinkDead("link is closed")
        ws = self._ws
        sock = ws.sock
        if sock is None:
            self._dead = True
            raise VapiLinkDead("link is closed")
        pos = self._key_pos
        if pos >= len(self._keys):
            self._keys, pos = os.urandom(_KEY_BLOCK), 0
        self._key_pos = pos + 4
        frame = encode_masked_frame(data, OP_BINARY, self._keys[pos : pos + 4])
        try:
            with ws.lock:
                # As links/twilio.py: send() first, sendall (bounded by the socket's
                # timeout) only for what a full kernel buffer left over.
                sent = sock.send(frame)
                if sent < len(frame):
                    sock.sendall(frame[sent:])
        except TimeoutError as exc:  # the socket's timeout (SOCKET_TIMEOUT_S) bounds the whole send
            self._kill()
            raise VapiLinkDead(f"send timed out after {SOCKET_TIMEOUT_S:g}s", LinkFault.TIMEOUT) from exc
        except OSError as exc:
            self._kill()
            raise VapiLinkDead(f"send failed: {type(exc).__name__}") from exc

    def send_text(self, text: str) -> None:
        self._send(text, _TEXT)

    def ping(self) -> None:
        self._send(b"", _PING)

    def _send(self, payload: bytes | str, opcode: int) -> None:
        if self._dead:
            raise VapiLinkDead("link is closed")
        try:
            self._ws.send(payload, opcode)
        except (websocket.WebSocketTimeoutException, TimeoutError) as exc:
            self._kill()
            raise VapiLinkDead(f"send timed out after {SOCKET_TIMEOUT_S:g}s", LinkFault.TIMEOUT) from exc
        except (websocket.WebSocketException, OSError) as exc:
            self._kill()
            raise VapiLinkDead(f"send failed: {type(exc).__name__}") from exc

    def _send_close(self, code: int) -> None:
        if not self._close_sent:
            self._close_sent = True
            self._ws.send_close(code)

    def _kill(self) -> None:
        """Dead now: a half-sent frame leaves the stream unusable, and greenlets waiting on
        the socket (a send behind the lock, the reader) must fail at once, not time out."""
        self._dead = True
        sock = self._ws.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # Ending --------------------------------------------------------------------------

    def close(self, goodbye: bool) -> None:
        """End the link within CLOSE_BUDGET_S whatever VAPI does.

        With `goodbye`, first send `end-call` (closing the socket alone may leave the
        VAPI call live). Then the closing handshake, and the socket is closed. Call it
        once the reader greenlet is gone.
        """
        try:
            if not self._dead:
                # False: the block just ends when time is up (documented; gevent's stubs omit it).
                with gevent.Timeout(CLOSE_BUDGET_S, False):  # type: ignore[arg-type]
                    if goodbye:
                        self._ws.send(encode_end_call())
                    self._send_close(_CLOSE_NORMAL)
                    # Wait for VAPI's close frame, so unread data does not make our close a
                    # reset that could discard the goodbye. Reads stay capped meanwhile.
                    while self.recv() is not Signal.CLOSED:
                        pass
        except (VapiLinkDead, websocket.WebSocketException, OSError):
            pass
        finally:
            self.shutdown()

    def detach(self) -> socket.socket | None:
        """Give up the open socket, unread, to a relay that passes its bytes on (docs/vapi-relay.md).

        None if the link already read from it (its bytes would be split between two
        readers) or is dead. The link is dead afterwards and never touches the socket again.
        """
        sock = self._ws.sock
        if self._dead or sock is None or self._reader.bytes:
            return None
        self._dead = True
        return sock

    def shutdown(self) -> None:
        """Close the socket now, without a handshake (also how a fault severs the link)."""
        self._dead = True
        self._ws.shutdown()


def _kind_for_status(status: int) -> ErrorKind:
    if status in (401, 403):
        return ErrorKind.AUTHENTICATION
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status >= 500:
        return ErrorKind.SERVER
    return ErrorKind.BAD_REQUEST
