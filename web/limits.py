"""Request bodies, bounded before anything parses them.

A WSGI middleware around the Flask app: a body larger than `max_bytes` is refused from
its Content-Length alone (413) or as soon as it grows past the limit (chunked); the
whole body must arrive within `timeout_s` (408). What passes is read into memory once,
so Flask's parsers see a small, complete body and never spool to temporary files.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from wsgiref.types import InputStream, StartResponse, WSGIApplication, WSGIEnvironment

import gevent

__all__ = ["BoundedBodies"]

_CHUNK = 16384


class _BodyTimeout(Exception):
    """The body did not arrive within the deadline."""


class BoundedBodies:
    """Wraps a WSGI app; `on_refused(kind, client_address)` is told of each refusal."""

    def __init__(
        self,
        app: WSGIApplication,
        *,
        max_bytes: int,
        timeout_s: float,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self._app = app
        self._max = max_bytes
        self._timeout_s = timeout_s
        self._on_refused = on_refused

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("wsgi.websocket") is not None:
            return self._app(environ, start_response)
        length_header = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not length_header and not chunked:
            return self._app(environ, start_response)
        if length_header:
            try:
                length = int(length_header)
            except ValueError:
                return self._refuse(environ, start_response, "400 Bad Request", "bad_content_length")
            if length < 0:
                return self._refuse(environ, start_response, "400 Bad Request", "bad_content_length")
            if length > self._max:
                return self._refuse(environ, start_response, "413 Content Too Large", "body_too_large")
        else:
            length = self._max + 1  # read until the end, or one byte past the limit
        try:
            body = self._read(environ["wsgi.input"], length)
        except _BodyTimeout:
            return self._refuse(environ, start_response, "408 Request Timeout", "body_timeout")
        except (OSError, ValueError):
            return self._refuse(environ, start_response, "400 Bad Request", "body_unreadable")
        if len(body) > self._max:
            return self._refuse(environ, start_response, "413 Content Too Large", "body_too_large")
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self._app(environ, start_response)

    def _read(self, stream: InputStream, length: int) -> bytes:
        parts: list[bytes] = []
        remaining = length
        timer = gevent.Timeout(self._timeout_s)
        timer.start()
        try:
            while remaining > 0:
                chunk = stream.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                parts.append(chunk)
                remaining -= len(chunk)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise _BodyTimeout from None
        finally:
            timer.close()
        return b"".join(parts)

    def _refuse(
        self, environ: WSGIEnvironment, start_response: StartResponse, status: str, kind: str
    ) -> Iterable[bytes]:
        if self._on_refused is not None:
            self._on_refused(kind, str(environ.get("REMOTE_ADDR", "?")))
        # The unread body stays unread: the connection is closed, not kept alive. gevent's
        # Input would otherwise read the rest of the body to reuse the connection
        # (256 MiB, if that is what the client announced), so it is marked consumed.
        stream = environ.get("wsgi.input")
        if stream is not None and hasattr(stream, "content_length") and hasattr(stream, "position"):
            stream.content_length = stream.position
            stream.chunked_input = False
        start_response(status, [("Content-Type", "text/plain"), ("Connection", "close")])
        return [f"{status[4:].lower()}\n".encode()]
