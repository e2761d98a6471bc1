"""Our echo canceller beside WebRTC's AEC3, on the same echo: how much each removes, what it
leaves of a caller talking over it, and its cost.

    python -m bench.echo_libs            # AEC3 only where the `livekit` wheel is installed

The assistant's speech (espeak-ng, at -20 dBFS, 20 s, played through mu-law) comes back
10 dB down through the telephone band at 60, 150 and 280 ms, over line noise at -65 dBFS,
and mu-law again on its way in. ERLE (echo return loss enhancement) is over the last 10 s.
Then a caller at -30 dBFS talks over that echo (150 ms) from 12 s: "caller kept" is the
residual with the caller less the residual without, against the caller alone, over their
first 100 ms, the 200 ms after, and the next 1.7 s: a canceller that attenuates the caller
while the onset is being decided delays barge-in.

AEC3 comes from the `livekit` wheel (`rtc.AudioProcessingModule`, WebRTC's audio
processing through LiveKit's FFI library), which is not one of the bridge's requirements:
install it into the virtualenv to include it (`pip install livekit==1.2.0`). It takes
10 ms frames, so it gets two per caller frame; its cost is per 20 ms. Needs espeak-ng and
sox. docs/barge-in.md has the figures and the choice.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from audio import echo, mulaw
from bench._bargein_audio import BandPass, Corpus, at_level, missing_tools

RATE = 8000
FRAME = 160
LEAD_FRAMES = 10  # the Twilio actor writes the far end 200 ms ahead of the caller's frames
DELAYS_MS = (60, 150, 280)
DOUBLE_TALK_DELAY_MS = 150
CALLER_AT_S = 12.0
WINDOWS_S = ((0.0, 0.1), (0.1, 0.3), (0.3, 2.0))

Signal = NDArray[np.float64]
Canceller = Callable[[Signal, Signal], tuple[Signal, float]]  # (far, near) -> (residual, us per 20 ms)


def _line(x: Signal) -> Signal:
    """Through mu-law, as every frame on a phone line is."""
    pcm = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    out: Signal = mulaw.ulaw_to_pcm16(mulaw.pcm16_to_ulaw(pcm)).astype(np.float64)
    return out


def _echo(far: Signal, delay_ms: int) -> Signal:
    path = BandPass().whole(far) * 10 ** (-10 / 20)
    out = np.zeros_like(far)
    lag = delay_ms * RATE // 1000
    out[lag:] = path[: far.size - lag]
    out += np.random.default_rng(delay_ms).standard_normal(far.size) * 32767 * 10 ** (-65 / 20)
    return out


def ours(far: Signal, near: Signal) -> tuple[Signal, float]:
    track = echo.FarEndTrack(echo.track_keep_ms())
    canceller = echo.EchoCanceller(track)
    far_ulaw = mulaw.pcm16_to_ulaw(np.clip(far, -32768, 32767).astype(np.int16))
    pcm = np.clip(near, -32768, 32767).astype(np.int16)
    residual = np.zeros_like(near)
    frames = near.size // FRAME
    started = time.perf_counter()
    for k in range(frames):
        ahead = k + LEAD_FRAMES
        if ahead * FRAME < far.size:
            track.write(ahead * 20, far_ulaw[ahead * FRAME : (ahead + 1) * FRAME])
        estimate = canceller.process(pcm[k * FRAME : (k + 1) * FRAME], k * 20, speech_from_dbfs=-45.0)
        residual[k * FRAME : (k + 1) * FRAME] = estimate.residual
    return residual, (time.perf_counter() - started) / frames * 1e6


def aec3(far: Signal, near: Signal) -> tuple[Signal, float]:
    from livekit import rtc  # type: ignore[import-not-found]  # optional: see the module docstring

    apm = rtc.AudioProcessingModule(echo_cancellation=True)
    half = FRAME // 2
    far_pcm = np.clip(far, -32768, 32767).astype(np.int16)
    near_pcm = np.clip(near, -32768, 32767).astype(np.int16)
    residual = np.zeros_like(near)
    blocks = near.size // half
    started = time.perf_counter()
    for k in range(blocks):
        span = slice(k * half, (k + 1) * half)
        apm.process_reverse_stream(rtc.AudioFrame(far_pcm[span].tobytes(), RATE, 1, half))
        frame = rtc.AudioFrame(near_pcm[span].tobytes(), RATE, 1, half)
        apm.set_stream_delay_ms(0)  # the delay is the estimator's to find, as ours finds it
        apm.process_stream(frame)
        residual[span] = np.frombuffer(bytes(frame.data), dtype=np.int16)
    return residual, (time.perf_counter() - started) / blocks * 2 * 1e6


def _erle(near: Signal, residual: Signal) -> float:
    half = near.size // 2
    return float(10 * np.log10(np.sum(near[half:] ** 2) / max(float(np.sum(residual[half:] ** 2)), 1e-9)))


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    missing = missing_tools()
    if missing:
        print(f"bench.echo_libs needs {missing}", file=sys.stderr)
        return 2
    corpus = Corpus.make(rooms=False)
    far = _line(np.concatenate([at_level(line, -20.0) for line in corpus.assistant_8k] * 3)[: RATE * 20])
    caller = at_level(corpus.caller[4], -30.0)
    cancellers: dict[str, Canceller] = {"ours": ours}
    try:
        import livekit.rtc  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        print("livekit not installed: AEC3 left out (pip install livekit==1.2.0)", file=sys.stderr)
    else:
        cancellers["WebRTC AEC3 (livekit)"] = aec3

    print("| canceller | " + " | ".join(f"ERLE at {d} ms" for d in DELAYS_MS) + " | µs per 20 ms | caller kept: "
          + " / ".join(f"{int(a * 1000)}-{int(b * 1000)} ms" for a, b in WINDOWS_S) + " |")
    print("|---|" + "---:|" * (len(DELAYS_MS) + 2))
    for name, cancel in cancellers.items():
        erles, costs = [], []
        for delay in DELAYS_MS:
            near = _line(_echo(far, delay))
            residual, cost = cancel(far, near)
            erles.append(_erle(near, residual))
            costs.append(cost)
        base = _echo(far, DOUBLE_TALK_DELAY_MS)
        at = round(CALLER_AT_S * RATE)
        alone = np.zeros_like(base)
        alone[at : at + caller.size] = caller[: base.size - at]
        kept = cancel(far, _line(base + alone))[0] - cancel(far, _line(base))[0]
        ratios = []
        for a, b in WINDOWS_S:
            span = slice(at + round(a * RATE), at + round(b * RATE))
            ratios.append(10 * np.log10(np.sum(kept[span] ** 2) / np.sum(alone[span] ** 2)))
        print(f"| {name} | " + " | ".join(f"{e:.1f} dB" for e in erles) + f" | {min(costs):.0f}–{max(costs):.0f} | "
              + " / ".join(f"{r:+.1f} dB" for r in ratios) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
