"""CodecActor: converts audio between Twilio's format and VAPI's.

Inbound: 8 kHz mu-law -> the uplink format (16 kHz PCM, or the same mu-law untouched
in pass-through mode), stored in the call's uplink buffer, and decoded PCM for the VAD.
Outbound: VAPI's audio -> 8 kHz mu-law for Twilio, with its level for echo handling.
The resamplers carry filter state across frames, so a restart of this actor costs at
most one filter length of audio.
"""

from __future__ import annotations

import numpy as np

from actors.base import CallActor
from actors.call import CallContext
from actors.messages import (
    AssistantAudio,
    AssistantUlaw,
    CallerAudio,
    CallerPcm,
    CodecActorMessage,
    InjectFault,
    UplinkAudio,
)
from audio.mulaw import pcm16_to_ulaw, ulaw_to_pcm16
from audio.resample import Downsampler, Upsampler
from audio.signals import level_dbfs
from supervision import ChildHandle

__all__ = ["CodecActor"]


class CodecActor(CallActor):
    role = "codec"

    def __init__(self, handle: ChildHandle | None, call: CallContext) -> None:
        super().__init__(handle, call)
        self._pcm = call.settings.audio_format == "pcm_s16le"
        self._up = Upsampler()
        self._down = Downsampler()
        self._odd_byte = b""  # VAPI may split a 16-bit sample across two frames
        self._up_buffer = np.empty(320, dtype=np.int16)  # one 20 ms frame at 16 kHz, reused

    def on_receive(self, message: CodecActorMessage) -> None:
        match message:
            case CallerAudio():
                self._on_caller_audio(message)
            case AssistantAudio():
                self._on_assistant_audio(message)
            case InjectFault():
                self._inject(message)
            case _:
                self._unexpected_message(message)

    def _on_caller_audio(self, message: CallerAudio) -> None:
        pcm8k = ulaw_to_pcm16(message.ulaw)
        data = self._up.process(pcm8k, self._up_buffer).tobytes() if self._pcm else message.ulaw
        call = self._call
        seq = call.uplink.append(data)
        self._tell("vapi", UplinkAudio(seq, data, message.received_ns))
        self._tell("vad", CallerPcm(pcm8k.tobytes(), message.stream_ms))

    def _on_assistant_audio(self, message: AssistantAudio) -> None:
        if self._pcm:
            data = self._odd_byte + message.data if self._odd_byte else message.data
            usable = len(data) & ~1
            self._odd_byte = data[usable:]
            if not usable:
                return
            pcm8k = self._down.process(np.frombuffer(data[:usable], dtype="<i2"))
            if pcm8k.size == 0:
                return
            ulaw = pcm16_to_ulaw(pcm8k)
        else:
            ulaw = message.data
            pcm8k = ulaw_to_pcm16(ulaw)
        self._tell("twilio", AssistantUlaw(ulaw, level_dbfs(pcm8k), message.received_ns))
