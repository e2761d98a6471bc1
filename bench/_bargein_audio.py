"""The barge-in bench's sounds, made at run time: speech from espeak-ng, shaped by sox and numpy.

Nothing is recorded or committed. Speech is synthesised by espeak-ng (Debian package
`espeak-ng`), resampled and band-limited by sox (package `sox`); levels, noise and mixing
are numpy. Levels are dBFS as `audio.signals.level_dbfs` measures them (RMS against a
full-scale square wave, the VAD's own measure). A speech level is its *active* level: the
RMS over the 20 ms frames within 30 dB of the loudest ones, so pauses between words do
not make a voice look quieter than it sounds (ITU-T P.56 does the same thing more finely).
"""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from audio.signals import pink_noise

__all__ = [
    "BandPass",
    "Corpus",
    "active_level_dbfs",
    "at_level",
    "missing_tools",
    "synthesize",
]

RATE_HZ = 8000
FRAME = 160  # 20 ms at 8 kHz
# Telephone band (ITU-T G.712's 300-3400 Hz passband).
BAND_HZ = (300.0, 3400.0)
_FIR_TAPS = 63
_ACTIVE_WITHIN_DB = 30.0
_SYNTH_TIMEOUT_S = 30.0

# Voices are espeak-ng voices with a variant (+m3 a male, +f2 a female timbre, ...).
CALLER_VOICES = ("en-us+m3", "en-gb+f2", "en-us+f4", "en-gb-scotland+m1")
ASSISTANT_VOICE = "en-us+f3"
TV_VOICES = ("en-gb-x-rp+m5", "en-us+f1")
BABBLE_VOICES = ("en-us+m2", "en-gb+f4", "en-us+m6", "en-gb+m4", "en-us+f5")

CALLER_LINES = (
    "Sorry, wait, that is not what I asked for. I need to change the delivery address.",
    "Hold on a second. Can you tell me how much that is going to cost me in total?",
    "No, no, I already paid that bill last week, I have the receipt right here.",
    "Actually, could I speak to someone about my appointment on Thursday morning?",
    "Excuse me, I think there is a mistake, my account number ends in four seven two.",
    "Yes, that works for me, but please send the confirmation by text message instead.",
    "Wait, I did not catch that. Could you repeat the last part more slowly, please?",
    "I just want to cancel the order. Please stop, I do not need the extra options.",
)
ASSISTANT_LINES = (
    "Thanks for calling. I can help you book an appointment, check on an order, or answer a question "
    "about your bill. To get started, could you tell me your account number or the phone number on the account?",
    "I found your order. It was shipped on Monday and should arrive within three to five business days. "
    "You will get a text message with the tracking link as soon as the carrier scans the package.",
    "Your current balance is forty two dollars and seventeen cents, due on the fifteenth of next month. "
    "You can pay by card over the phone, online in your account, or set up automatic payments.",
    "We have openings on Tuesday at ten in the morning, Wednesday at two thirty, and Friday at nine. "
    "Each visit takes about forty five minutes. Which of these times would suit you best?",
    "Before we continue, I need to confirm a few details for your security. Please tell me your date of birth "
    "and the first line of your billing address, exactly as it appears on your statement.",
    "I can certainly change that for you. The new delivery address will apply to this order and to any future "
    "orders, unless you tell me otherwise. Is there anything else you would like me to update today?",
)
TV_LINES = (
    "And now the weather for the weekend. Expect clouds in the morning, clearing by the afternoon.",
    "The council voted last night to extend the opening hours of the public library.",
    "In sports, the home team came back in the second half to win by three points.",
    "Traffic on the northern bypass is moving slowly after an earlier accident near the bridge.",
    "Scientists say the new telescope has already sent back its first detailed images.",
    "Coming up after the break, a look at the best gardens to visit this summer.",
    "Prices at the pump have fallen for the third week in a row, analysts report.",
    "The museum will open its new wing to visitors on the first of next month.",
)


