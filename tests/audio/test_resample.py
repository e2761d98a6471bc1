import numpy as np
import pytest

from audio.resample import HALFBAND_TAPS, Downsampler, Upsampler
from audio.signals import level_dbfs, speech_like, tone, tone_level_dbfs, white_noise

FRAME_8K = 160  # 20 ms
FRAME_16K = 320
PASSBAND_HZ = [100, 200, 300, 500, 1000, 1500, 2000, 2500, 3000, 3200, 3400]


def in_frames(resampler, pcm, frame):
    chunks = [resampler.process(pcm[i : i + frame]) for i in range(0, pcm.size, frame)]
    return np.concatenate(chunks)


def band_limited_noise_16k(seconds, top_hz=3400.0, seed=0):
    """White noise at 16 kHz with nothing above `top_hz`, so x[::2] is alias-free."""
    n = 16000 * seconds
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    spectrum[np.fft.rfftfreq(n, 1 / 16000) > top_hz] = 0
    x = np.fft.irfft(spectrum, n)
    return np.round(x / np.abs(x).max() * 16000).astype(np.int16)


def lag_samples(reference, output):
    """Lag of `output` behind `reference` at the argmax of their cross-correlation."""
    n = reference.size + output.size
    xc = np.fft.irfft(np.fft.rfft(output, n) * np.conj(np.fft.rfft(reference, n)), n)
    return int(np.argmax(xc[: output.size]))


# Delay, and one 20 ms frame out for every 20 ms frame in


def test_upsampler_delay_is_as_declared_and_at_most_2_ms():
    x16 = band_limited_noise_16k(2)
    y16 = in_frames(Upsampler(), x16[::2], FRAME_8K)
    lag = lag_samples(x16.astype(float), y16.astype(float))
    assert lag == 25
    assert Upsampler.delay_ms == pytest.approx(lag / 16.0) and Upsampler.delay_ms <= 2.0
    # Delay-compensated, the output is the band-limited original to within -50 dB.
    residual = y16[lag:].astype(float) - x16[: y16.size - lag]
    assert 20 * np.log10(np.std(residual) / np.std(x16)) < -50.0


def test_downsampler_delay_is_as_declared_and_at_most_2_ms():
    x16 = band_limited_noise_16k(2)
    y8 = in_frames(Downsampler(), x16, FRAME_16K)
    lag = lag_samples(x16[::2].astype(float), y8.astype(float))
    assert lag == 12
    assert Downsampler.delay_ms == pytest.approx(lag / 8.0) and Downsampler.delay_ms <= 2.0
    residual = y8[lag:].astype(float) - x16[::2][: y8.size - lag]
    assert 20 * np.log10(np.std(residual) / np.std(x16)) < -50.0


def test_every_20_ms_frame_in_gives_one_20_ms_frame_out_at_once():
    up, down = Upsampler(), Downsampler()
    pcm = white_noise(1000, 16000, dbfs=-20.0)
    for i in range(0, pcm.size, FRAME_16K):
        out8 = down.process(pcm[i : i + FRAME_16K])
        assert out8.dtype == np.int16 and out8.size == FRAME_8K
        out16 = up.process(out8)
        assert out16.dtype == np.int16 and out16.size == FRAME_16K


def test_a_click_comes_out_in_the_same_frame_after_the_filter_delay():
    frame = np.zeros(FRAME_8K, dtype=np.int16)
    frame[100] = 20000
    up = Upsampler()
    up.process(np.zeros(FRAME_8K, dtype=np.int16))
    out = up.process(frame)
    assert int(np.argmax(np.abs(out))) == 2 * 100 + 25


# Exact output lengths


@pytest.mark.parametrize("n", [0, 1, 2, 7, 159, 160, 161, 1000])
def test_upsampler_returns_exactly_twice_the_input_length(n):
    assert Upsampler().process(np.ones(n, dtype=np.int16)).size == 2 * n


def test_downsampler_carries_an_odd_sample_into_the_next_call():
    down = Downsampler()
    carried = 0
    for n in [1, 1, 3, 0, 320, 5, 2, 1, 319, 2]:
        out = down.process(np.ones(n, dtype=np.int16))
        assert out.size == (carried + n) // 2
        carried = (carried + n) % 2
    assert carried == 0


def test_empty_input_gives_empty_int16_output():
    for resampler in (Upsampler(), Downsampler()):
        out = resampler.process(np.zeros(0, dtype=np.int16))
        assert out.dtype == np.int16 and out.size == 0


# No clicks at frame borders: chunking never changes a sample


@pytest.mark.parametrize("make", [Upsampler, Downsampler])
def test_frames_of_any_size_give_the_same_samples_as_one_piece(make):
    rng = np.random.default_rng(7)
    pcm = white_noise(3000, 8000, dbfs=-6.0, seed=7)
    pcm[::97] = 32767  # full-scale spikes make the saturation path run too
    whole = make().process(pcm)
    assert np.array_equal(in_frames(make(), pcm, FRAME_8K), whole)
    sizes = rng.integers(0, 700, size=200)
    chunked, pos, resampler = [], 0, make()
    for size in sizes:
        chunked.append(resampler.process(pcm[pos : pos + size]))
        pos += size
    chunked.append(resampler.process(pcm[pos:]))
    assert np.array_equal(np.concatenate(chunked), whole)


