"""Voice activity detector for decoded 8 kHz caller audio, one 20 ms frame at a time.

A frame counts as speech when its level is (1) above an absolute floor, (2) clear of the
assistant's echo and, (3a) with no classifier (VAD_ENGINE=energy), at least
`threshold_db` above an adaptive noise floor, or (3b) with one (audio/voice.py: Silero,
WebRTC), judged a voice by it. The echo check takes one of two forms: with the echo
canceller (audio/echo.py), the frame is what is left after cancelling and must be
RESIDUAL_MARGIN_DB above the echo predicted to be left in it; without it, while the
assistant is audible, the frame may be no more than `echo_margin_db` below the
assistant's level (held for ECHO_HOLD_MS), so its echo does not count.
Speech must build up for `min_speech_ms` before STARTED (clicks and breaths are too
short) and be absent for `hangover_ms` before STOPPED (pauses between words are shorter).
A frame of speech well clear of the room's background adds a frame to the build-up, one
only just over it half (a TV's syllable); a frame of no speech takes half a frame back
(after a syllable, only once the gap is longer than a word's closure), so short words with
short gaps add up and clicks do not. For the first YOUNG_FRAMES of a call,
before the background has heard the room, a frame must also stand FIRST_EXTRA_DB further
over the noise floor.
A classifier runs only on frames that pass the level checks (and for a few frames
after), which keeps its cost off silent and quiet lines.

The noise floor tracks the frame level in dB: it falls fast (the floor must be back at the
noise within a pause), rises with time constant `noise_adapt_ms` while frames look like
noise, and creeps up by only SPEECH_FLOOR_RISE_DB_PER_S while frames look like speech,
so it cannot climb into a long utterance. The price: if the noise itself jumps by more
than `threshold_db`, the floor needs (jump - threshold_db) / SPEECH_FLOOR_RISE_DB_PER_S
seconds to catch up, and the detector reports speech until it has.

The floor does not start at the first frame: a caller who speaks from the first frame
would make their own voice the floor and get no onset until their first pause. It starts
at NOISE_FLOOR_START_DBFS; after the first WARMUP_MS it jumps to the line's level if that
level was steady (stationary noise stays within a few dB, speech swings by 10-20 dB
between syllables and words) and had no pitch (a held vowel is steady too), so a noisy
line is not taken for speech either; if it was not, to its quietest frame. An onset seen
during the warm-up is reported when it ends, if the warm-up's loudest frame stood
THRESHOLD_DB + FIRST_EXTRA_DB over its quietest (a caller's voice does; a TV's syllable
over a room's noise does not).

A caller already talking when the assistant's echo becomes possible was first: for
CALLER_FIRST_MS they are judged against the echo predicted rather than a margin over it
(see CALLER_FIRST_MS).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from audio.voice import SpeechClassifier

__all__ = [
    "CALLER_FIRST_MS",
    "CALLER_FIRST_RELIEF_DB",
    "DEFAULT_ENGINE",
    "ECHO_HOLD_MS",
    "ECHO_MARGIN_DB",
    "ENGINES",
    "FIRST_EVIDENCE_FRAMES",
    "FIRST_EXTRA_DB",
    "HANGOVER_MS",
    "MIN_LEVEL_DBFS",
    "MIN_SPEECH_MS",
    "NOISE_ADAPT_MS",
    "NOISE_FALL_MS",
    "NOISE_FLOOR_MIN_DBFS",
    "NOISE_FLOOR_START_DBFS",
    "SILERO_THRESHOLD",
    "SPEECH_FLOOR_RISE_DB_PER_S",
    "SYLLABLE_GAP_MS",
    "SYLLABLE_MIN_MS",
    "THRESHOLD_DB",
    "WARMUP_MS",
    "EnergyVad",
    "VadParams",
    "VadTransition",
    "pitch_strength",
]

# Which detector judges the caller (VAD_ENGINE). Over sockets (bench.bargein) the energy
# engine with the echo canceller cleared barge-ins twice as fast at p95 (194 vs 398 ms)
# with as few false barge-ins under speakerphone echo, noise and a TV (7 vs 8 in 10 min),
# for half Silero's added CPU and none of its ~9 MiB per concurrent call; Silero is the
# choice where clatter and sudden noise steps matter more (docs/barge-in.md).
ENGINES = ("silero", "webrtc", "energy")
DEFAULT_ENGINE = "energy"
# Silero's speech probability threshold. Its own default is 0.5; in bench.vad_cost 0.3
# started on callers ~40 ms sooner (worst case 200 vs 460 ms over the assistant) with
# no more false starts on a TV, clatter or noise steps (docs/barge-in.md).
SILERO_THRESHOLD = 0.3
# 20 ms frames of stationary noise vary by 0.5 dB RMS (white) to 1 dB (pink), peaking
# 2-4 dB above their mean; speech at a normal level sits 20-40 dB above line noise.
# 10 dB keeps noise out with a wide margin and still catches a soft talker on a noisy line.
THRESHOLD_DB = 10.0
# PSTN speech arrives at about -20 dBFS and quiet talkers at -35 dBFS; line and comfort
# noise sits at -55 to -65 dBFS. Anything under -45 dBFS is not someone talking to us.
MIN_LEVEL_DBFS = -45.0
# A click straddling two frames lights up 40 ms and a breath 60-80 ms; one syllable is
# 100-200 ms. Five frames separates them without delaying barge-in noticeably.
MIN_SPEECH_MS = 100
# Pauses between words and at commas run 100-300 ms; 400 ms ends a turn without
# splitting an utterance at every breath.
HANGOVER_MS = 400
# Line echo comes back at least 6 dB down before cancellation (G.168's minimum echo
# return loss) and usually 15-30 dB down; a caller barging in talks about as loud as
# the assistant. 10 dB below the assistant separates the two with room on both sides.
ECHO_MARGIN_DB = 10.0
# Follows a fan, traffic or a change of room within 2-3 s, but is far slower than the
# 4 Hz syllable rhythm, so it smooths over speech rather than following it.
NOISE_ADAPT_MS = 1000

# Time constant of the falling floor: back at the noise within a 200-300 ms pause
# between words, yet one quiet or lost frame only moves it by a fifth of the gap.
NOISE_FALL_MS = 100
# How fast the floor may creep up while frames look like speech: a 30 s utterance with
# no pause, 35 dB over the noise, still ends 20 dB over the floor. A noise step of 20 dB
# is absorbed in (20 - 10) / 0.5 = 20 s.
SPEECH_FLOOR_RISE_DB_PER_S = 0.5
# The floor never goes below this. mu-law's smallest non-zero steps (+-8) are at -72
# dBFS, so a quieter floor only means digital silence, where dB differences are noise.
NOISE_FLOOR_MIN_DBFS = -70.0
# Where the noise floor starts: line and comfort noise (-55 to -65 dBFS), so a caller who
# speaks at once is 20-40 dB over it.
NOISE_FLOOR_START_DBFS = -60.0
# The first 200 ms decide whether the line is steady noise. 20 ms frames of stationary
# noise (white, pink, hum, a fan) span 3-5 dB over 200 ms; speech spans 10-20 dB (a
# syllable's rise and fall, the gaps between words).
WARMUP_MS = 200
_STEADY_DB = 7.0
# ...but a held vowel ("Hellooo?") is as steady as a fan. Noise has no pitch: 20 ms frames of
# white or telephone-band pink noise correlate with themselves at a voice's pitch lags
# (2.5-12.5 ms, 80-400 Hz) at 0.25-0.45, full-band pink reaches 0.6 in one frame in a hundred,
# 60 Hz hum stays under 0.3; a voice's frames pass 0.6 in two of three, a held vowel in all.
# A warm-up with a pitch in half its frames was someone talking: its level is not the noise.
_PITCH_LAGS = (20, 100)  # samples at 8 kHz
_VOICED_CORRELATION = 0.6
# A voice in the room that is not the caller (a TV, people nearby) is quieter than the
# caller but is speech all the same; only its level tells it apart. The detector tracks
# the 91st percentile of frame levels while the caller is not speaking (a stochastic
# quantile tracker: up BACKGROUND_UP_DB per frame above it, down a tenth of that below),
# and a frame must stand BACKGROUND_MARGIN_DB above it to count. With only line noise
# the tracker sits a few dB over the noise and changes nothing; a TV at -38 dBFS lifts
# it to about -36 dBFS within a few seconds, so its syllables stop counting while a
# caller at -30 dBFS still does. Up 15 dB/s, down 1.5 dB/s.
BACKGROUND_UP_DB = 0.3
BACKGROUND_DOWN_DB = 0.03
BACKGROUND_MARGIN_DB = 3.0
# Speech this far over the background builds an onset at the full rate; speech between
# BACKGROUND_MARGIN_DB and this, at half (200 ms instead of 100). A TV's syllables sit 3-10 dB
# over the tracker, a caller's 11-25 dB (bench.bargein: 9 dB let TV syllables through at the
# call's start, before the tracker had learnt the TV).
STRONG_MARGIN_DB = 11.0
# A frame under the echo floor may be the caller talking over the assistant: it lifts the
# tracker at a third of the rate, so a caller not yet heard does not become the background.
MASKED_UP_DB = 0.1
# The first 1.5 s of a call, if its first 200 ms were not steady noise: the background
# tracker has not heard the room yet (a TV at the call's start is as new as a caller), so a
# frame must be FIRST_EXTRA_DB further over the noise floor to count (bench.bargein: TV
# syllables in a call's first second were most of the false barge-ins once the echo
# canceller stopped hiding them).
YOUNG_FRAMES = 75
# The tracker starts at the quietest level that can count as a voice at all (min_level_dbfs):
# started lower, it spent the call's first seconds climbing through a TV's level while the
# TV's syllables counted as the caller (bench.bargein: most false barge-ins under Done-when
# (b) were in the first 3 s of a call).
# A caller already talking when the assistant's echo becomes possible (the frame before had
# no echo to fear and counted as speech, after at least FIRST_EVIDENCE_FRAMES of it, or
# while the VAD is in speech) was first. For CALLER_FIRST_MS they are judged against the echo predicted,
# not RESIDUAL_MARGIN_DB over it: before the echo path is known the prediction is the loudest
# assistant frame of the whole delay range, ~10 dB over a -30 dBFS caller, who would otherwise
# wait up to 1.8 s for it to be learnt. 400 ms is the time the issue allows for the clear.
CALLER_FIRST_MS = 400
CALLER_FIRST_RELIEF_DB = 6.0
FIRST_EVIDENCE_FRAMES = 2
# Where nothing is known of the room (the warm-up; a caller judged as first), a frame must be
# this much more over the noise floor than THRESHOLD_DB: a TV's loud syllable at the call's
# start is 10-12 dB over the room's quietest frame, a caller's voice 15-40 dB.
FIRST_EXTRA_DB = 5.0
# Towards an onset, the build-up does not leak for this long after a syllable: the closure
# inside a word ("Ex- cuse me", "wait") no longer throws the first syllable away
# (bench.bargein_offline: a first-frame caller in the room heard after 740 ms at worst, not
# 2,060; -35 dBFS callers over a stepping echo missed 2 times in 40, not 8; p95 over the
# assistant 403 -> 367 ms). Holding 100 ms or more let a TV's syllables in the room, and
# echo slipping through a stepping path, add up to false onsets.
SYLLABLE_GAP_MS = 80
# ...after a burst at least this long: a syllable is 60-200 ms, a click or a keystroke 20-40
# ms, and keys typed 8 a second must not add up to an onset.
SYLLABLE_MIN_MS = 60
# With a classifier, it goes on being fed this long after the level checks last passed,
# so dips between syllables do not cost it its context; then it is reset.
_CLASSIFIER_LINGER_MS = 200
# The assistant's level is held this long after it was playing: echo returns one PSTN
# round trip (plus jitter buffers) after the audio was played.
ECHO_HOLD_MS = 200

_RATE_HZ = 8000
_FULL_SCALE = 32767.0
_SILENT_DBFS = -120.0  # level reported for an all-zero frame, as audio.signals does


class VadTransition(enum.Enum):
    """A change of the caller's speaking state, reported by EnergyVad.process."""

    STARTED = "started"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class VadParams:
    """Tuning of EnergyVad; every default is a module constant that gives its reason."""

    threshold_db: float = THRESHOLD_DB
    """How far above the noise floor a frame must be to count as speech."""
    min_level_dbfs: float = MIN_LEVEL_DBFS
    """Absolute floor: quieter frames are never speech."""
    min_speech_ms: int = MIN_SPEECH_MS
    """Speech needed before STARTED; a non-speech frame takes half a frame's worth back."""
    hangover_ms: int = HANGOVER_MS
    """Uninterrupted non-speech needed before STOPPED."""
    echo_margin_db: float = ECHO_MARGIN_DB
    """While the assistant is audible, speech must be louder than its level minus this."""
    noise_adapt_ms: int = NOISE_ADAPT_MS
    """Time constant of the noise floor tracker while frames look like noise."""

    def __post_init__(self) -> None:
        _require(self.threshold_db > 0.0, "threshold_db", self.threshold_db, "> 0")
        _require(self.min_level_dbfs <= 0.0, "min_level_dbfs", self.min_level_dbfs, "<= 0")
        _require(self.min_speech_ms >= 0, "min_speech_ms", self.min_speech_ms, ">= 0")
        _require(self.hangover_ms >= 0, "hangover_ms", self.hangover_ms, ">= 0")
        _require(self.echo_margin_db >= 0.0, "echo_margin_db", self.echo_margin_db, ">= 0")
        _require(self.noise_adapt_ms > 0, "noise_adapt_ms", self.noise_adapt_ms, "> 0")


