"""Twilio's HTTP side of an inbound call: the signed voice webhook, and the TwiML it follows.

Signatures are computed the way Twilio does (docs/twilio-signatures.md), with twilio's own
`RequestValidator`, over URLs built from the server's public URL.
"""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit
from xml.etree import ElementTree

__all__ = ["action_from_twiml", "post_form", "stream_from_twiml", "voice_params"]

_HTTP_TIMEOUT_S = 10.0


def voice_params(account_sid: str, call_sid: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The form fields of an inbound voice webhook (docs/twilio-signatures.md), plus `extra`."""
    return {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Called": "+15005550001",
        "Caller": "+15005550006",
        "Direction": "inbound",
        "From": "+15005550006",
        "FromCountry": "US",
        "To": "+15005550001",
        "ToCountry": "US",
        **(extra or {}),
    }


def post_form(
    server_url: str, public_host: str, path: str, params: Mapping[str, str], signature: str | None
) -> tuple[int, str, str]:
    """POST `params` form-encoded to `server_url` + `path`; returns (status, body, content type).

    Raises OSError or http.client.HTTPException when there is no answer.
    """
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "User-Agent": "TwilioProxy/1.1",
        # What a tunnel or proxy in front of the server passes on.
        "Host": public_host,
    }
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    target = urlsplit(server_url)
    connection_class = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(target.hostname or "127.0.0.1", target.port, timeout=_HTTP_TIMEOUT_S)
    try:
        connection.request("POST", target.path.rstrip("/") + path, body=urlencode(params), headers=headers)
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
    finally:
        connection.close()
    return response.status, body, response.getheader("Content-Type", "")


def stream_from_twiml(twiml: str, webhook_url: str) -> tuple[str, dict[str, str]] | None:
    """The `<Connect><Stream>` URL (as ws/wss) and its `<Parameter>`s, or None if there is none."""
    try:
        # The TwiML is the server under test's answer; ElementTree fetches no external entities
        # and expat >= 2.4.1 (this venv has 2.5.0) bounds entity expansion (billion laughs).
        root = ElementTree.fromstring(twiml)  # noqa: S314
    except ElementTree.ParseError:
        return None
    stream = root.find("./Connect/Stream")
    if root.tag != "Response" or stream is None or not stream.get("url"):
        return None
    # A relative url resolves against the webhook's; Twilio only speaks wss.
    parts = urlsplit(urljoin(webhook_url, stream.get("url", "")))
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    # Twilio drops a query string from the Stream URL (docs/twilio-media-streams.md).
    url = urlunsplit((scheme, parts.netloc, parts.path, "", ""))
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter") if p.get("name")}
    return url, parameters


def action_from_twiml(twiml: str, webhook_url: str) -> str | None:
    """The absolute `<Connect action>` URL of the TwiML, or None if it has none.

    Twilio requests it when the `<Connect>` ends (our side closed the stream, or it broke),
    and runs the TwiML it answers; a relative URL resolves against the webhook's.
    """
    try:
        root = ElementTree.fromstring(twiml)  # noqa: S314 - as in stream_from_twiml
    except ElementTree.ParseError:
        return None
    connect = root.find("./Connect")
    if root.tag != "Response" or connect is None or not connect.get("action"):
        return None
    return urljoin(webhook_url, connect.get("action", ""))
