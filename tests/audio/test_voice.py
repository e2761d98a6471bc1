"""The speech classifiers behind VAD_ENGINE: Silero and WebRTC, each from its wheel."""

from __future__ import annotations

import numpy as np
import pytest

from audio.signals import pink_noise, tone
from audio.voice import SileroClassifier, WebrtcClassifier, make_classifier
from tests.integration.speech import needs_espeak, say

FRAME = 160


def speech_frames(classifier, pcm) -> float:
    """Share of frames called speech."""
    calls = [classifier.is_speech(pcm[i : i + FRAME]) for i in range(0, len(pcm) - FRAME + 1, FRAME)]
    return sum(calls) / len(calls)


@needs_espeak
@pytest.mark.parametrize("engine", ["silero", "webrtc"])
def test_a_voice_is_speech_and_steady_noise_and_a_tone_are_not(engine):
    classifier = make_classifier(engine, 0.3)
    try:
        voice = say("Hold on a second, can you tell me how much that costs?", -26.0)
        assert speech_frames(classifier, voice) > 0.6
        classifier.skip()
        if engine == "silero":
            # WebRTC's GMM calls loud pink noise and a tone speech (every frame, in mode 3):
            # that is why it is only the baseline, and why the level checks come first.
            assert speech_frames(classifier, pink_noise(2000, 8000, dbfs=-30.0, seed=1)) < 0.05
            classifier.skip()
            assert speech_frames(classifier, tone(440.0, 2000, 8000, dbfs=-16.0)) < 0.05
    finally:
        classifier.close()


def test_silero_models_are_reused_by_later_calls():
    first = SileroClassifier(0.3)
    model = first._model
    first.close()
    second = SileroClassifier(0.3)
    try:
        assert second._model is model  # no second 45 ms load, no second 9 MiB
    finally:
        second.close()


def test_both_take_the_cancellers_float_residual():
    residual = (pink_noise(40, 8000, dbfs=-30.0, seed=2)[:FRAME]).astype(np.float32)
    for classifier in (SileroClassifier(0.3), WebrtcClassifier()):
        try:
            assert classifier.is_speech(residual) in (True, False)
        finally:
            classifier.close()


def test_energy_needs_no_classifier_and_an_unknown_engine_is_refused():
    assert make_classifier("energy", 0.3) is None
    with pytest.raises(ValueError, match="unknown VAD engine"):
        make_classifier("neural", 0.3)
