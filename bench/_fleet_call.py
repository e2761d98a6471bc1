"""One phone call of the fleet soak, as Twilio would carry it through nginx.

The simulated Twilio posts the voice webhook, opens the `<Connect><Stream>` and speaks
the caller's script in real time. When the stream ends before the caller hangs up (the
bridge closed it, or it broke: a send failing before the close was read is the same to
Twilio), Twilio fetches the `<Connect action>` URL (signed, through nginx) and does what
the TwiML says: a new `<Connect><Stream>` is a resume (same CallSid, new StreamSid; the
caller goes on with the script), `<Hangup/>` ends the call, anything else (the fallback's
`<Say>`) is what the caller hears instead of the assistant.

A resume's silence is the time from the old stream's close to the new stream's `start`:
the caller's audio reaches nobody, and nothing can reach the caller, in between.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import gevent

from sims.caller import CallerConfig, CallerError, SimulatedCaller
from sims.report import ANSWER_TIMEOUT_S
from sims.script import CallerScript, is_utterance
from sims.webhook import action_from_twiml

__all__ = ["PhoneCall", "Resume", "drive_phone_call"]

# Twilio's own bound would be far larger; this only keeps a broken bridge from looping a call.
_MAX_LEGS = 20


class _CallTimeout(Exception):
    pass


@dataclass(frozen=True, kw_only=True)
class Resume:
    """The stream closed under a live call and Twilio's action URL got a new <Stream>."""

    silence_s: float  # old stream closed -> new stream's `start` sent
    close_code: int | None  # how the old stream ended (None: dropped without a close frame)


@dataclass(frozen=True, kw_only=True)
class PhoneCall:
    """What the caller lived through, from the webhook to the end of its last stream."""

    call_sid: str
    connected: bool  # a stream started
    # hung-up: the caller's `stop` ended it; hangup: the action URL said <Hangup/> first;
    # fallback: the action URL played the fallback; refused: the webhook played it;
    # failed: a step failed (the detail says which).
    ended: str
    detail: str
    resumes: tuple[Resume, ...]
    stream_s: float  # time on a stream, every leg together
    utterances_judged: int  # utterances followed by ANSWER_TIMEOUT_S of stream, or answered
    unanswered: int  # of those, how many no assistant audio followed
    audio_stopped: bool  # the call's last two judged utterances both went unanswered
    ended_at: float  # unix time


def _leg(public_url: str, auth_token: str, call_sid: str) -> SimulatedCaller:
    return SimulatedCaller(CallerConfig(server_url=public_url, public_url=public_url,
                                        auth_token=auth_token, call_sid=call_sid))


def _action_path(twiml: str, public_url: str) -> str | None:
    """The path (and query) of the TwiML's `<Connect action>`, which Twilio requests when the stream ends."""
    action = action_from_twiml(twiml, public_url.rstrip("/") + "/voice/incoming")
    if action is None:
        return None
    parts = urlsplit(action)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _judge(utterance_ends: list[float], arrivals: list[float], leg_end: float) -> list[bool]:
    """Per utterance of one leg with time to be answered: whether assistant audio came after it."""
    judged = []
    for index, end in enumerate(utterance_ends):
        until = min(end + ANSWER_TIMEOUT_S, utterance_ends[index + 1] + ANSWER_TIMEOUT_S
                    if index + 1 < len(utterance_ends) else leg_end)
        answered = any(end < t <= until for t in arrivals)
        if answered or leg_end - end >= ANSWER_TIMEOUT_S:
            judged.append(answered)
    return judged


def drive_phone_call(public_url: str, auth_token: str, script: CallerScript, timeout_s: float) -> PhoneCall:
    """Place one call through `public_url` and carry it to its end. Never raises CallerError."""
    call_sid = "CA" + uuid.uuid4().hex
    segments = list(script.render())
    position = 0
    resumes: list[Resume] = []
    answers: list[bool] = []
    connected = False
    ended, detail = "failed", ""
    stream_s = 0.0
    leg = _leg(public_url, auth_token, call_sid)
    closed_at: float | None = None
    close_code: int | None = None
    utterance_ends: list[float] = []
    leg_started, leg_open = 0.0, False
    try:
        with gevent.Timeout(timeout_s, _CallTimeout):
            status, twiml = leg.post_webhook()
            if status != 200:
                return _done(call_sid, False, "failed", f"webhook answered HTTP {status}", (), 0.0, [])
            if leg.stream_url is None:
                return _done(call_sid, False, "refused", twiml[:120], (), 0.0, [])
            action = _action_path(twiml, public_url)
            for _ in range(_MAX_LEGS):
                leg.connect()
                leg.start_stream()
                connected, leg_started, leg_open, utterance_ends = True, time.monotonic(), True, []
                if closed_at is not None:
                    resumes.append(Resume(silence_s=leg_started - closed_at, close_code=close_code))
                try:
                    while position < len(segments):
                        segment, pcm = segments[position]
                        leg.send_audio(pcm)
                        position += 1
                        if is_utterance(segment):
                            utterance_ends.append(time.monotonic())
                    leg.send_stop()
                    ended, detail = "hung-up", ""
                    break
                except CallerError:
                    pass
                # The stream ended under a live call (closed by the bridge, or broken: a send
                # failing before the close was read is the same to Twilio): it fetches the action URL.
                closed_at, close_code = time.monotonic(), leg.close_code
                position += 1  # what the caller said into the break is not said again
                stream_s += closed_at - leg_started
                answers += _judge(utterance_ends, [t for t, _ in leg.media_events], closed_at)
                leg.close()
                leg, leg_open = _leg(public_url, auth_token, call_sid), False
                if action is None:
                    ended, detail = "failed", "the stream ended and its <Connect> has no action URL"
                    break
                status, twiml = leg.post_webhook(action, extra_params={"CallStatus": "in-progress"})
                if status != 200:
                    ended, detail = "failed", f"action URL answered HTTP {status}"
                    break
                if leg.stream_url is None:
                    ended = "hangup" if "<Hangup" in twiml else "fallback"
                    detail = twiml[:120]
                    break
                action = _action_path(twiml, public_url)
            else:
                ended, detail = "failed", f"more than {_MAX_LEGS} streams"
    except _CallTimeout:
        ended, detail = "failed", f"call did not finish within {timeout_s:g} s"
    except CallerError as exc:
        ended, detail = "failed", str(exc)
    finally:
        now = time.monotonic()
        if leg_open:
            stream_s += now - leg_started
            answers += _judge(utterance_ends, [t for t, _ in leg.media_events], now)
        leg.close()
    return _done(call_sid, connected, ended, detail, tuple(resumes), stream_s, answers)


def _done(
    call_sid: str, connected: bool, ended: str, detail: str, resumes: tuple[Resume, ...], stream_s: float,
    answers: list[bool],
) -> PhoneCall:
    return PhoneCall(
        call_sid=call_sid, connected=connected, ended=ended, detail=detail, resumes=resumes, stream_s=stream_s,
        utterances_judged=len(answers), unanswered=answers.count(False),
        audio_stopped=len(answers) >= 2 and not answers[-1] and not answers[-2], ended_at=time.time(),
    )
