"""The HTTP and WebSocket surface: Twilio's webhooks and media sockets.

`create_app` builds the Flask app from objects made in run.py; there is no module-level
app. Blueprints: voice (TwiML webhooks), media (Twilio's media socket), health.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask

from actors.registry import CallRegistry
from observability.metrics import Metrics
from observability.ratelimit import LogLimiter
from protocols.signature import SignatureValidator
from settings import FallbackSettings
from links.twilio import SocketLimits

__all__ = ["WebContext", "create_app"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WebContext:
    """What the views need, stored on the app as app.extensions['bridge']."""

    public_url: str
    validator: SignatureValidator
    calls: CallRegistry
    metrics: Metrics
    fallback: FallbackSettings
    log: Any
    log_limiter: LogLimiter  # for what a client can make us log as fast as it sends
    socket_limits: SocketLimits
    media_start_timeout_s: float
    admission: Any = None  # web.admission.Admission
    admin_token: str | None = None
    metrics_token: str | None = None
    records: Any = None  # records.RecordStore, when call records are kept


def create_app(context: WebContext, *, max_body_bytes: int = 65536) -> Flask:
    from web import admin, dashboard, health, media, voice

    # No default /static: the dashboard serves its own files, only while it is on.
    app = Flask(__name__, static_folder=None)
    # web/limits.py bounds bodies before Flask; these keep Flask's own parsers in line too.
    app.config.update(MAX_CONTENT_LENGTH=max_body_bytes, MAX_FORM_MEMORY_SIZE=max_body_bytes, MAX_FORM_PARTS=200)
    # `//media/<sid>` must not route to the media view: only canonical paths route.
    app.url_map.merge_slashes = False
    app.extensions["bridge"] = context
    app.register_blueprint(voice.bp)
    app.register_blueprint(media.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(dashboard.bp)
    return app
