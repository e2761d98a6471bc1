"""The HTTP and WebSocket surface: Twilio's webhooks and media sockets.

`create_app` builds the Flask app from objects made in run.py; there is no module-level
app. Blueprints: voice (TwiML webhooks), media (Twilio's media socket), health, admin,
dashboard and relay (another node's way to a VAPI socket parked here). Every view
reaches what it needs through `context()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from actors.registry import CallRegistry
from links.twilio import SocketLimits
from links.twilio_rest import TwilioDialer
from observability.logging import Logger
from observability.metrics import Metrics
from observability.ratelimit import LogLimiter
from protocols.signature import SignatureValidator
from records import RecordStore
from settings import FallbackSettings
from web.admission import Admission

__all__ = ["WebContext", "context", "create_app"]

_EXTENSION = "bridge"


@dataclass(frozen=True, slots=True, kw_only=True)
class WebContext:
    """What the views need, stored on the app as app.extensions['bridge']."""

    public_url: str
    validator: SignatureValidator
    calls: CallRegistry
    metrics: Metrics
    fallback: FallbackSettings
    log: Logger
    log_limiter: LogLimiter  # for what a client can make us log as fast as it sends
    socket_limits: SocketLimits
    media_start_timeout_s: float
    admission: Admission | None = None
    admin_token: str | None = None
    metrics_token: str | None = None
    records: RecordStore | None = None  # when call records are kept
    dialer: TwilioDialer | None = None  # places outbound calls (POST /admin/calls)


def context() -> WebContext:
    """The WebContext of the app serving the current request (the one create_app was given)."""
    ctx = current_app.extensions[_EXTENSION]
    if not isinstance(ctx, WebContext):
        raise TypeError(f"app.extensions[{_EXTENSION!r}] is not a WebContext: build the app with create_app")
    return ctx


def create_app(context: WebContext, *, max_body_bytes: int = 65536) -> Flask:
    from web import admin, dashboard, health, media, relay, voice

    # No default /static: the dashboard serves its own files, only while it is on.
    app = Flask(__name__, static_folder=None)
    # web/limits.py bounds bodies before Flask; these keep Flask's own parsers in line too.
    app.config.update(MAX_CONTENT_LENGTH=max_body_bytes, MAX_FORM_MEMORY_SIZE=max_body_bytes, MAX_FORM_PARTS=200)
    # `//media/<sid>` must not route to the media view: only canonical paths route.
    app.url_map.merge_slashes = False
    app.extensions[_EXTENSION] = context
    app.register_blueprint(voice.bp)
    app.register_blueprint(media.bp)
    app.register_blueprint(relay.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(dashboard.bp)
    return app