def missing_tools() -> str | None:
    """Why the bench cannot make its sounds here (a tool not on PATH), or None."""
    absent = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if absent:
        return f"{' and '.join(absent)} not installed (Debian packages espeak-ng, sox)"
    return None


def synthesize(text: str, voice: str, *, rate_hz: int = RATE_HZ, telephone: bool = True, wpm: int = 165,
               reverb: bool = False) -> NDArray[np.float64]:
    """`text` spoken by espeak-ng `voice` at `rate_hz`, leading and trailing silence trimmed.

    `telephone` band-limits to 300-3400 Hz (what a phone line passes); `reverb` adds a
    room (a voice from across it, like a TV). Float samples in int16 units, unscaled.
    """
    speech = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text],
        check=True, capture_output=True, timeout=_SYNTH_TIMEOUT_S,
    ).stdout
    effects = ["rate", "-v", str(rate_hz)]
    if reverb:
        effects += ["reverb", "40", "50", "60"]
    if telephone:
        effects += ["sinc", f"{BAND_HZ[0]:g}-{BAND_HZ[1]:g}"]
    # -D: no dither, so the same text makes the same samples in every run.
    raw = subprocess.run(
        ["sox", "-D", "-t", "wav", "-", "-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-", *effects],
        input=speech, check=True, capture_output=True, timeout=_SYNTH_TIMEOUT_S,
    ).stdout
    return _trim(np.frombuffer(raw, dtype="<i2").astype(np.float64), rate_hz)


