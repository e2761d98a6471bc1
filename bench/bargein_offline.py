"""Barge-in offline: the echo canceller and the VAD on synthesised speech, no sockets, in seconds.

bench.bargein measures over real sockets through a real server, where a loaded machine's
clocks add their own jitter and no two runs are alike. This bench feeds the same pure code
(audio/echo.py, audio/vad.py) frame by frame as the VAD actor does, on a timeline it
controls, so a change to either can be judged in a minute, the same way every run:

- **steps**: a silent caller while the assistant talks; its echo (-10 dB, telephone band,
  200 ms) comes back through a path whose delay steps every 0.2-1 s, as real-time delivery
  makes it (both play clocks start again after each late frame): false onsets.
- **over**: a caller at -30 or -35 dBFS starts 1.5-3 s into the assistant's turn, its echo
  steady or stepping: onset latency from the caller's first sample (p50 / p95), missed.
- **first**: a caller at -30 dBFS talking from the assistant's first audio, echo none or
  -10 dB at 40-300 ms, on a quiet line or in the room below: onset latency from that first
  audio (p50 / p95 / worst), over 400 ms.
- **turns**: a silent caller while the assistant speaks three turns with 0.8-2 s of
  silence between them; its echo (-10 or -6 dB, 40-300 ms) comes back through a path whose
  delay steps by up to 8 ms either way at each new turn, as both play clocks start again
  after a silence: false onsets.
- **room**: a silent caller in a room (pink noise -45 dBFS, a TV -38 dBFS) from the call's
  first frame, the assistant talking from the start, its echo -10 dB at 40-300 ms (issue
  13's false barge-in condition): false onsets, and how many came in the call's first 1.5 s
  (where only its level tells a TV's syllable from a caller's first word).

    python -m bench.bargein_offline [--ref [LABEL=]COMMIT ...] [--trials N]

`--ref` runs the same trials on another commit's audio code (a temporary git worktree),
side by side. Needs espeak-ng and sox (the speech is made at run time, as bench.bargein's).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

FRAME = 160  # 20 ms at 8 kHz
FRAME_MS = 20
LEAD_MS = 200  # the Twilio actor writes the far end this far ahead of the caller's frames
ASSISTANT_DBFS = -20.0
ECHO_DB = -10.0
STEPS_MS = ((-1, 1), (-2, 3), (-3, 5))  # how far each step of the echo path may go
TURN_GAP_S = (0.8, 2.0)  # silence between the assistant's turns
TURN_STEP_MS = 8  # how far the echo path may step at each new turn, either way
_ROOT = Path(__file__).resolve().parents[1]


# -- the worker: runs in a subprocess against one tree's audio code -------------------------

class _Sides:
    """One tree's audio code, imported from the tree the worker was started for."""

    def __init__(self) -> None:
        from audio import echo, mulaw, vad  # the tree's, by sys.path (see _worker)

        self.echo, self.vad, self.mulaw = echo, vad, mulaw
        self.tells_speech_from = "speech_from_dbfs" in inspect.signature(echo.EchoCanceller.process).parameters

    def telephone(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Through mu-law, as every frame on the line is."""
        pcm = np.clip(np.round(x), -32768, 32767).astype(np.int16)
        return self.mulaw.ulaw_to_pcm16(self.mulaw.pcm16_to_ulaw(pcm)).astype(np.float64)


def _echo(far: NDArray[np.float64], band: NDArray[np.float64], delay_ms: int, rng: np.random.Generator | None,
          step_ms: tuple[int, int] = (0, 0)) -> NDArray[np.float64]:
    """The far end's echo, -10 dB, through `band` (the telephone band's taps), `delay_ms` late;
    stepping if `rng` is given."""
    delays = np.full(len(far), delay_ms * 8, dtype=np.int64)
    if rng is not None:
        at, delay = 0, delay_ms * 8
        while at < len(far):
            until = min(len(far), at + int(8000 * rng.uniform(0.2, 1.0)))
            delays[at:until] = delay
            at = until
            delay = int(np.clip(delay + rng.integers(step_ms[0] * 8, step_ms[1] * 8 + 1), (delay_ms - 25) * 8,
                                (delay_ms + 25) * 8))
    return _through_path(far, band, ECHO_DB, delays)


def _through_path(far: NDArray[np.float64], band: NDArray[np.float64], gain_db: float,
                  delays: NDArray[np.int64]) -> NDArray[np.float64]:
    """`far` through `band`, `gain_db` down, each sample `delays` samples late."""
    echo = np.convolve(far, band)[: len(far)] * 10 ** (gain_db / 20)
    source = np.arange(len(far)) - delays
    return np.where(source >= 0, echo[np.clip(source, 0, len(far) - 1)], 0.0)


def _turns_far(sides: _Sides, assistant: list[NDArray[np.float64]], rng: np.random.Generator,
               turns: int) -> tuple[NDArray[np.float64], list[int]]:
    """`turns` of the assistant's lines with 0.8-2 s of silence between them (and 1 s after),
    and the sample where each starts."""
    parts, starts, at = [], [], 0
    for k in range(turns):
        if k:
            gap = int(8000 * rng.uniform(*TURN_GAP_S))
            parts.append(np.zeros(gap))
            at += gap
        line = assistant[int(rng.integers(len(assistant)))]
        starts.append(at)
        parts.append(line)
        at += len(line)
    parts.append(np.zeros(8000))
    return sides.telephone(np.concatenate(parts)), starts


def _echo_stepping_at(far: NDArray[np.float64], band: NDArray[np.float64], delay_ms: int, gain_db: float,
                      starts: list[int], rng: np.random.Generator) -> NDArray[np.float64]:
    """The far end's echo, `gain_db` down through `band`, `delay_ms` late; the delay steps by up
    to TURN_STEP_MS either way in the silence before each turn after the first."""
    delays = np.full(len(far), delay_ms * 8, dtype=np.int64)
    for start in starts[1:]:
        delays[start - 4000 :] += int(rng.integers(-TURN_STEP_MS * 8, TURN_STEP_MS * 8 + 1))
    return _through_path(far, band, gain_db, delays)


def _onsets(sides: _Sides, far: NDArray[np.float64] | None, near: NDArray[np.float64]) -> list[int]:
    """Run the canceller and the VAD over `near` as the VAD actor does; the stream ms each onset ends."""
    track = sides.echo.FarEndTrack()
    canceller = sides.echo.EchoCanceller(track)
    vad = sides.vad.EnergyVad(sides.vad.VadParams())
    started = sides.vad.VadTransition.STARTED
    far_ulaw = b"" if far is None else sides.mulaw.pcm16_to_ulaw(np.clip(np.round(far), -32768, 32767).astype(np.int16))
    near_pcm = sides.telephone(near).astype(np.int16)
    written, onsets = 0, []
    for k in range(len(near) // FRAME):
        t = k * FRAME_MS
        while written * FRAME < len(far_ulaw) and written * FRAME_MS < t + LEAD_MS:
            frame = far_ulaw[written * FRAME : (written + 1) * FRAME]
            if far is not None and np.abs(far[written * FRAME : (written + 1) * FRAME]).max() > 0:
                track.write(written * FRAME_MS, frame)  # the Twilio actor writes audio, not silence
            written += 1
        told: dict[str, Any] = {"caller_speaking": vad.speaking}
        if sides.tells_speech_from:
            told["speech_from_dbfs"] = vad.speech_from_dbfs
        estimate = canceller.process(near_pcm[k * FRAME : (k + 1) * FRAME], t, **told)
        if vad.process(estimate.residual, echo_dbfs=estimate.floor_dbfs) is started:
            onsets.append(t + FRAME_MS)
    return onsets


def _turn(sides: _Sides, assistant: list[NDArray[np.float64]], rng: np.random.Generator,
          seconds: float) -> NDArray[np.float64]:
    """The assistant's audio as sent: one of its lines (at -20 dBFS), padded to `seconds`."""
    line = assistant[int(rng.integers(len(assistant)))]
    out = np.zeros(int(8000 * seconds))
    out[: min(len(line), len(out))] = line[: len(out)]
    return sides.telephone(out)