def pitch_strength(frame: NDArray[np.float64]) -> float:
    """How strongly `frame` (8 kHz) repeats itself at a voice's pitch: the largest normalised
    autocorrelation over _PITCH_LAGS, 0 (noise) to 1 (a steady vowel)."""
    x = frame - frame.mean()
    n = x.size
    low, high = _PITCH_LAGS
    if n <= high:
        return 0.0
    lags = np.arange(low, high + 1)
    products = np.correlate(x, x, "full")[n - 1 + low : n + high]
    energy = np.cumsum(x * x)
    head = energy[n - 1 - lags]  # x[:n - lag]
    tail = energy[-1] - energy[lags - 1]  # x[lag:]
    scale = np.sqrt(head * tail)
    usable = scale > 0.0
    if not usable.any():
        return 0.0
    return float(np.max(products[usable] / scale[usable]))


def _require(ok: bool, name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"VadParams.{name} must be {allowed}, got {value!r}")


class EnergyVad:
    """Decides, frame by frame, whether the caller is speaking.

    Feed every caller frame in order, each exactly `frame_ms` long at 8 kHz. Without an
    echo canceller, pass the level of the assistant audio being played to the caller at
    that moment (`far_end_dbfs`, None when nothing plays); it is held for ECHO_HOLD_MS to
    cover the echo's round trip. With one, pass what is left after cancelling as the
    frame and the level it must reach to be more than echo as `echo_dbfs`. `classifier`, when
    given, must also call the frame a voice (audio/voice.py).
    """

    __slots__ = (
        "_background",
        "_buf",
        "_burst_ms",
        "_classifier",
        "_classifier_left",
        "_db_offset",
        "_echo_free",
        "_far_hold",
        "_far_left",
        "_first_evidence_ms",
        "_first_frames",
        "_first_left",
        "_floor",
        "_frame_ms",
        "_frame_samples",
        "_gap_ms",
        "_hold_frames",
        "_last_speech",
        "_last_strong",
        "_linger_frames",
        "_noise_fall",
        "_noise_rise",
        "_onset_due",
        "_params",
        "_quiet_ms",
        "_speaking",
        "_speech_ms",
        "_speech_rise_db",
        "_voiced",
        "_warmup",
        "_warmup_frames",
        "_young",
    )

    def __init__(self, params: VadParams, frame_ms: int = 20, classifier: SpeechClassifier | None = None) -> None:
        samples = _RATE_HZ * frame_ms // 1000
        if frame_ms <= 0 or samples * 1000 != _RATE_HZ * frame_ms:
            raise ValueError(f"frame_ms must be a whole number of 8 kHz samples, got {frame_ms!r}")
        self._params = params
        self._frame_ms = frame_ms
        self._frame_samples = samples
        self._buf = np.zeros(samples, dtype=np.float64)
        # level_dbfs = 10*log10(sum(x^2)) - offset, with 0 dBFS = RMS of 32767.
        self._db_offset = 10.0 * math.log10(samples * _FULL_SCALE * _FULL_SCALE)
        self._noise_rise = 1.0 - math.exp(-frame_ms / params.noise_adapt_ms)
        self._noise_fall = 1.0 - math.exp(-frame_ms / NOISE_FALL_MS)
        self._speech_rise_db = SPEECH_FLOOR_RISE_DB_PER_S * frame_ms / 1000.0
        # An assistant level gates its own frame and the ECHO_HOLD_MS after it.
        self._hold_frames = -(-ECHO_HOLD_MS // frame_ms) + 1
        self._far_hold: deque[float] = deque(maxlen=self._hold_frames)
        self._classifier = classifier
        self._linger_frames = max(1, _CLASSIFIER_LINGER_MS // frame_ms)
        self._warmup_frames = max(2, WARMUP_MS // frame_ms)
        self._first_frames = max(1, CALLER_FIRST_MS // frame_ms)
        self._first_evidence_ms = FIRST_EVIDENCE_FRAMES * frame_ms
        self.reset()

    def reset(self) -> None:
        """Back to the state of a new detector: not speaking, noise floor unknown."""
        self._floor: float | None = None
        self._speaking = False
        self._speech_ms = 0  # speech built up towards onset (leaky)
        self._gap_ms = 0  # non-speech since the last frame that built it up
        self._burst_ms = 0  # speech frames in a row, up to the last one (a syllable, or a click)
        self._quiet_ms = 0  # uninterrupted non-speech while speaking
        self._far_hold.clear()
        self._far_left = 0  # frames the held assistant level still gates
        self._warmup: list[float] | None = []  # levels of the first frames, until the warm-up decides
        self._voiced = 0  # warm-up frames with a pitch
        self._onset_due = False  # the warm-up saw an onset, reported once it has decided
        self._echo_free = True  # the last frame could hold no echo of the assistant (echo_dbfs None)
        self._last_speech = False  # the last frame counted as speech
        self._last_strong = False  # ... and stood STRONG_MARGIN_DB over the background
        self._young = YOUNG_FRAMES  # frames until the background tracker has heard the room
        self._first_left = 0  # frames the caller, talking when the echo became possible, is still judged by
        self._background = self._params.min_level_dbfs  # the 91st percentile of levels while the caller is silent
        self._classifier_left = 0  # frames the classifier is still fed without passing the level checks
        if self._classifier is not None:
            self._classifier.skip()

    @property
    def speaking(self) -> bool:
        """True between STARTED and STOPPED."""
        return self._speaking

    @property
    def background_dbfs(self) -> float:
        """The level of what is heard while the caller is silent (91st percentile)."""
        return self._background

    @property
    def quiet_ms(self) -> int:
        """While speaking: how long since the last frame that counted as speech."""
        return self._quiet_ms

    def attach(self, classifier: SpeechClassifier) -> None:
        """Start judging with `classifier` (one that finished loading after the call began)."""
        self._classifier = classifier
        self._classifier_left = 0

    @property
    def speech_from_dbfs(self) -> float:
        """No frame quieter than this can count as speech now, whatever the echo."""
        least = max(self._params.min_level_dbfs, self._background + BACKGROUND_MARGIN_DB)
        if self._classifier is not None:
            return least
        floor = NOISE_FLOOR_START_DBFS if self._floor is None else self._floor
        return max(least, floor + self._params.threshold_db)

    @property
    def noise_floor_dbfs(self) -> float:
        """Current noise floor estimate (NOISE_FLOOR_MIN_DBFS before the first frame)."""
        return NOISE_FLOOR_MIN_DBFS if self._floor is None else self._floor

    @property
    def classifier(self) -> SpeechClassifier | None:
        return self._classifier

    def process(
        self,
        pcm8k: NDArray[np.int16] | NDArray[np.float32],
        far_end_dbfs: float | None = None,
        echo_dbfs: float | None = None,
    ) -> VadTransition | None:
        """Take one frame of caller audio; return STARTED or STOPPED when the state changes."""
        if len(pcm8k) != self._frame_samples:
            raise ValueError(f"expected {self._frame_samples} samples, got {len(pcm8k)}")
        buf = self._buf
        buf[:] = pcm8k
        energy = float(buf.dot(buf))
        level = 10.0 * math.log10(energy) - self._db_offset if energy > 0.0 else _SILENT_DBFS
        params = self._params
        if self._warmup is not None and pitch_strength(buf) >= _VOICED_CORRELATION:
            self._voiced += 1
        if self._young:
            self._young -= 1

        # Quieter than the held assistant level minus the margin: could be its echo.
        relieved = False
        if far_end_dbfs is not None:
            self._far_hold.append(far_end_dbfs)
            self._far_left = self._hold_frames - 1
            echo_floor = max(self._far_hold) - params.echo_margin_db
        elif self._far_left:
            self._far_hold.append(-math.inf)
            echo_floor = max(self._far_hold) - params.echo_margin_db
            self._far_left -= 1
            if not self._far_left:
                self._far_hold.clear()
        else:
            echo_floor = -math.inf
        if echo_dbfs is not None:
            # (Not a caller only running out the hangover: an answer may follow a question at once.)
            first = self._last_strong and (self._speaking or self._speech_ms >= self._first_evidence_ms)
            if self._echo_free and first:
                # The assistant's echo is only now possible and the caller was already talking
                # on frames it could not be in: the caller was first.
                self._first_left = self._first_frames
            if self._first_left:
                self._first_left -= 1
                echo_dbfs -= CALLER_FIRST_RELIEF_DB
                relieved = True
            echo_floor = max(echo_floor, echo_dbfs)
        self._echo_free = echo_dbfs is None

        floor = self._floor
        if floor is None:
            floor = NOISE_FLOOR_START_DBFS
        # Judge the frame against the floor as it was before this frame.
        gap = level - floor
        background = self._background
        loud = level >= params.min_level_dbfs and level >= echo_floor and level >= background + BACKGROUND_MARGIN_DB
        if level <= background:
            if not self._speaking:
                self._background = background - BACKGROUND_DOWN_DB
        elif not self._speaking:
            held = level < echo_floor or (loud and self._speech_ms)
            self._background = background + (MASKED_UP_DB if held else BACKGROUND_UP_DB)
        classifier = self._classifier
        if classifier is None:
            is_speech = loud and gap >= params.threshold_db + (FIRST_EXTRA_DB if relieved or self._young else 0.0)
            voice = True
        else:
            voice = likely = False
            if loud:
                self._classifier_left = self._linger_frames
            if self._classifier_left:
                self._classifier_left -= 1
                voice = classifier.is_speech(pcm8k)
                likely = voice or classifier.likely
                if not self._classifier_left:
                    classifier.skip()
            # Towards an onset, a loud frame counts if the classifier finds it likely a voice
            # (half its threshold: its probability trails a word's start by a window or two)
            # and the onset needs it sure at the end. Once speaking, it must be sure.
            is_speech = loud and (voice or (likely and not self._speaking))
        self._floor = self._track_floor(floor, max(level, NOISE_FLOOR_MIN_DBFS) - floor, level)
        self._last_speech = is_speech
        strong = level >= background + STRONG_MARGIN_DB
        self._last_strong = is_speech and strong
        # Speech well clear of the room's voices builds an onset at full rate; speech only just
        # over them (a TV's syllable, or a caller as quiet as the TV) at half rate.
        step = self._frame_ms if strong else self._frame_ms // 2
        return self._advance(is_speech, voice, step)

    def _track_floor(self, floor: float, gap: float, level: float) -> float:
        warmup = self._warmup
        if warmup is not None:
            # Until the warm-up has decided, the floor stays low; if the line was steady, the
            # floor is its level (a caller speaking from the first frame is never steady).
            warmup.append(max(level, NOISE_FLOOR_MIN_DBFS))
            if len(warmup) < self._warmup_frames:
                return floor
            self._warmup = None
            if max(warmup) - min(warmup) <= _STEADY_DB and 2 * self._voiced < len(warmup):
                self._speech_ms = 0  # it was noise
                self._onset_due = False
                self._young = 0  # and the room is that noise: nothing to learn first
                return sum(warmup) / len(warmup)
            # Not steady: someone or something talked. Its quietest frame (or the room's background
            # tracker, if lower: a caller may have talked through every frame) is the most the
            # line's noise can be; an onset seen meanwhile stands only if it was well clear of that.
            quietest = min(min(warmup), self._background)
            if max(warmup) - quietest < self._params.threshold_db + FIRST_EXTRA_DB:
                self._onset_due = False
                # Nor does the evidence gathered meanwhile: kept even in part, it let the next
                # syllable of a TV start in two frames (bench.bargein_offline, room: 12 -> 8 of
                # 120 call starts with a false onset; no first-frame caller later).
                self._speech_ms = 0
            return quietest
        if gap < 0.0:
            return floor + gap * self._noise_fall
        if gap < self._params.threshold_db:
            return floor + gap * self._noise_rise
        return floor + self._speech_rise_db

    def _advance(self, is_speech: bool, voice: bool, step: int) -> VadTransition | None:
        frame_ms = self._frame_ms
        needed_ms = self._params.min_speech_ms
        if self._first_left:
            # A caller who was talking before the assistant could be heard back: one frame
            # less (they are stopping an assistant that talked over them).
            needed_ms = max(frame_ms, needed_ms - frame_ms)
        if self._warmup is not None and self._classifier is None:
            # No onset before the warm-up has decided whether this level is the line's noise;
            # one reached meanwhile is reported when it has, if the caller is still talking.
            if is_speech:
                self._speech_ms = min(self._speech_ms + step, needed_ms)
                self._quiet_ms = 0
                self._built()
                self._onset_due = self._onset_due or self._speech_ms >= needed_ms
            else:
                self._leak()
                self._quiet_ms += frame_ms
            return None
        if self._onset_due:
            self._onset_due = False
            if self._quiet_ms + (0 if is_speech else frame_ms) < self._params.hangover_ms:
                self._speaking = True
                self._quiet_ms = 0 if is_speech else self._quiet_ms + frame_ms
                return VadTransition.STARTED
        if self._speaking:
            if is_speech:
                self._quiet_ms = 0
                return None
            self._quiet_ms += frame_ms
            if self._quiet_ms < self._params.hangover_ms:
                return None
            self._speaking = False
            self._speech_ms = 0
            return VadTransition.STOPPED
        if is_speech:
            self._speech_ms = min(self._speech_ms + step, needed_ms)
            self._built()
            if self._speech_ms >= needed_ms and voice:
                self._speaking = True
                self._quiet_ms = 0
                return VadTransition.STARTED
        elif self._speech_ms:
            self._leak()
        return None

    def _built(self) -> None:
        if self._gap_ms:
            self._burst_ms = 0
        self._burst_ms += self._frame_ms
        self._gap_ms = 0

    def _leak(self) -> None:
        """A frame of no speech towards an onset: the build-up leaks half a frame, unless it
        is within a syllable's gap after a burst as long as a syllable (not a click's)."""
        self._gap_ms += self._frame_ms
        if self._gap_ms > SYLLABLE_GAP_MS or self._burst_ms < SYLLABLE_MIN_MS:
            self._speech_ms = max(0, self._speech_ms - self._frame_ms // 2)
