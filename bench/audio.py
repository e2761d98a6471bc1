"""Streaming 2x resamplers side by side: ours, soxr ResampleStream (HQ), audioop.ratecv.

Run from the project root: ``python -m bench.audio``. Prints one markdown table, then the
ratio of our per-frame cost to audioop's and the VAD's per-frame cost.

Method. Every resampler runs as a stream, fed 20 ms frames (160 samples at 8 kHz, 320 at
16 kHz) in order; audioop gets its state passed from frame to frame.

* delay: 4 s of white noise band-limited to 3.4 kHz at 16 kHz (its even samples are the
  alias-free 8 kHz version). The output stream is cross-correlated with the reference at
  the output rate, interpolated 16x in the frequency domain; the peak's lag is the
  filter delay. Audio a resampler holds back does not shift that peak, so the mean
  hold-back (below) is added: the cell reads "filter + mean held back".
* held back: after each input frame, stream time in minus audio out so far, in ms of
  stream time; the column is the worst over the run. 0 means every frame in gives its
  frame out at once; soxr emits large blocks every few frames.
* image rejection (8k -> 16k): 1 kHz and 3 kHz tones at -6 dBFS; level of the tone minus
  level of its image at 8000 - f, over 1 s of steady output (tone_level_dbfs is a single-bin
  correlation, so other components do not leak in); the worse of the two.
* alias rejection (16k -> 8k): level of a 1 kHz tone's output minus the total level of a
  5.5 kHz tone's output (which would alias to 2.5 kHz), same input level (-6 dBFS).
* ripple: gain at 100, 200, 300, 500, 700, 1000 ... 3400 Hz (tones at -10 dBFS); max - min.
* us per frame: each process call on 2500 pre-made frames, timed with perf_counter_ns
  with the garbage collector off; best mean of 7 runs. audioop is timed on bytes in and
  out (its native form), the others on int16 arrays.
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import soxr

from audio.resample import Downsampler, Upsampler
from audio.signals import level_dbfs, speech_like, tone, tone_level_dbfs
from audio.vad import EnergyVad, VadParams

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAME_MS = 20
UP, DOWN = (8000, 16000), (16000, 8000)
PASSBAND_HZ = (100, 200, 300, 500, 700, 1000, 1500, 2000, 2500, 3000, 3200, 3400)
TIMED_FRAMES = 2500
TIMING_RUNS = 7

Rates = tuple[int, int]  # (input rate, output rate) in Hz
Stream = Callable[[np.ndarray], np.ndarray]
Factory = Callable[[Rates], Stream]


def ours(rates: Rates) -> Stream:
    return (Upsampler() if rates == UP else Downsampler()).process


def soxr_hq(rates: Rates) -> Stream:
    stream = soxr.ResampleStream(rates[0], rates[1], 1, dtype="int16", quality="HQ")
    process: Stream = stream.resample_chunk  # soxr is untyped (Any): give it the type it has
    return process


def audioop_ratecv(rates: Rates) -> Stream:
    state = None

    def process(pcm: np.ndarray) -> np.ndarray:
        nonlocal state
        out, state = audioop.ratecv(pcm.tobytes(), 2, 1, rates[0], rates[1], state)
        return np.frombuffer(out, dtype=np.int16)

    return process


def audioop_bytes(rates: Rates) -> Callable[[bytes], bytes]:
    state = None

    def process(frame: bytes) -> bytes:
        nonlocal state
        out, state = audioop.ratecv(frame, 2, 1, rates[0], rates[1], state)
        return out

    return process


RESAMPLERS: dict[str, Factory] = {
    "ours (half-band FIR, 51 taps)": ours,
    "soxr ResampleStream HQ": soxr_hq,
    "audioop.ratecv": audioop_ratecv,
}


def frame_len(rate_hz: int) -> int:
    return rate_hz * FRAME_MS // 1000


def stream_through(
    make: Factory, rates: Rates, pcm: np.ndarray
) -> tuple[np.ndarray, list[float]]:
    """Output of `pcm` fed in 20 ms frames, and the audio held back after each frame (ms)."""
    process = make(rates)
    step = frame_len(rates[0])
    chunks, held, emitted = [], [], 0
    for i in range(0, pcm.size - step + 1, step):
        out = process(pcm[i : i + step])
        chunks.append(out)
        emitted += out.size
        held.append((i + step) * 1000.0 / rates[0] - emitted * 1000.0 / rates[1])
    return np.concatenate(chunks), held


def band_limited_noise_16k(seconds: int, top_hz: float = 3400.0) -> np.ndarray:
    n = 16000 * seconds
    spectrum = np.fft.rfft(np.random.default_rng(0).standard_normal(n))
    spectrum[np.fft.rfftfreq(n, 1 / 16000) > top_hz] = 0
    x = np.fft.irfft(spectrum, n)
    peak = float(np.abs(x).max())
    return np.round(x / peak * 16000).astype(np.int16)


def lag_ms(reference: np.ndarray, output: np.ndarray, rate_hz: int, oversample: int = 16) -> float:
    """Delay of `output` behind `reference`: cross-correlation peak, 1/16-sample resolution."""
    n = 1 << int(np.ceil(np.log2(reference.size + output.size)))
    cross = np.fft.rfft(output.astype(float), n) * np.conj(np.fft.rfft(reference.astype(float), n))
    xc = np.fft.irfft(cross, n * oversample)  # zero-padded spectrum = band-limited interpolation
    window = int(0.2 * rate_hz) * oversample  # look for lags from 0 to 200 ms
    return float(np.argmax(xc[:window])) / oversample * 1000.0 / rate_hz


def measure_delay(make: Factory, rates: Rates) -> tuple[float, float, float]:
    """(filter delay ms, mean held back ms, worst held back ms) for one direction."""
    x16 = band_limited_noise_16k(4)
    pcm_in = x16[::2] if rates == UP else x16
    reference = x16 if rates == UP else x16[::2]
    out, held = stream_through(make, rates, pcm_in)
    return lag_ms(reference, out, rates[1]), float(np.mean(held)), max(held)


def steady(out: np.ndarray, rate_hz: int) -> np.ndarray:
    """One second of output, starting 50 ms in (past any start-up transient)."""
    start = rate_hz // 20
    return out[start : start + rate_hz]


def image_rejection_db(make: Factory) -> float:
    worst = np.inf
    for freq in (1000, 3000):
        out = steady(stream_through(make, UP, tone(freq, 1300, 8000, dbfs=-6.0))[0], 16000)
        image = tone_level_dbfs(out, 8000 - freq, 16000)
        worst = min(worst, tone_level_dbfs(out, freq, 16000) - image)
    return worst


def alias_rejection_db(make: Factory) -> float:
    wanted = steady(stream_through(make, DOWN, tone(1000, 1300, 16000, dbfs=-6.0))[0], 8000)
    alias = steady(stream_through(make, DOWN, tone(5500, 1300, 16000, dbfs=-6.0))[0], 8000)
    return tone_level_dbfs(wanted, 1000, 8000) - level_dbfs(alias)


def ripple_db(make: Factory, rates: Rates) -> float:
    gains = []
    for freq in PASSBAND_HZ:
        pcm = tone(freq, 1300, rates[0], dbfs=-10.0)
        out = steady(stream_through(make, rates, pcm)[0], rates[1])
        gains.append(tone_level_dbfs(out, freq, rates[1]) + 10.0)
    return max(gains) - min(gains)


def best_us_per_call(call: Callable[[Any], object], frames: Sequence[Any]) -> float:
    best = np.inf
    gc.disable()
    try:
        for _ in range(TIMING_RUNS):
            start = time.perf_counter_ns()
            for frame in frames:
                call(frame)
            best = min(best, (time.perf_counter_ns() - start) / len(frames) / 1000.0)
    finally:
        gc.enable()
    return best


def us_per_frame(make: Factory, rates: Rates) -> float:
    source = speech_like(TIMED_FRAMES * FRAME_MS, rates[0], dbfs=-20.0)
    step = frame_len(rates[0])
    frames = [source[i : i + step].copy() for i in range(0, source.size, step)]
    if make is audioop_ratecv:
        return best_us_per_call(audioop_bytes(rates), [f.tobytes() for f in frames])
    if make is ours and rates == UP:
        # As the codec runs it: into a buffer reused frame after frame.
        up, buffer = Upsampler(), np.empty(2 * step, dtype=np.int16)
        return best_us_per_call(lambda frame: up.process(frame, buffer), frames)
    return best_us_per_call(make(rates), frames)


def vad_us_per_frame() -> float:
    vad = EnergyVad(VadParams())
    source = speech_like(TIMED_FRAMES * FRAME_MS, 8000, dbfs=-20.0)
    frames = [source[i : i + 160].copy() for i in range(0, source.size, 160)]
    return best_us_per_call(vad.process, frames)


def main() -> None:
    rows, cost = [], {}
    for name, make in RESAMPLERS.items():
        up_delay, up_mean, up_worst = measure_delay(make, UP)
        down_delay, down_mean, down_worst = measure_delay(make, DOWN)
        cost[name] = (us_per_frame(make, UP), us_per_frame(make, DOWN))
        rows.append(
            [
                name,
                f"{up_delay:.2f} + {up_mean:.1f}",
                f"{down_delay:.2f} + {down_mean:.1f}",
                f"{up_worst:.1f}",
                f"{down_worst:.1f}",
                f"{image_rejection_db(make):.1f}",
                f"{alias_rejection_db(make):.1f}",
                f"{ripple_db(make, UP):.2f}",
                f"{ripple_db(make, DOWN):.2f}",
                f"{cost[name][0]:.2f}",
                f"{cost[name][1]:.2f}",
            ]
        )
    header = [
        "resampler",
        "delay 8k→16k ms (filter + mean held back)",
        "delay 16k→8k ms (filter + mean held back)",
        "held back worst 8k→16k ms",
        "held back worst 16k→8k ms",
        "image rejection 8k→16k dB",
        "alias rejection 16k→8k dB",
        "ripple 100 Hz–3.4 kHz 8k→16k dB",
        "ripple 100 Hz–3.4 kHz 16k→8k dB",
        "µs/frame 8k→16k",
        "µs/frame 16k→8k",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    ours_up, ours_down = cost["ours (half-band FIR, 51 taps)"]
    ref_up, ref_down = cost["audioop.ratecv"]
    print()
    print(
        f"ours / audioop.ratecv µs per 20 ms frame: 8k→16k {ours_up / ref_up:.2f}x, "
        f"16k→8k {ours_down / ref_down:.2f}x (target <= 2x)"
    )
    print(f"EnergyVad µs per 20 ms frame: {vad_us_per_frame():.2f}")


if __name__ == "__main__":
    main()
