import warnings

import numpy as np

from audio.mulaw import ULAW_SILENCE, pcm16_to_ulaw, ulaw_to_pcm16

with warnings.catch_warnings():
    # Deprecated on 3.11-3.12, gone in 3.13 where the audioop-lts package provides it.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


def test_every_mulaw_code_decodes_like_audioop():
    expected = np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), dtype=np.int16)
    np.testing.assert_array_equal(ulaw_to_pcm16(ALL_CODES), expected)


def test_every_16_bit_value_encodes_like_audioop():
    expected = audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2)
    assert pcm16_to_ulaw(ALL_SAMPLES) == expected


def test_decoded_samples_encode_back_to_their_code_except_negative_zero():
    decoded = ulaw_to_pcm16(ALL_CODES)
    recoded = np.frombuffer(pcm16_to_ulaw(decoded), dtype=np.uint8)
    # 0x7F is "-0": it decodes to 0, which encodes as the positive zero 0xFF.
    differs = np.flatnonzero(recoded != np.arange(256))
    assert differs.tolist() == [0x7F]
    assert recoded[0x7F] == 0xFF


def test_silence_code_decodes_to_zero_and_zero_encodes_to_it():
    assert ulaw_to_pcm16(bytes([ULAW_SILENCE] * 160)).tolist() == [0] * 160
    assert pcm16_to_ulaw(np.zeros(160, dtype=np.int16)) == bytes([ULAW_SILENCE] * 160)


def test_a_frame_round_trips_in_size_and_dtype():
    frame = ulaw_to_pcm16(bytes(range(160)))
    assert frame.dtype == np.int16 and frame.size == 160
    assert len(pcm16_to_ulaw(frame)) == 160


def test_empty_input_gives_empty_output():
    assert ulaw_to_pcm16(b"").size == 0
    assert pcm16_to_ulaw(np.zeros(0, dtype=np.int16)) == b""
