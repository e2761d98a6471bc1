"""The caller-side audio path offline, engine by engine: what each VAD detects and what it costs.

    .venv/bin/python -m bench.vad_cost [--minutes 2] [--seed 1]

No sockets: the pure modules (audio/echo.py, audio/vad.py, audio/voice.py) fed frame by
frame with speech made at run time by espeak-ng and sox (Debian packages), the way the
VAD actor feeds them. Per engine (energy without the echo canceller, as before issue 13;
energy, WebRTC and Silero behind the canceller) it reports:

- onsets: a caller at -35 to -12 dBFS (active level) speaking after 1 s of line noise,
  and over the assistant with its echo (-10 dB, 150 ms, telephone band): detected or
  not, and speech start -> STARTED in ms of stream time;
- false starts per minute of: pink noise at -45 dBFS; a TV voice at -38 dBFS (and -32);
  the assistant's echo at -10 dB with pink noise at -45 dBFS and a TV at -38 dBFS;
- cost: µs per 20 ms frame of each stage (canceller; VAD with its classifier), on the
  echo condition (the assistant audible throughout: the dearest case) and on a quiet line.

Timing figures belong here, not in tests; the over-sockets figures are bench.bargein's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from audio.echo import EchoCanceller, FarEndTrack
from audio.mulaw import pcm16_to_ulaw, ulaw_to_pcm16
from audio.signals import pink_noise
from audio.vad import SILERO_THRESHOLD as SILERO_DEFAULT
from audio.vad import EnergyVad, VadParams, VadTransition
from audio.voice import make_classifier

RATE = 8000
FRAME = 160
FRAME_MS = 20
ASSISTANT_DBFS = -20.0
ECHO_DB = -10.0
ECHO_DELAY_MS = 150
CALLER_LEVELS = (-35.0, -30.0, -26.0, -20.0, -12.0)
CALLER_LINES = (
    ("Sorry, wait, that is not what I asked for. I need to change the address.", "en-us+m3"),
    ("Hold on a second. Can you tell me how much that is going to cost me?", "en-gb+f2"),
    ("No, no, I already paid that bill last week, I have the receipt here.", "en-us+f4"),
    ("Actually, could I speak to someone about my appointment on Thursday?", "en-gb-scotland+m1"),
)
ASSISTANT_TEXT = (
    "Thanks for calling. I can help you book an appointment, check on an order, or answer a question "
    "about your bill. To get started, could you tell me your account number or the phone number on the account? "
    "I found your order. It was shipped on Monday and should arrive within three to five business days."
)
TV_TEXT = (
    "And now the weather for the weekend. Expect showers in the north on Saturday, clearing by the afternoon, "
    "with sunshine and light winds across the south. Temperatures will stay close to normal for the season, "
    "though it will feel cooler near the coast. In sport tonight, the home side won again after a late goal."
)
ENGINES = ("energy (no canceller)", "energy", "webrtc", "silero")


def synthesize(text: str, voice: str, speed: int = 165) -> NDArray[np.int16]:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], check=True, capture_output=True
    ).stdout
    # -D: no dither, so the same text makes the same samples in every run.
    raw = subprocess.run(
        ["sox", "-D", "-t", "wav", "-", "-t", "raw", "-r", "8000", "-e", "signed", "-b", "16", "-c", "1", "-"],
        input=wav, check=True, capture_output=True,
    ).stdout
    pcm = np.frombuffer(raw, dtype=np.int16)
    loud = np.flatnonzero(np.abs(pcm) > 300)
    return pcm[loud[0] :] if loud.size else pcm


def active_level(pcm: NDArray[np.number]) -> float:
    frames = pcm[: len(pcm) // FRAME * FRAME].astype(np.float64).reshape(-1, FRAME)
    power = (frames**2).mean(axis=1) + 1e-9
    active = power[power >= power.max() * 1e-3]
    return float(10.0 * np.log10(active.mean() / 32767.0**2))


def at_level(pcm: NDArray[np.number], dbfs: float) -> NDArray[np.float64]:
    gain = float(10.0 ** ((dbfs - active_level(pcm)) / 20.0))  # float ** float is typed Any
    return pcm.astype(np.float64) * gain


def telephone_band(x: NDArray[np.float64]) -> NDArray[np.float64]:
    n = np.arange(63) - 31
    taps = np.hamming(63) * (
        2 * 3400 / RATE * np.sinc(2 * 3400 / RATE * n) - 2 * 300 / RATE * np.sinc(2 * 300 / RATE * n)
    )
    return np.convolve(x, taps)[: len(x)]


def loop(x: NDArray[np.float64], n: int) -> NDArray[np.float64]:
    return np.resize(x, n)


def mulaw(x: NDArray[np.float64]) -> NDArray[np.int16]:
    return ulaw_to_pcm16(pcm16_to_ulaw(np.clip(np.round(x), -32768, 32767).astype(np.int16)))


@dataclass
class Run:
    starts: list[int] = field(default_factory=list)  # frame index of each STARTED
    canceller_us: list[float] = field(default_factory=list)
    vad_us: list[float] = field(default_factory=list)


SILERO_THRESHOLD = SILERO_DEFAULT


def run(engine: str, near: NDArray[np.int16], far: NDArray[np.int16] | None) -> Run:
    """Feed `near` (caller side) frame by frame; `far` is what the assistant played (or None)."""
    params = VadParams()
    classifier = None if engine.startswith("energy") else make_classifier(engine, SILERO_THRESHOLD)
    vad = EnergyVad(params, classifier=classifier)
    cancel = engine != "energy (no canceller)"
    track = FarEndTrack()
    canceller = EchoCanceller(track)
    far_ulaw = pcm16_to_ulaw(far) if far is not None else b""
    result = Run()
    for i in range(len(near) // FRAME):
        frame = near[i * FRAME : (i + 1) * FRAME]
        if far is not None:
            track.write(i * FRAME_MS, far_ulaw[i * FRAME : (i + 1) * FRAME])
        if cancel:
            t0 = time.perf_counter()
            estimate = canceller.process(frame, i * FRAME_MS, caller_speaking=vad.speaking,
                                        speech_from_dbfs=vad.speech_from_dbfs)
            t1 = time.perf_counter()
            transition = vad.process(estimate.residual, echo_dbfs=estimate.floor_dbfs)
            t2 = time.perf_counter()
            result.canceller_us.append((t1 - t0) * 1e6)
        else:
            level = None
            if far is not None:
                chunk = far[i * FRAME : (i + 1) * FRAME].astype(np.float64)
                power = float(chunk.dot(chunk)) / FRAME
                level = 10.0 * np.log10(power / 32767.0**2) if power > 0 else None
            t1 = time.perf_counter()
            transition = vad.process(frame, level)
            t2 = time.perf_counter()
        result.vad_us.append((t2 - t1) * 1e6)
        if transition is VadTransition.STARTED:
            result.starts.append(i)
    if classifier is not None:
        classifier.close()
    return result


def stage_costs(far: NDArray[np.int16], near: NDArray[np.int16], quiet: NDArray[np.int16],
                talk_no_echo: NDArray[np.int16]) -> list[tuple[str, float]]:
    """µs per 20 ms frame of each stage alone, each over the same frames (best of 3 passes).

    `talk_no_echo` is a caller talking over the assistant on a line with no echo: no delay
    is ever found, so every loud frame gets the canceller's lag-by-lag check.
    """
    frames = len(near) // FRAME
    far_ulaw = pcm16_to_ulaw(far)
    far_frames = [far_ulaw[i * FRAME : (i + 1) * FRAME] for i in range(frames)]
    near_frames = [near[i * FRAME : (i + 1) * FRAME] for i in range(frames)]
    quiet_frames = [quiet[i * FRAME : (i + 1) * FRAME] for i in range(frames)]
    no_echo_frames = [talk_no_echo[i * FRAME : (i + 1) * FRAME] for i in range(frames)]

    def best(body: Callable[[], None]) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            body()
            times.append(time.perf_counter() - t0)
        return min(times) / frames * 1e6

    def write_far() -> None:
        track = FarEndTrack()
        for i, f in enumerate(far_frames):
            track.write(i * FRAME_MS, f)

    def canceller(with_far: bool, source: list[NDArray[np.int16]] = near_frames) -> Callable[[], None]:
        # What the VAD tells the canceller each frame (whether the caller is talking, and the
        # least level it could count as speech), from one untimed pass of the whole path.
        track, vad = FarEndTrack(), EnergyVad(VadParams())
        ec = EchoCanceller(track)
        told: list[tuple[bool, float]] = []
        for i, f in enumerate(source):
            if with_far:
                track.write(i * FRAME_MS, far_frames[i])
            told.append((vad.speaking, vad.speech_from_dbfs))
            estimate = ec.process(f, i * FRAME_MS, caller_speaking=told[-1][0], speech_from_dbfs=told[-1][1])
            vad.process(estimate.residual, echo_dbfs=estimate.floor_dbfs)

        def body() -> None:
            track = FarEndTrack()
            ec = EchoCanceller(track)
            for i, f in enumerate(source):
                if with_far:
                    track.write(i * FRAME_MS, far_frames[i])
                speaking, speech_from = told[i]
                ec.process(f, i * FRAME_MS, caller_speaking=speaking, speech_from_dbfs=speech_from)
        return body

    def vad(engine: str, source: list[NDArray[np.int16]]) -> Callable[[], None]:
        def body() -> None:
            classifier = make_classifier(engine, SILERO_THRESHOLD) if engine != "energy" else None
            v = EnergyVad(VadParams(), classifier=classifier)
            for f in source:
                v.process(f)
            if classifier is not None:
                classifier.close()
        return body

    def classifier_alone(engine: str) -> Callable[[], None]:
        def body() -> None:
            c = make_classifier(engine, SILERO_THRESHOLD)
            assert c is not None
            for f in near_frames:
                c.is_speech(f)
            c.close()
        return body

    return [
        ("far-end track: write a frame sent (outbound, μ-law decoded)", best(write_far)),
        ("echo canceller, assistant silent (nothing to cancel)", best(canceller(False))),
        ("echo canceller, assistant audible (delay search + NLMS)", best(canceller(True))),
        ("echo canceller, caller over the assistant, no echo (lag-by-lag check)",
         best(canceller(True, no_echo_frames))),
        ("VAD energy, quiet line", best(vad("energy", quiet_frames))),
        ("VAD energy, talk", best(vad("energy", near_frames))),
        ("VAD + WebRTC classifier, quiet line (not asked)", best(vad("webrtc", quiet_frames))),
        ("VAD + WebRTC classifier, talk", best(vad("webrtc", near_frames))),
        ("VAD + Silero classifier, quiet line (not asked)", best(vad("silero", quiet_frames))),
        ("VAD + Silero classifier, talk", best(vad("silero", near_frames))),
        ("WebRTC classifier alone, every frame", best(classifier_alone("webrtc"))),
        ("Silero classifier alone, every frame", best(classifier_alone("silero"))),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="minutes of each false-start condition")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, of: " + ", ".join(ENGINES))
    parser.add_argument("--silero-threshold", type=float, default=SILERO_DEFAULT)
    args = parser.parse_args(argv)
    global SILERO_THRESHOLD
    SILERO_THRESHOLD = args.silero_threshold
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines: {sorted(unknown)}")
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        print(f"needs {' and '.join(missing)}: apt-get install -y espeak-ng sox", file=sys.stderr)
        return 2
    n = int(args.minutes * 60 * RATE) // FRAME * FRAME
    noise = pink_noise(n * 1000 / RATE, RATE, dbfs=-45.0, seed=args.seed).astype(np.float64)[:n]
    assistant = loop(at_level(synthesize(ASSISTANT_TEXT, "en-us+f3"), ASSISTANT_DBFS), n)
    far = mulaw(assistant)
    delay = ECHO_DELAY_MS * RATE // 1000
    echo = np.zeros(n)
    echo[delay:] = telephone_band(far.astype(np.float64))[: n - delay] * 10 ** (ECHO_DB / 20)
    tv_raw = synthesize(TV_TEXT, "en-gb-x-rp+m5", speed=150)
    tv = {level: telephone_band(loop(at_level(tv_raw, level), n)) for level in (-38.0, -32.0)}
    lines = [synthesize(text, voice) for text, voice in CALLER_LINES]
    # Clatter: a kitchen, a keyboard, a door: bursts of band-limited noise, 30-300 ms, at
    # -30 to -20 dBFS, a few a second, over the pink noise.
    rng = np.random.default_rng(args.seed)
    clatter = np.zeros(n)
    at = 0
    while True:
        at += int(rng.uniform(0.2, 0.8) * RATE)
        length = int(rng.uniform(0.03, 0.3) * RATE)
        if at + length >= n:
            break
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 3))
        clatter[at : at + length] += at_level(burst, rng.uniform(-30.0, -20.0))
    clatter = telephone_band(clatter)
    # A fan or a car passing: the noise jumps 20 dB (-55 to -35 dBFS) every 10 s and back.
    step = pink_noise(n * 1000 / RATE, RATE, dbfs=-35.0, seed=args.seed + 1).astype(np.float64)[:n]
    step *= np.where((np.arange(n) // (10 * RATE)) % 2 == 0, 10 ** (-20 / 20), 1.0)

    print(f"# bench.vad_cost: {args.minutes:g} min per false-start condition; caller lines from espeak-ng")
    print()
    print("| engine | onset after noise, ms (p50 / max; missed) at " + " / ".join(f"{c:g}" for c in CALLER_LEVELS)
          + " dBFS | onset over the assistant + echo, ms (p50 / max; missed)"
          " | false starts/min: pink −45 | TV −38 | TV −32"  # noqa: RUF001 - the heading prints minus signs
          " | clatter | noise steps ±20 dB | echo −10 dB + pink + TV −38 |")  # noqa: RUF001 - minus signs, as above
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    costs: dict[str, tuple[float, float, float]] = {}
    for engine in engines:
        quiet_onsets: list[float] = []
        quiet_missed = 0
        for level in CALLER_LEVELS:
            for line in lines:
                near = np.concatenate([noise[:RATE], at_level(line, level) + noise[RATE : RATE + len(line)]])
                r = run(engine, mulaw(near), None)
                hits = [s for s in r.starts if s >= RATE // FRAME]
                if hits:
                    quiet_onsets.append((hits[0] - RATE // FRAME) * FRAME_MS + FRAME_MS)
                else:
                    quiet_missed += 1
        over: list[float] = []
        over_missed = 0
        for k, line in enumerate(lines):
            start = RATE * (3 + k)  # the canceller has heard 3+ s of the assistant
            seg = slice(0, start + len(line))
            near = echo[seg] + noise[seg]
            near[start:] += at_level(line, -26.0)
            r = run(engine, mulaw(near), far[seg])
            hits = [s for s in r.starts if s >= start // FRAME]
            if hits:
                over.append((hits[0] - start // FRAME) * FRAME_MS + FRAME_MS)
            else:
                over_missed += 1
        minutes = n / RATE / 60
        rates = [
            len(run(engine, mulaw(noise), None).starts) / minutes,
            len(run(engine, mulaw(noise + tv[-38.0]), None).starts) / minutes,
            len(run(engine, mulaw(noise + tv[-32.0]), None).starts) / minutes,
        ]
        rates.append(len(run(engine, mulaw(noise + clatter), None).starts) / minutes)
        rates.append(len(run(engine, mulaw(step), None).starts) / minutes)
        echo_run = run(engine, mulaw(echo + noise + tv[-38.0]), far)
        rates.append(len(echo_run.starts) / minutes)
        quiet_run = run(engine, mulaw(noise), None)
        costs[engine] = (
            float(np.mean(echo_run.canceller_us)) if echo_run.canceller_us else 0.0,
            float(np.mean(echo_run.vad_us)),
            float(np.mean(quiet_run.vad_us)),
        )

        def fmt(values: list[float], missed: int) -> str:
            if not values:
                return f"– ; {missed} missed"
            return f"{np.percentile(values, 50):.0f} / {max(values):.0f}; {missed} missed"

        print(f"| {engine} | {fmt(quiet_onsets, quiet_missed)} | {fmt(over, over_missed)} | "
              + " | ".join(f"{rate:.1f}" for rate in rates) + " |")
    print()
    print("| engine | canceller µs/frame (assistant audible) | VAD µs/frame (assistant audible, echo + TV)"
          " | VAD µs/frame (quiet line) |")
    print("|---|---:|---:|---:|")
    for engine, (c, v, q) in costs.items():
        print(f"| {engine} | {c:.1f} | {v:.1f} | {q:.1f} |")
    print()
    talk = mulaw(echo[: 30 * RATE] + noise[: 30 * RATE] + np.resize(at_level(lines[0], -26.0), 30 * RATE))
    print("| stage (30 s of frames, best of 3) | µs/frame |")
    print("|---|---:|")
    talk_no_echo = mulaw(noise[: 30 * RATE] + np.resize(at_level(lines[0], -26.0), 30 * RATE))
    for name, us in stage_costs(far[: 30 * RATE], talk, mulaw(noise[: 30 * RATE]), talk_no_echo):
        print(f"| {name} | {us:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
