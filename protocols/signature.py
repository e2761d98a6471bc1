"""X-Twilio-Signature checks for voice webhooks and the media-stream websocket upgrade.

A thin wrapper over twilio's `RequestValidator`, which implements the HMAC-SHA1 algorithm and
already tries the URL both with and without its port.
Protocol facts: docs/twilio-signatures.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final
from urllib.parse import parse_qs, urlsplit

from twilio.request_validator import RequestValidator

__all__ = ["SignatureValidator"]

_NO_PARAMS: Final[Mapping[str, str]] = {}


class _ValueLists(dict[str, list[str]]):
    """A name → values dict that `RequestValidator` reads through `getlist`, like a QueryDict.

    `RequestValidator` indexes a plain dict and expects a single string per name, so a plain
    mapping of lists must be wrapped before it goes in.
    """

    def getlist(self, name: str) -> list[str]:
        return self[name]


class SignatureValidator:
    """Checks and computes `X-Twilio-Signature` values with the account's primary Auth Token.

    Holds only the validator; `repr()` never shows the token.
    """

    __slots__ = ("_validator",)

    def __init__(self, auth_token: str) -> None:
        if not auth_token:
            # An empty key would make every signature trivially forgeable.
            raise ValueError("auth_token must not be empty")
        self._validator = RequestValidator(auth_token)

    def validate_webhook(
        self,
        url: str,
        params: Mapping[str, Sequence[str]] | Mapping[str, str],
        signature: str | None,
    ) -> bool:
        """Check a form-encoded webhook request (POST body params, or `{}` for a GET).

        Args:
            url: the full URL Twilio requested, including any query string, as configured on
                the number (use the public URL, not what a proxy forwarded).
            params: the POST fields. A werkzeug `MultiDict`/`ImmutableMultiDict` (Flask's
                `request.form`) or a plain mapping of strings or of string sequences.
            signature: the `X-Twilio-Signature` header; missing or empty fails.
        """
        if not signature:
            return False
        return bool(self._validator.validate(url, _value_lists(params), signature))

    def validate_json_webhook(self, url: str, body: str | bytes, signature: str | None) -> bool:
        """Check a JSON-body webhook: the URL carries `bodySHA256`, and the body must hash to it.

        Voice webhooks are form-encoded; this exists for products that post JSON (SEC). Fails
        when the URL has no `bodySHA256` query parameter or a bytes body is not UTF-8.
        """
        if not signature or "bodySHA256" not in parse_qs(urlsplit(url).query):
            return False
        if isinstance(body, bytes):
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError:
                return False
        # RequestValidator switches to body-hash mode when params is the raw body string.
        return bool(self._validator.validate(url, body, signature))

    def validate_websocket(self, wss_url: str, signature: str | None) -> bool:
        """Check the media-stream websocket upgrade (a GET with no body).

        `wss_url` must be the `wss://` URL exactly as written in the TwiML `<Stream url>`. Twilio's
        docs advise retrying with a trailing `/` when the plain URL does not validate.
        """
        if not signature:
            return False
        if self._validator.validate(wss_url, _NO_PARAMS, signature):
            return True
        return not wss_url.endswith("/") and bool(
            self._validator.validate(wss_url + "/", _NO_PARAMS, signature)
        )

    def sign(self, url: str, params: Mapping[str, str]) -> str:
        """Compute the signature Twilio would send for `url` and `params` (simulators, tests)."""
        return str(self._validator.compute_signature(url, _value_lists(params)))


def _value_lists(params: Mapping[str, Sequence[str]] | Mapping[str, str]) -> object:
    # MultiDicts (werkzeug: getlist; webob/multidict: getall) are what RequestValidator expects.
    if hasattr(params, "getlist") or hasattr(params, "getall"):
        return params
    return _ValueLists(
        (name, [value] if isinstance(value, str) else list(value)) for name, value in params.items()
    )
