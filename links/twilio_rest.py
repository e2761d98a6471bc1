"""Outbound calls: create a call through Twilio's REST API that connects to the bridge.

The call is created with `Url=<PUBLIC_URL>/voice/incoming` (docs/twilio-outbound-calls.md):
when the callee answers, Twilio POSTs the signed voice webhook for the new CallSid
(`Direction=outbound-api`) and the bridge answers it with `<Connect><Stream>`, exactly as
it answers an inbound call. twilio-python does the HTTP; its exceptions, and those of the
HTTP library under it, never leave this module: they become `OutboundCallError`, whose
message names what to fix and never carries the auth token.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from settings import TWILIO_API_BASE_URL, Settings, _is_local_host

__all__ = ["OutboundCallError", "OutboundErrorKind", "PlacedCall", "TwilioDialer", "is_e164"]

# "+", a country code and at most 15 digits in all (what Twilio asks `To` and `From` to be).
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
# One REST request; the admin API's caller and `run.py dial` wait this long at most.
_TIMEOUT_S = 10.0


def is_e164(number: str) -> bool:
    return bool(_E164.fullmatch(number))


class OutboundErrorKind(enum.Enum):
    NOT_CONFIGURED = "not_configured"  # a setting outbound calls need is missing or unusable
    INVALID = "invalid"  # the number asked for (to, or from) is not an E.164 phone number
    REJECTED = "rejected"  # Twilio answered with an error (bad credentials, a number it refuses...)
    UNREACHABLE = "unreachable"  # no usable answer from Twilio: refused, timed out, unreadable

    @property
    def http_status(self) -> int:
        """What the admin API answers: our configuration 503, the request 400, Twilio 502."""
        return {"not_configured": 503, "invalid": 400}.get(self.value, 502)


class OutboundCallError(Exception):
    """The call was not placed; the message says why, on one line."""

    def __init__(
        self, kind: OutboundErrorKind, message: str, *, twilio_status: int | None = None,
        twilio_code: int | None = None,
    ) -> None:
        super().__init__(" ".join(message.split()))
        self.kind = kind
        self.twilio_status = twilio_status
        self.twilio_code = twilio_code

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"error": str(self), "kind": self.kind.value}
        if self.twilio_status is not None:
            body["twilio_status"] = self.twilio_status
        if self.twilio_code is not None:
            body["twilio_code"] = self.twilio_code
        return body


@dataclass(frozen=True, slots=True)
class PlacedCall:
    """The Call resource Twilio created: queued, not yet ringing."""

    call_sid: str
    status: str
    to: str
    from_: str

    def to_json(self) -> dict[str, str]:
        return {"call_sid": self.call_sid, "status": self.status, "to": self.to, "from": self.from_}


class _BaseUrlHttpClient(TwilioHttpClient):  # type: ignore[misc]  # twilio ships no types
    """twilio-python's HTTP client, sending to `base_url` instead of https://api.twilio.com.

    The library builds absolute URLs on its own hosts; this keeps their path and query and
    swaps the scheme and host. It also logs nothing: the library would log every request's
    URL and headers at INFO (never the Authorization header, but nothing of it is needed).
    """

    def __init__(self, base_url: str, timeout_s: float) -> None:
        super().__init__(pool_connections=True, timeout=timeout_s)
        self._base_url = base_url.rstrip("/")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(url)
        target = self._base_url + parts.path + (f"?{parts.query}" if parts.query else "")
        return super().request(method, target, *args, **kwargs)

    def log_request(self, kwargs: dict[str, Any]) -> None:
        pass

    def log_response(self, status_code: int, response: Any) -> None:
        pass

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


@dataclass(frozen=True, kw_only=True)
class TwilioDialer:
    """Places outbound calls whose TwiML comes from the bridge's own /voice/incoming."""

    account_sid: str | None
    auth_token: str | None = field(repr=False)  # None: unusable (a generated development token)
    from_number: str | None
    public_url: str
    api_base_url: str = TWILIO_API_BASE_URL
    timeout_s: float = _TIMEOUT_S

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioDialer:
        twilio = settings.twilio
        return cls(
            account_sid=twilio.account_sid,
            auth_token=None if twilio.auth_token_generated else twilio.auth_token,
            from_number=twilio.from_number,
            public_url=settings.public_url,
            api_base_url=twilio.api_base_url,
        )

    @property
    def voice_url(self) -> str:
        """The URL Twilio asks for the call's TwiML once the callee answers."""
        return f"{self.public_url.rstrip('/')}/voice/incoming"

    def problems(self, *, from_given: bool = False) -> list[str]:
        """What keeps calls from being placed, one phrase per setting; empty when ready."""
        found: list[str] = []
        if not self.account_sid:
            found.append("TWILIO_ACCOUNT_SID is unset")
        elif not _ACCOUNT_SID.fullmatch(self.account_sid):
            found.append("TWILIO_ACCOUNT_SID is not an account SID (AC and 32 hex digits)")
        if not self.auth_token:
            found.append("TWILIO_AUTH_TOKEN is unset (a generated development token cannot authenticate to Twilio)")
        if not self.from_number and not from_given:
            found.append("TWILIO_FROM_NUMBER is unset (and the request names no from number)")
        public_host = urlsplit(self.public_url).hostname or ""
        api_host = urlsplit(self.api_base_url).hostname or ""
        if _is_local_host(public_host) and not _is_local_host(api_host):
            found.append(f"PUBLIC_URL {self.public_url} is a loopback or private address that Twilio cannot reach")
        return found

    def place(self, to: str, from_: str | None = None) -> PlacedCall:
        """Create the call; raises OutboundCallError. Blocks (cooperatively) for one REST request."""
        problems = self.problems(from_given=from_ is not None)
        if problems:
            raise OutboundCallError(
                OutboundErrorKind.NOT_CONFIGURED, "outbound calls are not configured: " + "; ".join(problems)
            )
        if not is_e164(to):
            raise OutboundCallError(
                OutboundErrorKind.INVALID, f"to={to[:40]!r} is not a phone number in E.164 form, like +15551234567"
            )
        caller_id = from_ if from_ is not None else self.from_number
        if caller_id is None or not is_e164(caller_id):
            raise OutboundCallError(
                OutboundErrorKind.INVALID,
                f"from={str(caller_id)[:40]!r} is not a phone number in E.164 form, like +15551234567",
            )
        return self._create(to, caller_id)

    def _create(self, to: str, caller_id: str) -> PlacedCall:
        http = _BaseUrlHttpClient(self.api_base_url, self.timeout_s)
        client = Client(
            username=self.account_sid,
            password=self.auth_token,
            account_sid=self.account_sid,
            http_client=http,
            # Not the process environment: only settings.py reads it (TWILIO_EDGE/REGION would move the host).
            environment={"TWILIO_ACCOUNT_SID": self.account_sid or ""},
        )
        try:
            call = client.api.v2010.accounts(self.account_sid).calls.create(
                to=to, from_=caller_id, url=self.voice_url, method="POST"
            )
            sid, status = str(call.sid or ""), str(call.status or "")
        except TwilioException as exc:
            raise _rejected(exc) from None
        except requests.Timeout:
            raise OutboundCallError(
                OutboundErrorKind.UNREACHABLE, f"Twilio did not answer within {self.timeout_s:g} s"
            ) from None
        except (requests.RequestException, OSError) as exc:
            raise OutboundCallError(
                OutboundErrorKind.UNREACHABLE, f"Twilio is unreachable at {self.api_base_url} ({type(exc).__name__})"
            ) from None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise OutboundCallError(OutboundErrorKind.UNREACHABLE, "Twilio's answer could not be read") from None
        finally:
            http.close()
        if not _CALL_SID.fullmatch(sid):
            raise OutboundCallError(OutboundErrorKind.UNREACHABLE, f"Twilio's answer has no call SID ({sid[:40]!r})")
        return PlacedCall(call_sid=sid, status=status or "queued", to=to, from_=caller_id)


def _rejected(exc: TwilioException) -> OutboundCallError:
    """Twilio's error answer, with its HTTP status, error code and message (docs/twilio-outbound-calls.md)."""
    status = getattr(exc, "status", None)
    code = getattr(exc, "code", None)
    message = getattr(exc, "msg", None) or getattr(exc, "detail", None) or getattr(exc, "title", None) or ""
    status = status if isinstance(status, int) else None
    code = code if isinstance(code, int) else None
    text = f"Twilio refused the call (HTTP {status}, error {code})" if status else "Twilio refused the call"
    if message:
        text += f": {str(message)[:300]}"
    return OutboundCallError(OutboundErrorKind.REJECTED, text, twilio_status=status, twilio_code=code)
