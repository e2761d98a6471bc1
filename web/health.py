"""Health, readiness and metrics: what load balancers and Prometheus ask."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from web import context

__all__ = ["bp"]

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[str, int]:
    """The process is up and serving."""
    return "ok\n", 200


@bp.get("/readyz")
def readyz() -> tuple[str, int]:
    """Taking calls: not draining and under MAX_CALLS."""
    admission = context().admission
    reason = admission.refusal() if admission is not None else None
    if reason is not None:
        return f"not ready: {reason}\n", 503
    return "ready\n", 200


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format; behind METRICS_TOKEN when one is set."""
    ctx = context()
    token = ctx.metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
            return Response("unauthorized\n", status=401)
    # content_type, not mimetype: CONTENT_TYPE_LATEST already names its charset, and Flask
    # would append a second `; charset=utf-8` to a text/* mimetype.
    ctx.metrics.catch_up()
    return Response(generate_latest(ctx.metrics.registry), content_type=CONTENT_TYPE_LATEST)
