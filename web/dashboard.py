"""The operator dashboard at /dashboard: a static page that reads the admin API.

The page holds no call data of its own: its script asks for the admin token, then reads
/admin/stream (and posts chaos to /admin/calls/<sid>/chaos) with it. So this blueprint only
serves the page's files and the fault vocabulary, and is off (404) exactly when the admin
API is, without ADMIN_TOKEN.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, jsonify, send_from_directory

from chaos.faults import applicable_pairs
from web import context

__all__ = ["CONTENT_SECURITY_POLICY", "bp"]

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")

_STATIC_DIR = Path(__file__).parent / "static"
# Only the dashboard's own files: web/static may hold other pages' files later.
_ASSETS = frozenset({"dashboard.js", "dashboard.css"})

# Same-origin scripts, styles and fetches only, and nothing inline: the page shows text
# from callers' metadata and from the server, so an injected <script> or style must not
# run even if an escaping bug let one into the DOM. `data:` images only for the empty
# favicon, which spares a 404 per load.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


@bp.before_request
def _only_with_an_admin_token() -> None:
    # Off means absent, as for the admin API: a 404, not a login page.
    if not context().admin_token:
        abort(404)


@bp.after_request
def _harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("")
def page() -> Response:
    """The dashboard's HTML; it loads its script and stylesheet from /dashboard/static/."""
    response = send_from_directory(_STATIC_DIR, "dashboard.html", max_age=0)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/static/<name>")
def asset(name: str) -> Response:
    """The page's script and stylesheet, revalidated on every load (a deploy shows at once)."""
    if name not in _ASSETS:
        abort(404)
    return send_from_directory(_STATIC_DIR, name, max_age=0)


@bp.get("/faults")
def faults() -> Response:
    """Which fault goes into which actor, so the page's chaos buttons follow chaos/faults.py.

    Not secret (it is the code's vocabulary), so it needs no bearer token: the page can
    draw its buttons before the token is entered.
    """
    return jsonify({"pairs": [list(pair) for pair in applicable_pairs()]})
