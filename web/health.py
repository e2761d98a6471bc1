"""Liveness for process supervisors and load balancers."""

from __future__ import annotations

from flask import Blueprint

__all__ = ["bp"]

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[str, int]:
    """The process is up and serving."""
    return "ok\n", 200