def _trim(samples: NDArray[np.float64], rate_hz: int) -> NDArray[np.float64]:
    """Cut silence at both ends: speech starts at the first sample 40 dB under the peak."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    loud = np.flatnonzero(np.abs(samples) > peak * 0.01)
    if loud.size == 0:
        return samples[:0]
    tail = rate_hz // 50  # keep 20 ms after the last loud sample: the decay of the last sound
    return samples[loud[0] : min(samples.size, loud[-1] + tail)]


def _frame_levels(samples: NDArray[np.float64]) -> NDArray[np.float64]:
    usable = samples.size // FRAME * FRAME
    frames = samples[:usable].reshape(-1, FRAME)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    levels: NDArray[np.float64] = 20.0 * np.log10(np.maximum(rms, 1e-9) / 32767.0)
    return levels


def active_level_dbfs(samples: NDArray[np.float64]) -> float:
    """RMS level of the frames within 30 dB of the loudest ones (the 95th percentile)."""
    levels = _frame_levels(samples)
    if levels.size == 0:
        return -120.0
    active = levels[levels > np.percentile(levels, 95) - _ACTIVE_WITHIN_DB]
    power = np.mean(10.0 ** (active / 10.0))
    return float(10.0 * np.log10(power))


def at_level(samples: NDArray[np.float64], dbfs: float, *, active: bool = True) -> NDArray[np.float64]:
    """`samples` scaled to `dbfs`: the active speech level, or the plain RMS when not `active`."""
    if active:
        level = active_level_dbfs(samples)
    else:
        rms = float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
        level = 20.0 * np.log10(max(rms, 1e-9) / 32767.0)
    scaled: NDArray[np.float64] = samples * 10.0 ** ((dbfs - level) / 20.0)
    return scaled


class BandPass:
    """A streaming 300-3400 Hz FIR (windowed sinc, 63 taps, 3.9 ms of delay) for 8 kHz frames."""

    delay_s = (_FIR_TAPS - 1) / 2 / RATE_HZ

    def __init__(self) -> None:
        n = np.arange(_FIR_TAPS) - (_FIR_TAPS - 1) / 2
        low, high = (f / RATE_HZ for f in BAND_HZ)
        taps = 2 * high * np.sinc(2 * high * n) - 2 * low * np.sinc(2 * low * n)
        self._taps = taps * np.hamming(_FIR_TAPS)
        self._history = np.zeros(_FIR_TAPS - 1)

    def __call__(self, frame: NDArray[np.float64]) -> NDArray[np.float64]:
        joined = np.concatenate((self._history, frame))
        self._history = joined[-(_FIR_TAPS - 1) :]
        out: NDArray[np.float64] = np.convolve(joined, self._taps, mode="valid")
        return out

    def whole(self, samples: NDArray[np.float64]) -> NDArray[np.float64]:
        """Filter a whole signal at once (a fresh filter; the delay is not compensated)."""
        out: NDArray[np.float64] = np.convolve(samples, self._taps, mode="full")[: samples.size]
        return out


@dataclass(frozen=True)
class Corpus:
    """Every sound of a run, made once: caller utterances, assistant turns, and room sounds.

    Caller utterances and room tracks are 8 kHz (what the caller's phone sends); assistant
    turns are kept at 8 and 16 kHz (VAPI's audio format decides which the simulator sends).
    Speech is unscaled; room tracks are long loops at their nominal level (0 dB): the
    trial scales each to the condition's level.
    """

    caller: tuple[NDArray[np.float64], ...]
    assistant_8k: tuple[NDArray[np.float64], ...]
    assistant_16k: tuple[NDArray[np.float64], ...]
    pink: NDArray[np.float64]  # pink noise, telephone band, RMS 0 dBFS
    tv: NDArray[np.float64]  # a voice across the room with short pauses, active level 0 dBFS
    babble: NDArray[np.float64]  # five voices talking at once, RMS 0 dBFS

    @staticmethod
    def make(seed: int = 1, room_s: float = 90.0, rooms: bool = True) -> Corpus:
        """Every sound; without `rooms` the room loops are silence (quicker, for runs that need none)."""
        rng = random.Random(seed)
        caller = []
        for index, line in enumerate(CALLER_LINES):
            caller.append(synthesize(line, CALLER_VOICES[index % len(CALLER_VOICES)]))
        assistant_8k = tuple(synthesize(line, ASSISTANT_VOICE, telephone=False) for line in ASSISTANT_LINES)
        assistant_16k = tuple(
            synthesize(line, ASSISTANT_VOICE, rate_hz=16000, telephone=False) for line in ASSISTANT_LINES
        )
        room = round(room_s * RATE_HZ)
        if not rooms:
            quiet = np.zeros(room)
            return Corpus(tuple(caller), assistant_8k, assistant_16k, pink=quiet, tv=quiet, babble=quiet)
        pink = BandPass().whole(pink_noise(room_s * 1000, RATE_HZ, dbfs=-20.0, seed=seed).astype(np.float64))
        tv = _talk(TV_VOICES, TV_LINES, room, rng, pause_s=(0.15, 0.6))
        babble = np.zeros(room)
        for voice in BABBLE_VOICES:
            babble += at_level(_talk((voice,), TV_LINES, room, rng, pause_s=(0.05, 0.3)), -20.0)
        return Corpus(
            caller=tuple(caller),
            assistant_8k=assistant_8k,
            assistant_16k=assistant_16k,
            pink=at_level(pink, 0.0, active=False),
            tv=at_level(tv, 0.0),
            babble=at_level(babble, 0.0, active=False),
        )


def _talk(voices: tuple[str, ...], lines: tuple[str, ...], length: int, rng: random.Random,
          pause_s: tuple[float, float]) -> NDArray[np.float64]:
    """`length` samples of `voices` reading `lines` in turn from across a room, short pauses between."""
    spoken = {(voice, line): synthesize(line, voice, reverb=True) for voice in voices for line in lines}
    order = list(spoken)
    rng.shuffle(order)
    out = np.zeros(length)
    at = round(rng.uniform(0.0, 1.0) * RATE_HZ)
    while at < length:
        for key in order:
            speech = spoken[key]
            piece = speech[: max(0, length - at)]
            out[at : at + piece.size] = piece
            at += speech.size + round(rng.uniform(*pause_s) * RATE_HZ)
            if at >= length:
                break
    return out
