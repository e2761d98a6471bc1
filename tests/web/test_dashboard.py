"""The dashboard's files over real HTTP: off without an admin token, locked down with one."""

from __future__ import annotations

import pytest
import requests

TOKEN = "admin-secret-token"
with_token = pytest.mark.parametrize("server_env", [{"ADMIN_TOKEN": TOKEN}])


def get(bridge, path, **kw):
    return requests.get(f"http://127.0.0.1:{bridge.port}{path}", timeout=5, **kw)


def test_the_dashboard_is_off_without_an_admin_token(bridge):
    for path in ("/dashboard", "/dashboard/static/dashboard.js", "/dashboard/faults"):
        assert get(bridge, path).status_code == 404, path


@with_token
def test_the_dashboard_page_is_served_without_asking_for_the_token(bridge):
    # The page itself holds nothing secret: its script asks for the token and sends it
    # to the admin API, which is what checks it.
    response = get(bridge, "/dashboard")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert 'src="/dashboard/static/dashboard.js"' in response.text
    assert 'href="/dashboard/static/dashboard.css"' in response.text
    assert response.headers["Cache-Control"] == "no-store"


@with_token
def test_the_dashboard_allows_only_same_origin_scripts_styles_and_fetches(bridge):
    for path in ("/dashboard", "/dashboard/static/dashboard.js", "/dashboard/static/dashboard.css"):
        response = get(bridge, path)
        policy = dict(
            directive.strip().split(" ", 1) for directive in response.headers["Content-Security-Policy"].split(";")
        )
        assert policy["default-src"] == "'none'", path
        assert policy["script-src"] == "'self'", path
        assert policy["style-src"] == "'self'", path
        assert policy["connect-src"] == "'self'", path
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@with_token
def test_the_page_has_no_inline_script_or_style_and_loads_nothing_from_elsewhere(bridge):
    html = get(bridge, "/dashboard").text
    assert "<script>" not in html and "<style" not in html and "style=" not in html
    assert "onclick=" not in html and "onload=" not in html
    assert "http://" not in html and "https://" not in html


@with_token
def test_the_script_never_writes_markup_from_strings(bridge):
    script = get(bridge, "/dashboard/static/dashboard.js").text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "new EventSource" not in script  # it cannot send the token in a header


@with_token
def test_the_static_assets_are_served_with_their_types(bridge):
    script = get(bridge, "/dashboard/static/dashboard.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["Content-Type"]
    style = get(bridge, "/dashboard/static/dashboard.css")
    assert style.status_code == 200
    assert style.headers["Content-Type"].startswith("text/css")


@with_token
def test_only_the_dashboards_own_files_are_served(bridge):
    assert get(bridge, "/dashboard/static/dashboard.html").status_code == 404
    assert get(bridge, "/dashboard/static/../dashboard.py").status_code == 404
    assert get(bridge, "/dashboard/static/missing.js").status_code == 404


@with_token
def test_the_fault_list_matches_what_the_admin_api_accepts(bridge):
    from chaos.faults import check_fault

    pairs = get(bridge, "/dashboard/faults").json()["pairs"]
    assert ["vad", "raise"] in pairs and ["vapi", "sever"] in pairs
    assert ["codec", "sever"] not in pairs
    assert all(check_fault(actor, fault) is None for actor, fault in pairs)
    assert {actor for actor, _ in pairs} == {"twilio", "vapi", "codec", "vad", "supervisor"}
