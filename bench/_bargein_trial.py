"""One barge-in trial: a simulated caller on a call through the real server, and what it measured.

The caller's microphone is mixed frame by frame as each frame goes out (`SimulatedCaller.
send_live`): its own speech at the condition's level, the room (pink noise, a TV, babble)
and the echo of the assistant, made from what this caller actually heard on its play-out
clock (`TwilioPlayback.heard`: what Twilio played, less what a `clear` dropped), delayed,
attenuated and band-limited. Echo is therefore there only while the assistant is heard,
at whatever pace its audio arrives, and stops when a `clear` stops the playback.

Times are the caller's stream time (ms): the frame with media timestamp T holds what the
microphone picked up in [T, T+20); a `clear` arriving at monotonic time m is at stream time
T_k + 20 + (m - due_k) for the last frame k sent before m.
"""

from __future__ import annotations

import bisect
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
import gevent.lock
import gevent.queue
import numpy as np
from numpy.typing import NDArray

from audio.mulaw import ulaw_to_pcm16
from bench._bargein_audio import FRAME, RATE_HZ, BandPass, Corpus, at_level
from sims.caller import CallerConfig, CallerError, SimulatedCaller
from sims.vapi_call import AssistantTurn, SimCall

__all__ = ["Condition", "TrialPlan", "TrialResult", "plan_trial", "run_trial"]

TIMINGS = ("first-frame", "before", "during", "after", "silent")
ASSISTANT_DBFS = -20.0  # a TTS voice as VAPI sends it, active level
ECHO_DELAY_MS = (40, 300)
# "during": the caller starts this long after the assistant's audio began to play.
_DURING_OFFSET_S = (0.6, 2.5)
# "before": the assistant's turn begins this long after the call's media starts.
_BEFORE_PAUSE_S = 1.0
# "after": the caller starts this long after the assistant's turn has played out.
_AFTER_GAP_S = 0.8
# A clear this long after the reference still counts as the barge-in (a late one).
DETECT_WINDOW_MS = 3000.0
# How long a trial listens on after its reference (onset, or the assistant's first audio).
_LISTEN_S = 3.2
# Once the barge-in's clear has come, the call goes on this long (the echo of the cut, say).
_AFTER_CLEAR_S = 0.3
_CHUNK_FRAMES = 5  # send_live between checks of the trial's progress
_SETUP_TIMEOUT_S = 10.0
_FIRST_AUDIO_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Condition:
    """One cell of the matrix. `background`: "none" or "+"-joined parts like "pink-45", "tv-38", "babble-40"."""

    timing: str
    pace: str  # "burst" | "realtime"
    level_dbfs: float | None  # the caller's active speech level; None for a silent caller
    echo_db: float | None  # echo return: the played audio this many dB down; None for none
    background: str = "none"
    silent_s: float = 0.0  # silent calls: seconds of assistant speech per call

    @property
    def label(self) -> str:
        level = "silent" if self.level_dbfs is None else f"{self.level_dbfs:g} dBFS"
        echo = "no echo" if self.echo_db is None else f"echo {self.echo_db:g} dB"
        return f"{self.timing}, {self.pace}, {level}, {echo}, {self.background}"


@dataclass(frozen=True)
class TrialPlan:
    """Everything random about a trial, drawn from the run's seed, so two servers get the same trials."""

    condition: Condition
    index: int
    caller_clip: int
    assistant_turns: tuple[tuple[int, float, float], ...]  # (assistant line, pause before it s, its length s)
    echo_delay_ms: float
    during_offset_s: float
    room_offset: int  # where in the room loops this call's background starts