@pytest.mark.parametrize("make", [Upsampler, Downsampler])
def test_reset_forgets_history(make):
    pcm = white_noise(200, 8000, dbfs=-10.0, seed=1)
    used = make()
    used.process(white_noise(333, 8000, dbfs=-3.0, seed=2)[:2663])  # odd: leaves a carry
    used.reset()
    assert np.array_equal(used.process(pcm), make().process(pcm))


# Image and alias rejection, passband


@pytest.mark.parametrize("freq_hz", [1000, 3000])
def test_upsampler_image_of_a_tone_is_at_least_60_db_down(freq_hz):
    pcm = tone(freq_hz, 1100, 8000, dbfs=-6.0)
    out = in_frames(Upsampler(), pcm, FRAME_8K)[800:16800]
    wanted = tone_level_dbfs(out, freq_hz, 16000)
    image = tone_level_dbfs(out, 8000 - freq_hz, 16000)
    assert wanted == pytest.approx(-6.0, abs=0.1)
    assert wanted - image >= 60.0


def test_upsampler_images_of_the_whole_telephone_band_are_at_least_60_db_down():
    for freq_hz in range(300, 3401, 100):
        pcm = tone(freq_hz, 600, 8000, dbfs=-6.0)
        out = in_frames(Upsampler(), pcm, FRAME_8K)[800:8800]
        image = tone_level_dbfs(out, 8000 - freq_hz, 16000)
        assert tone_level_dbfs(out, freq_hz, 16000) - image >= 60.0, freq_hz


def test_downsampler_alias_of_a_5500_hz_tone_is_at_least_60_db_below_a_1_khz_tone():
    def out_of(freq_hz):
        pcm = tone(freq_hz, 1100, 16000, dbfs=-6.0)
        return in_frames(Downsampler(), pcm, FRAME_16K)[400:8400]

    reference = tone_level_dbfs(out_of(1000), 1000, 8000)
    assert reference == pytest.approx(-6.0, abs=0.1)
    assert reference - level_dbfs(out_of(5500)) >= 60.0


def test_downsampler_rejects_everything_from_4600_hz_up_by_at_least_60_db():
    for freq_hz in range(4600, 7901, 300):
        pcm = tone(freq_hz, 600, 16000, dbfs=-6.0)
        out = in_frames(Downsampler(), pcm, FRAME_16K)[400:4400]
        assert level_dbfs(out) <= -66.0, freq_hz


@pytest.mark.parametrize("freq_hz", PASSBAND_HZ)
def test_upsampler_passband_is_flat_within_1_db(freq_hz):
    pcm = tone(freq_hz, 1100, 8000, dbfs=-10.0)
    out = in_frames(Upsampler(), pcm, FRAME_8K)[800:16800]
    assert tone_level_dbfs(out, freq_hz, 16000) == pytest.approx(-10.0, abs=1.0)


@pytest.mark.parametrize("freq_hz", PASSBAND_HZ)
def test_downsampler_passband_is_flat_within_1_db(freq_hz):
    pcm = tone(freq_hz, 1100, 16000, dbfs=-10.0)
    out = in_frames(Downsampler(), pcm, FRAME_16K)[400:8400]
    assert tone_level_dbfs(out, freq_hz, 8000) == pytest.approx(-10.0, abs=1.0)


# Saturation


def full_scale_square(n, period):
    return np.where((np.arange(n) // (period // 2)) % 2 == 0, 32767, -32768).astype(np.int16)


def test_upsampler_saturates_overshoot_instead_of_wrapping():
    pcm = full_scale_square(4000, 16)
    zero_stuffed = np.zeros(2 * pcm.size)
    zero_stuffed[::2] = 2.0 * pcm
    ideal = np.convolve(zero_stuffed, HALFBAND_TAPS)[: 2 * pcm.size]
    assert ideal.max() > 34000 and ideal.min() < -34000  # the filter does overshoot
    out = in_frames(Upsampler(), pcm, FRAME_8K)
    assert out.max() == 32767 and out.min() == -32768
    assert np.abs(out - np.clip(np.rint(ideal), -32768, 32767)).max() <= 1


def test_downsampler_saturates_overshoot_instead_of_wrapping():
    pcm = full_scale_square(8000, 32)
    ideal = np.convolve(pcm.astype(float), HALFBAND_TAPS)[1 : pcm.size : 2]
    assert ideal.max() > 34000 and ideal.min() < -34000
    out = in_frames(Downsampler(), pcm, FRAME_16K)
    assert out.max() == 32767 and out.min() == -32768
    assert np.abs(out - np.clip(np.rint(ideal), -32768, 32767)).max() <= 1


def test_upsampling_into_a_reused_buffer_gives_the_same_samples():
    pcm = speech_like(400, 8000, dbfs=-20.0)
    plain, reused = Upsampler(), Upsampler()
    buffer = np.empty(320, dtype=np.int16)
    for i in range(0, pcm.size, 160):
        expected = plain.process(pcm[i : i + 160])
        got = reused.process(pcm[i : i + 160], buffer)
        assert np.array_equal(got, expected)
        assert np.shares_memory(got, buffer)
