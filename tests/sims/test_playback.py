"""The simulated Twilio's play-out clock, fed events directly (no sockets): what the caller heard."""

from __future__ import annotations

import base64
import json
import time

import gevent
import numpy as np

from audio.mulaw import ULAW_SILENCE, pcm16_to_ulaw
from audio.signals import tone
from sims.playback import BYTES_PER_S, TwilioPlayback

SID = "MZ" + "0" * 32
# The leak check of tests/sims/conftest.py counts file descriptors around each test; the
# gevent hub (which opens some, and stays) must exist before the first one starts.
gevent.get_hub()


def playback() -> TwilioPlayback:
    return TwilioPlayback(SID, lambda build: True, "CA" + "0" * 32)


def media(ulaw: bytes) -> bytes:
    payload = base64.b64encode(ulaw).decode()
    return json.dumps({"event": "media", "streamSid": SID, "media": {"payload": payload}}).encode()


def clear() -> bytes:
    return json.dumps({"event": "clear", "streamSid": SID}).encode()


def test_heard_is_what_played_on_the_play_out_clock_with_silence_around_it() -> None:
    ear = playback()
    answer = pcm16_to_ulaw(tone(440.0, 500, 8000))
    ear.on_text(media(answer[:2000]))
    ear.on_text(media(answer[2000:]))  # queued behind the first: plays right after it
    start = ear.played[0][0]

    before = ear.heard(start - 0.1, 800)
    assert before == bytes([ULAW_SILENCE]) * 800
    straddling = ear.heard(start - 0.05, 800)  # 50 ms of nothing, then the first 50 ms
    assert straddling[:400] == bytes([ULAW_SILENCE]) * 400 and straddling[400:] == answer[:400]
    across = ear.heard(start + 0.2, 800)  # 100 ms either side of the join of the two messages
    assert across == answer[1600:2400]
    tail = ear.heard(start + 0.45, 800)  # the last 50 ms, then silence again
    assert tail[:400] == answer[3600:] and tail[400:] == bytes([ULAW_SILENCE]) * 400


def test_audio_a_clear_dropped_was_never_heard() -> None:
    ear = playback()
    answer = pcm16_to_ulaw(tone(440.0, 2000, 8000))
    ear.on_text(media(answer))
    start = ear.played[0][0]
    time.sleep(0.1)
    ear.on_text(clear())
    cleared = ear.clears[0]

    heard = np.frombuffer(ear.heard(start, 2 * BYTES_PER_S), dtype=np.uint8)
    played = round((cleared - start) * BYTES_PER_S)
    assert 0.1 * BYTES_PER_S <= played < 0.3 * BYTES_PER_S
    assert heard[: played - 1].tobytes() == answer[: played - 1]  # up to the clear (to a sample)
    assert np.all(heard[played + 1 :] == ULAW_SILENCE)


def test_heard_frame_by_frame_then_cut_by_a_clear() -> None:
    ear = playback()
    frames = [pcm16_to_ulaw(tone(300.0 + 100 * k, 20, 8000)) for k in range(10)]
    for frame in frames:
        ear.on_text(media(frame))
    start = ear.played[0][0]
    # Frame by frame, as a caller mixing echo asks: each answer is exactly that frame.
    for k in range(5):
        assert ear.heard(start + k * 0.020, 160) == frames[k]
    ear.on_text(clear())  # at once: the frames still queued were never heard
    assert ear.clears[0] - start < 0.1
    assert ear.heard(start + 0.100, 160 * 5) == bytes([ULAW_SILENCE]) * 800