@dataclass
class TrialResult:
    plan: TrialPlan
    error: str | None = None
    reference_ms: float | None = None  # caller onset, or the assistant's first audio if later
    onset_ms: float | None = None
    first_audio_ms: float | None = None
    clears_ms: list[float] = field(default_factory=list)
    assistant_s: float = 0.0  # assistant speech the caller was silent through (false barge-in exposure)
    send_lag_ms: float = 0.0  # worst lateness of a frame against the caller's paced clock
    stream_s: float = 0.0  # media the caller sent
    call_sid: str = ""  # the Twilio call SID the server logs it under

    @property
    def latency_ms(self) -> float | None:
        """Reference -> the first clear after it, within the detection window; None if none came."""
        if self.reference_ms is None or self.plan.condition.timing in ("after", "silent"):
            return None
        for at in self.clears_ms:
            if at >= self.reference_ms:
                return at - self.reference_ms if at - self.reference_ms <= DETECT_WINDOW_MS else None
        return None

    @property
    def false_clears(self) -> int:
        """Clears while the caller had said nothing (echo, noise or the TV taken for the caller)."""
        if self.plan.condition.timing == "silent":
            return len(self.clears_ms)
        if self.plan.condition.timing in ("during", "after") and self.onset_ms is not None:
            return sum(1 for at in self.clears_ms if at < self.onset_ms)
        return 0

    @property
    def clears_after_turn(self) -> int:
        """'after' trials: clears once the caller spoke after the turn (nothing was playing)."""
        if self.plan.condition.timing != "after" or self.onset_ms is None:
            return 0
        return sum(1 for at in self.clears_ms if at >= self.onset_ms)


def plan_trial(condition: Condition, index: int, corpus: Corpus, rng: random.Random) -> TrialPlan:
    lines = len(corpus.assistant_8k)
    if condition.timing == "silent":
        turns: list[tuple[int, float, float]] = []
        total = 0.0
        while total < condition.silent_s - 0.5:
            line = rng.randrange(lines)
            # The last turn is cut short to make the call's length (at the end of a word or not).
            seconds = min(corpus.assistant_8k[line].size / RATE_HZ, condition.silent_s - total)
            turns.append((line, 0.0 if not turns else rng.uniform(0.8, 2.0), seconds))
            total += seconds
    else:
        pause = _BEFORE_PAUSE_S if condition.timing == "before" else 0.0
        line = rng.randrange(lines)
        turns = [(line, pause, corpus.assistant_8k[line].size / RATE_HZ)]
    return TrialPlan(
        condition=condition,
        index=index,
        caller_clip=rng.randrange(len(corpus.caller)),
        assistant_turns=tuple(turns),
        echo_delay_ms=rng.uniform(*ECHO_DELAY_MS),
        during_offset_s=rng.uniform(*_DURING_OFFSET_S),
        room_offset=rng.randrange(corpus.pink.size),
    )


class _Pairing:
    """Hands each new VAPI call to the trial whose webhook created it (one set-up at a time).

    The bridge's request to VAPI carries nothing of the Twilio call, so the bench sets calls
    up one after another and takes the next VAPI call created as this caller's.
    """

    def __init__(self) -> None:
        self._lock = gevent.lock.Semaphore()
        self._configure: Callable[[SimCall], None] | None = None
        self._created: gevent.queue.Queue[SimCall] = gevent.queue.Queue()

    def on_call(self, call: SimCall) -> None:
        """The simulator's hook: runs before the call's socket opens."""
        configure, self._configure = self._configure, None
        if configure is not None:
            configure(call)
            self._created.put(call)

    def set_up(self, caller: SimulatedCaller, configure: Callable[[SimCall], None]) -> SimCall:
        """Webhook, socket and `start` for `caller`; returns the VAPI call the server made for it."""
        with self._lock:
            self._configure = configure
            try:
                status, _ = caller.post_webhook()
                if status != 200 or caller.stream_url is None:
                    raise CallerError(f"webhook answered HTTP {status} without a <Stream>")
                caller.connect()
                caller.start_stream()
                try:
                    return self._created.get(timeout=_SETUP_TIMEOUT_S)
                except gevent.queue.Empty:
                    raise CallerError("the server created no VAPI call") from None
            finally:
                self._configure = None


PAIRING = _Pairing()


