"""Health, readiness and metrics: what load balancers and Prometheus ask."""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["bp"]

bp = Blueprint("health", __name__)


def _context() -> Any:
    return current_app.extensions["bridge"]


@bp.get("/healthz")
def healthz() -> tuple[str, int]:
    """The process is up and serving."""
    return "ok\n", 200


@bp.get("/readyz")
def readyz() -> tuple[str, int]:
    """Taking calls: not draining and under MAX_CALLS."""
    reason = _context().admission.refusal()
    if reason is not None:
        return f"not ready: {reason}\n", 503
    return "ready\n", 200


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format; behind METRICS_TOKEN when one is set."""
    ctx = _context()
    if ctx.metrics_token:
        given = request.headers.get("Authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), ctx.metrics_token.encode())):
            return Response("unauthorized\n", status=401)
    return Response(generate_latest(ctx.metrics.registry), mimetype=CONTENT_TYPE_LATEST)