def _quiet(n: int, seed: int) -> NDArray[np.float64]:
    """A quiet line: white noise at -55 dBFS."""
    noise: NDArray[np.float64] = np.random.default_rng(seed).standard_normal(n) * 32767 * 10 ** (-55 / 20)
    return noise


def _in_room(sides: _Sides, sounds: dict[str, Any], trial: int,
             seconds: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Trial `trial` of the room: the assistant's turn, and what the caller's phone hears of it
    (its echo, -10 dB at 40-300 ms) over pink noise at -45 dBFS and a TV at -38 dBFS."""
    rng = np.random.default_rng(4000 + trial)
    far = _turn(sides, sounds["assistant"], rng, seconds)
    near = _echo(far, sounds["band"], int(rng.integers(40, 301)), None)
    for track in (sounds["pink"], sounds["tv"]):
        start = int(rng.integers(len(track) - len(near)))
        near += track[start : start + len(near)]
    return far, near


def _worker(corpus_path: str, trials: int) -> dict[str, Any]:
    with open(corpus_path, "rb") as source:
        sounds = pickle.load(source)  # noqa: S301 - our own temp file, written by _corpus in this run
    assistant, callers, band = sounds["assistant"], sounds["callers"], sounds["band"]
    sides = _Sides()
    result: dict[str, Any] = {"steps": {}, "turns": {}, "over": {}, "first": {}, "room": {}}
    for step in STEPS_MS:
        count, seconds = 0, 0.0
        for trial in range(trials):
            rng = np.random.default_rng(1000 + trial)
            far = _turn(sides, assistant, rng, 8.0)
            near = _echo(far, band, 200, rng, step) + _quiet(len(far), trial)
            count += len(_onsets(sides, far, near))
            seconds += len(far) / 8000
        result["steps"][f"{step[0]:+d}..{step[1]:+d} ms"] = [count, seconds / 60]
    for gain_db in (-10.0, -6.0):
        count, seconds = 0, 0.0
        for trial in range(trials):
            rng = np.random.default_rng(1500 + trial)
            far, starts = _turns_far(sides, assistant, rng, 3)
            near = _echo_stepping_at(far, band, int(rng.integers(40, 301)), gain_db, starts, rng)
            count += len(_onsets(sides, far, near + _quiet(len(far), trial)))
            seconds += len(far) / 8000
        result["turns"][f"echo {gain_db:g} dB"] = [count, seconds / 60]
    for level in (-30.0, -35.0):
        for stepping in (False, True):
            latencies, missed, early = [], 0, 0
            for trial in range(trials):
                rng = np.random.default_rng(2000 + trial)
                start = 1.5 + 1.5 * trial / max(1, trials - 1)
                far = _turn(sides, assistant, rng, start + 1.5)
                near = _echo(far, band, int(rng.integers(40, 301)), rng if stepping else None, (-2, 3))
                near += _quiet(len(far), trial)
                speech = callers[level][trial % len(callers[level])]
                at = int(8000 * start)
                near[at : at + len(speech)] += speech[: len(near) - at]
                onsets = _onsets(sides, far, near)
                early += any(t <= start * 1000 for t in onsets)
                after = [t for t in onsets if t > start * 1000]
                if after:
                    latencies.append(after[0] - start * 1000)
                else:
                    missed += 1
            result["over"][f"{level:g} dBFS, echo {'stepping' if stepping else 'steady'}"] = [latencies, missed, early]
    first_callers = callers[-30.0]

    def first_onsets(far: NDArray[np.float64], near: NDArray[np.float64], trial: int, into: list[Any]) -> None:
        """A -30 dBFS caller talking from the first frame over `near`: the first onset, or a miss."""
        speech = first_callers[trial % len(first_callers)]
        near[: len(speech)] += speech[: len(near)]
        onsets = _onsets(sides, far, near)
        if onsets:
            into[0].append(onsets[0])
        else:
            into[1] += 1

    for delay in (None, 40, 120, 200, 300):
        row: list[Any] = [[], 0]
        for trial in range(trials):
            rng = np.random.default_rng(3000 + trial)
            far = _turn(sides, assistant, rng, 3.0)
            near = _quiet(len(far), trial)
            if delay is not None:
                near += _echo(far, band, delay, None)
            first_onsets(far, near, trial, row)
        result["first"]["no echo" if delay is None else f"echo {delay} ms"] = row
    row = [[], 0]
    for trial in range(trials):
        far, near = _in_room(sides, sounds, trial, 3.0)
        first_onsets(far, near, trial, row)
    result["first"]["in the room below, echo 40-300 ms"] = row
    count, early, seconds = 0, 0, 0.0
    for trial in range(trials):
        far, near = _in_room(sides, sounds, trial, 8.0)
        onsets = _onsets(sides, far, near)
        count += len(onsets)
        early += sum(1 for t in onsets if t <= 1500)
        seconds += len(far) / 8000
    result["room"]["echo -10 dB, pink -45, TV -38"] = [count, early, seconds / 60]
    return result


# -- the parent: makes the speech once, runs each side, prints the tables -----------------

def _corpus(path: Path, seed: int) -> None:
    from bench._bargein_audio import BandPass, Corpus, at_level, missing_tools

    missing = missing_tools()
    if missing:
        raise SystemExit(f"bench.bargein_offline needs {missing}")
    corpus = Corpus.make(seed=seed)
    impulse = np.zeros(128)
    impulse[0] = 1.0
    sounds = {
        "assistant": [at_level(line, ASSISTANT_DBFS) for line in corpus.assistant_8k],
        "callers": {level: [at_level(line, level) for line in corpus.caller] for level in (-30.0, -35.0)},
        "pink": corpus.pink * 10 ** (-45 / 20),  # the corpus's rooms are at 0 dBFS
        "tv": corpus.tv * 10 ** (-38 / 20),
        "band": BandPass().whole(impulse),  # the telephone band's taps, as bench.bargein's echo
    }
    with path.open("wb") as out:
        pickle.dump(sounds, out)


def _run_side(tree: Path, corpus: Path, trials: int) -> dict[str, Any]:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree), "--corpus", str(corpus),
         "--trials", str(trials)],
        cwd=tree, env=env, check=True, capture_output=True, text=True, timeout=1800,
    )
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def _pct(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.0f}" if values else "–"


def _steps_cell(value: list[Any]) -> str:
    count, minutes = value
    return f"{count} in {minutes:.1f} min"


def _over_cell(value: list[Any]) -> str:
    latencies, missed, early = value
    return f"{_pct(latencies, 50)} / {_pct(latencies, 95)}; {missed} ({early})"


def _first_cell(value: list[Any]) -> str:
    latencies, missed = value
    late = sum(1 for v in latencies if v > 400)
    worst = f"{max(latencies):.0f}" if latencies else "–"
    return f"{_pct(latencies, 50)} / {_pct(latencies, 95)} / {worst}; {late}; {missed}"


def _room_cell(value: list[Any]) -> str:
    count, early, minutes = value
    return f"{count} ({early}) in {minutes:.1f} min"


def _print(sides: dict[str, dict[str, Any]], trials: int) -> None:
    tables = [
        ("steps", f"**Echo path stepping, silent caller**: false onsets ({trials} eight-second turns each)",
         "steps every 0.2-1 s", _steps_cell),
        ("turns", f"**Echo path stepping at each new turn, silent caller**: false onsets ({trials} calls of "
         f"three turns each, steps of up to {TURN_STEP_MS} ms either way)", "echo 40-300 ms", _steps_cell),
        ("over", f"**Caller over the assistant** (-2..+3 ms steps when stepping; {trials} trials each): onset ms "
         "p50 / p95; missed (trials where the echo had passed for a caller before the caller spoke)",
         "caller", _over_cell),
        ("first", f"**Caller at -30 dBFS from the assistant's first audio** ({trials} trials each): onset ms "
         "p50 / p95 / worst; over 400 ms; missed", "echo", _first_cell),
        ("room", f"**Silent caller in a room from the call's first frame** ({trials} eight-second calls each): "
         "false onsets (in the first 1.5 s)", "condition", _room_cell),
    ]
    labels = list(sides)
    for group, title, heading, cell in tables:
        print(title)
        print()
        print(f"| {heading} | " + " | ".join(labels) + " |")
        print("|---|" + "---:|" * len(labels))
        for key in sides[labels[0]][group]:
            print(f"| {key} | " + " | ".join(cell(sides[label][group][key]) for label in labels) + " |")
        print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", action="append", default=[], metavar="[LABEL=]COMMIT",
                        help="also run another commit's audio code, side by side (repeatable)")
    parser.add_argument("--trials", type=int, default=40, help="trials per condition (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="the speech (default %(default)s)")
    parser.add_argument("--worker", metavar="TREE", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.corpus, args.trials)))
        return 0
    from bench._checkout import old_tree, short_name

    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bargein-offline-") as tmp:
        corpus = Path(tmp) / "corpus.pickle"
        _corpus(corpus, args.seed)
        for ref in args.ref:
            label, _, commit = ref.rpartition("=")
            label = label or short_name(commit)
            with old_tree(commit) as tree:
                results[f"{label} ({short_name(commit)})"] = _run_side(tree, corpus, args.trials)
        results["this"] = _run_side(_ROOT, corpus, args.trials)
    print(f"# bench.bargein_offline: seed {args.seed}, {args.trials} trials per condition, "
          f"{time.monotonic() - started:.0f} s")
    print()
    _print(results, args.trials)
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:
        # Import the worker tree's audio code, not this checkout's (and not bench/audio.py,
        # which sits beside this file on sys.path[0]).
        tree = sys.argv[sys.argv.index("--worker") + 1]
        sys.path[:] = [tree] + [p for p in sys.path[1:] if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.exit(main())