class _Mic:
    """What the caller's phone sends, one 20 ms frame at a time (see the module docstring)."""

    def __init__(self, plan: TrialPlan, corpus: Corpus, caller: SimulatedCaller, frames: int) -> None:
        condition = plan.condition
        self.caller = caller
        self.n = 0  # samples sent so far
        self.speech: NDArray[np.float64] | None = None
        if condition.level_dbfs is not None:
            self.speech = at_level(corpus.caller[plan.caller_clip], condition.level_dbfs)
        self.onset: int | None = None  # sample where the caller's speech begins
        self.echo_gain = 0.0 if condition.echo_db is None else 10.0 ** (condition.echo_db / 20.0)
        self.echo_delay_s = plan.echo_delay_ms / 1000.0
        self.echo_filter = BandPass()
        self.room = _room(condition.background, corpus, plan.room_offset, frames * FRAME)
        self.worst_lag_s = 0.0

    def frame(self, due: float) -> NDArray[np.int16]:
        self.worst_lag_s = max(self.worst_lag_s, time.monotonic() - due)
        start, self.n = self.n, self.n + FRAME
        out = self.room[start : start + FRAME].copy()
        if self.echo_gain:
            # The filter delays by its own half-length: ask for that much later audio.
            heard = self.caller.playback.heard(due - 0.020 - self.echo_delay_s + BandPass.delay_s, FRAME)
            out += self.echo_gain * self.echo_filter(ulaw_to_pcm16(heard).astype(np.float64))
        if self.speech is not None and self.onset is not None:
            lo, hi = max(start, self.onset), start + FRAME
            if lo < hi and lo - self.onset < self.speech.size:
                piece = self.speech[lo - self.onset : hi - self.onset]
                out[lo - start : lo - start + piece.size] += piece
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)

    def sample_at(self, monotonic: float, due: float) -> int:
        """The stream sample a monotonic time falls on, seen from the frame due at `due` (just sent)."""
        return self.n + round((monotonic - due) * RATE_HZ)


def _room(background: str, corpus: Corpus, offset: int, length: int) -> NDArray[np.float64]:
    out = np.zeros(length)
    if background == "none":
        return out
    for part in background.split("+"):
        kind, level = part.rsplit("-", 1)
        loop = {"pink": corpus.pink, "tv": corpus.tv, "babble": corpus.babble}[kind]
        index = (offset + np.arange(length)) % loop.size
        out += loop[index] * 10.0 ** (-float(level) / 20.0)
    return out


def run_trial(server_url: str, auth_token: str, plan: TrialPlan, corpus: Corpus) -> TrialResult:
    """Place the call, play the condition out, and measure; never raises for a failed call."""
    result = TrialResult(plan=plan)
    condition = plan.condition
    caller = SimulatedCaller(CallerConfig(server_url=server_url, public_url=server_url, auth_token=auth_token))
    result.call_sid = caller.call_sid
    assistant_s = sum(seconds for _, _, seconds in plan.assistant_turns)
    pauses_s = sum(pause for _, pause, _ in plan.assistant_turns)
    frames = round((assistant_s + pauses_s + _LISTEN_S + 4.0) / 0.020) + _CHUNK_FRAMES

    def configure(call: SimCall) -> None:
        turns = corpus.assistant_16k if call.sample_rate == 16000 else corpus.assistant_8k
        call.turns = [
            AssistantTurn(pcm=_cut(at_level(turns[line], ASSISTANT_DBFS), seconds, call.sample_rate), pause_s=pause)
            for line, pause, seconds in plan.assistant_turns
        ]
        call.send_realtime = condition.pace == "realtime"

    mic = _Mic(plan, corpus, caller, frames)
    try:
        with gevent.Timeout(assistant_s + pauses_s + 40.0, CallerError("trial timed out")):
            sim_call = PAIRING.set_up(caller, configure)
            if condition.timing in ("first-frame", "before"):
                mic.onset = 0
            _play(caller, mic, plan, assistant_s, frames)
            caller.send_stop()
    except CallerError as exc:
        result.error = str(exc)
        sim_call = None
    finally:
        caller.close()
    _measure(result, caller, mic, sim_call)
    return result


