import numpy as np
import pytest

from audio.signals import (
    dominant_frequency_hz,
    level_dbfs,
    pink_noise,
    silence,
    speech_like,
    tone,
    tone_level_dbfs,
    white_noise,
)


@pytest.mark.parametrize(("freq_hz", "rate_hz"), [(440.0, 8000), (1000.0, 8000), (3000.0, 16000)])
def test_tone_has_the_requested_level_and_frequency(freq_hz, rate_hz):
    pcm = tone(freq_hz, 1000, rate_hz, dbfs=-12.0)
    assert pcm.dtype == np.int16 and pcm.size == rate_hz
    assert level_dbfs(pcm) == pytest.approx(-12.0, abs=0.05)
    assert tone_level_dbfs(pcm, freq_hz, rate_hz) == pytest.approx(-12.0, abs=0.05)
    assert dominant_frequency_hz(pcm, rate_hz) == pytest.approx(freq_hz, abs=1.0)


def test_tone_level_ignores_other_frequencies():
    mix = tone(1000, 1000, 8000, dbfs=-10.0) + tone(2000, 1000, 8000, dbfs=-30.0)
    assert tone_level_dbfs(mix, 2000, 8000) == pytest.approx(-30.0, abs=0.1)
    assert tone_level_dbfs(mix, 1500, 8000) < -90.0


def test_silence_is_zeros_and_reports_the_level_floor():
    pcm = silence(20, 8000)
    assert pcm.dtype == np.int16 and pcm.tolist() == [0] * 160
    assert level_dbfs(pcm) == -120.0
    assert level_dbfs(np.zeros(0, dtype=np.int16)) == -120.0


def test_speech_like_has_its_level_and_stays_in_the_telephone_band():
    pcm = speech_like(2000, 8000, dbfs=-20.0)
    assert level_dbfs(pcm) == pytest.approx(-20.0, abs=0.1)
    power = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(pcm.size, 1 / 8000)
    assert power[freqs > 3500].sum() / power.sum() < 1e-3
    assert dominant_frequency_hz(pcm, 8000) < 1000.0


def test_speech_like_is_syllable_modulated_but_never_silent():
    pcm = speech_like(2000, 8000, dbfs=-20.0)
    frames = [level_dbfs(pcm[i : i + 160]) for i in range(0, pcm.size, 160)]
    assert 4.0 < max(frames) - min(frames) < 8.0


def test_speech_like_is_repeatable_per_seed():
    assert np.array_equal(speech_like(500, 8000, seed=3), speech_like(500, 8000, seed=3))
    assert not np.array_equal(speech_like(500, 8000, seed=3), speech_like(500, 8000, seed=4))


@pytest.mark.parametrize("make", [white_noise, pink_noise])
def test_noise_has_the_requested_level_and_length(make):
    pcm = make(1000, 8000, dbfs=-35.0, seed=2)
    assert pcm.dtype == np.int16 and pcm.size == 8000
    assert level_dbfs(pcm) == pytest.approx(-35.0, abs=0.1)


def test_pink_noise_falls_3_db_per_octave_and_white_noise_is_flat():
    def octave_db(pcm, lo):
        power = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
        freqs = np.fft.rfftfreq(pcm.size, 1 / 8000)
        return 10 * np.log10(power[(freqs >= lo) & (freqs < 2 * lo)].sum())

    pink = pink_noise(20000, 8000, dbfs=-20.0)
    white = white_noise(20000, 8000, dbfs=-20.0)
    # Per octave, 1/f noise carries equal power and white noise twice the octave below.
    assert octave_db(pink, 1000) - octave_db(pink, 500) == pytest.approx(0.0, abs=0.5)
    assert octave_db(white, 1000) - octave_db(white, 500) == pytest.approx(3.0, abs=0.5)
