"""CodecActor alone: caller audio to VAPI and the VAD, VAPI's audio to Twilio."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from actors.call import CallContext
from actors.codec import CodecActor
from actors.messages import AssistantAudio, AssistantUlaw, CallerAudio, CallerPcm, UplinkAudio
from audio.mulaw import pcm16_to_ulaw, ulaw_to_pcm16
from audio.resample import Downsampler, Upsampler
from audio.signals import tone
from tests.actors.fakes import ProbeParent


def test_caller_audio_goes_to_vapi_as_16k_pcm_kept_for_replay_and_to_the_vad_as_8k_pcm(
    call: CallContext, parent: ProbeParent
) -> None:
    ulaw = [pcm16_to_ulaw(tone(1000.0, 20, 8000, -20.0, phase=n)) for n in range(2)]
    ref = parent.start(CodecActor)
    for n, frame in enumerate(ulaw):
        ref.tell(CallerAudio(frame, n * 20, 1000 + n))
    uplink = parent.wait_for("vapi", UplinkAudio, count=2)
    pcm = parent.wait_for("vad", CallerPcm, count=2)

    upsampler = Upsampler()  # the same filter, carried across frames
    expected = [upsampler.process(ulaw_to_pcm16(frame)).tobytes() for frame in ulaw]
    assert [(u.seq, u.data, u.received_ns) for u in uplink] == [(1, expected[0], 1000), (2, expected[1], 1001)]
    assert all(len(u.data) == 640 for u in uplink)  # 20 ms at 16 kHz, 16 bits
    assert call.uplink.pending_replay() == [(1, expected[0]), (2, expected[1])]
    assert pcm == [CallerPcm(ulaw_to_pcm16(frame).tobytes(), n * 20) for n, frame in enumerate(ulaw)]


def test_an_odd_byte_from_vapi_is_carried_into_the_next_frame(call: CallContext, parent: ProbeParent) -> None:
    pcm16k = tone(440.0, 40, 16000, -12.0).astype("<i2").tobytes()  # 1280 bytes
    ref = parent.start(CodecActor)
    # VAPI splits a sample across two messages; alone, the second would be misaligned noise.
    for chunk in (pcm16k[:641], pcm16k[641:642], pcm16k[642:]):
        ref.tell(AssistantAudio(chunk, 7))
    parent.wait_for("twilio", AssistantUlaw, count=2)
    parent.settle()

    whole = pcm16_to_ulaw(Downsampler().process(np.frombuffer(pcm16k, dtype="<i2")))
    out = parent.of("twilio", AssistantUlaw)
    assert [len(m.ulaw) for m in out] == [160, 160]  # the lone byte made no frame of its own
    assert b"".join(m.ulaw for m in out) == whole
    assert all(m.received_ns == 7 for m in out)
    assert -13.0 < out[1].level_dbfs < -11.0  # the level the VAD compares echo against


def test_mulaw_passes_through_untouched_both_ways(call: CallContext, parent: ProbeParent) -> None:
    call.settings = replace(call.settings, audio_format="mulaw")
    ulaw = pcm16_to_ulaw(tone(1000.0, 20, 8000, -20.0))
    ref = parent.start(CodecActor)
    ref.tell(CallerAudio(ulaw, 0, 5))
    ref.tell(AssistantAudio(ulaw[:101], 6))  # any length: mu-law has no sample to split
    assert parent.wait_for("vapi", UplinkAudio) == [UplinkAudio(1, ulaw, 5)]
    [out] = parent.wait_for("twilio", AssistantUlaw)
    assert (out.ulaw, out.received_ns) == (ulaw[:101], 6)