def _cut(samples: NDArray[np.float64], seconds: float, rate_hz: int) -> NDArray[np.int16]:
    """The first `seconds` of a turn as int16, faded out over 20 ms if cut short (no click)."""
    keep = min(samples.size, round(seconds * rate_hz))
    out = samples[:keep].copy()
    if keep < samples.size:
        fade = min(keep, rate_hz // 50)
        out[keep - fade :] *= np.linspace(1.0, 0.0, fade)
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def _play(caller: SimulatedCaller, mic: _Mic, plan: TrialPlan, assistant_s: float, frames: int) -> None:
    """Send frames until the trial has seen what it came for."""
    timing = plan.condition.timing
    played = caller.playback.played
    pauses_s = sum(pause for _, pause, _ in plan.assistant_turns)
    first_audio_deadline = time.monotonic() + _FIRST_AUDIO_TIMEOUT_S + pauses_s
    listen_until: float | None = None  # monotonic
    reference_at: float | None = None  # monotonic: a clear from here on is the barge-in sought
    sent = 0
    while sent < frames:
        caller.send_live(_CHUNK_FRAMES, mic.frame)
        sent += _CHUNK_FRAMES
        due = caller.frame_clock[-1][0]
        if not played:
            if time.monotonic() > first_audio_deadline:
                raise CallerError("no assistant audio reached the caller")
            continue
        first = played[0][0]
        if timing in ("first-frame", "before") and reference_at is None:
            reference_at = first
            listen_until = first + _LISTEN_S
        elif timing == "during" and mic.onset is None:
            mic.onset = max(mic.n, mic.sample_at(first + plan.during_offset_s, due))
            reference_at = due + (mic.onset - mic.n) / RATE_HZ
            listen_until = reference_at + _LISTEN_S
        elif timing == "after" and mic.onset is None:
            arrived = caller.media_events[-1][0]
            done = len(caller.received_ulaw) >= 0.9 * assistant_s * RATE_HZ or bool(caller.clears)
            if done and caller.playback.playout_end + _AFTER_GAP_S <= due and arrived + _AFTER_GAP_S <= due:
                mic.onset = mic.n
                listen_until = due + _LISTEN_S
        elif timing == "silent":
            listen_until = listen_until or first + assistant_s + pauses_s + 1.5
        if reference_at is not None and listen_until is not None and caller.clears:
            # The barge-in came: nothing more to learn from this call.
            cleared = [at for at in caller.clears if at >= reference_at - 0.020]
            if cleared:
                listen_until = min(listen_until, cleared[0] + _AFTER_CLEAR_S)
        if listen_until is not None and due >= listen_until:
            return


def _measure(result: TrialResult, caller: SimulatedCaller, mic: _Mic, sim_call: SimCall | None) -> None:
    clock = caller.frame_clock
    if not clock:
        result.error = result.error or "no frame sent"
        return
    result.stream_s = len(clock) * 0.020
    dues = [due for due, _ in clock]
    first_ts = clock[0][1]

    def stream_ms(monotonic: float) -> float:
        k = max(0, bisect.bisect_right(dues, monotonic) - 1)
        due, timestamp = clock[k]
        return timestamp + 20.0 + (monotonic - due) * 1000.0

    result.clears_ms = [stream_ms(at) for at in caller.clears]
    played = caller.playback.played
    if played:
        result.first_audio_ms = stream_ms(played[0][0])
    if mic.onset is not None:
        result.onset_ms = first_ts + mic.onset / 8.0
    if result.onset_ms is not None and result.first_audio_ms is not None:
        result.reference_ms = max(result.onset_ms, result.first_audio_ms)
    # Exposure to false barge-ins: assistant speech (as VAPI sent it) while the caller was silent.
    condition = result.plan.condition
    if sim_call is not None and result.first_audio_ms is not None:
        # Every planned turn was spoken by the time the trial ended (it listens until then).
        speech_s = sum(seconds for _, _, seconds in result.plan.assistant_turns)
        if condition.timing == "silent":
            result.assistant_s = speech_s
        elif condition.timing == "during" and result.onset_ms is not None:
            result.assistant_s = min(speech_s, max(0.0, result.onset_ms - result.first_audio_ms) / 1000.0)
        elif condition.timing == "after":
            result.assistant_s = speech_s
    result.send_lag_ms = mic.worst_lag_s * 1000.0
