"""G.711 mu-law <-> 16-bit linear PCM, by lookup table.

Both tables are built once at import from the G.711 definition, so a frame costs one
numpy gather each way: 160 samples decode or encode in about a microsecond.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["ULAW_SILENCE", "pcm16_to_ulaw", "ulaw_to_pcm16"]

# The mu-law code for a zero sample; a frame of it is silence on the wire.
ULAW_SILENCE = 0xFF

_BIAS = 0x84  # G.711 adds 132 (on 16-bit scale) before finding the segment.
_CLIP = 8159  # Largest 14-bit magnitude that still fits after the bias.
_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])


def _build_decode_table() -> NDArray[np.int16]:
    codes = np.arange(256, dtype=np.int32)
    inverted = ~codes & 0xFF
    sign = inverted & 0x80
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _build_encode_table() -> NDArray[np.uint8]:
    # G.711 works on 14-bit magnitudes: drop the two low bits first (as the reference
    # code and audioop do), so the table agrees with them at every segment edge.
    samples = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(samples < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(samples), _CLIP) + (_BIAS >> 2)
    # Segment = how many times the biased magnitude exceeds 0x3F, doubling each time.
    segment = np.searchsorted(_SEGMENT_ENDS, magnitude)
    mantissa = (magnitude >> (segment + 1)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (segment << 4) | mantissa)
    return (code ^ mask).astype(np.uint8)


_DECODE = _build_decode_table()
# Indexed by sample + 32768, which is the uint16 view of an int16 sample xor 0x8000.
_ENCODE = _build_encode_table()


# take() on a 1-D table is a plain gather; indexing with an array goes through numpy's
# general fancy-indexing path, a third slower for a 160-byte frame.
_decode = _DECODE.take
# Encoding looks up the uint16 view of each sample, so the table is laid out in that order.
_encode = np.concatenate((_ENCODE[0x8000:], _ENCODE[:0x8000])).take
_frombuffer = np.frombuffer
_UINT8 = np.dtype(np.uint8)


def ulaw_to_pcm16(ulaw: bytes) -> NDArray[np.int16]:
    """Decode mu-law bytes to int16 samples (a new array, one sample per byte)."""
    return _decode(_frombuffer(ulaw, dtype=_UINT8))


def pcm16_to_ulaw(pcm: NDArray[np.number]) -> bytes:
    """Encode int16 samples to mu-law bytes."""
    index = pcm.astype(np.int16, copy=False).view(np.uint16)
    codes: NDArray[np.uint8] = _encode(index)
    return codes.tobytes()
