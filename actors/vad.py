"""VadActor: decides when the caller starts and stops speaking.

Runs the energy VAD on the caller's decoded audio, told the level of the assistant
audio currently playing so its echo is not taken for the caller.
"""

from __future__ import annotations

import numpy as np

from actors.base import CallActor
from actors.call import CallContext
from actors.messages import (
    CallerPcm,
    CallerSpeechStarted,
    CallerSpeechStopped,
    FarEndLevel,
    InjectFault,
    VadActorMessage,
)
from audio.vad import EnergyVad, VadParams, VadTransition
from supervision import ChildHandle

__all__ = ["VadActor"]


class VadActor(CallActor):
    role = "vad"

    def __init__(self, handle: ChildHandle | None, call: CallContext) -> None:
        super().__init__(handle, call)
        s = call.settings
        self._vad = EnergyVad(
            VadParams(
                threshold_db=s.vad_threshold_db,
                min_level_dbfs=s.vad_min_level_dbfs,
                min_speech_ms=s.vad_min_speech_ms,
                hangover_ms=s.vad_hangover_ms,
                echo_margin_db=s.vad_echo_margin_db,
            )
        )
        self._far_end: float | None = None

    def on_receive(self, message: VadActorMessage) -> None:
        match message:
            case CallerPcm():
                self._on_pcm(message)
            case FarEndLevel():
                self._far_end = message.dbfs
            case InjectFault():
                self._inject(message)
            case _:
                self._unexpected_message(message)

    def _on_pcm(self, message: CallerPcm) -> None:
        transition = self._vad.process(np.frombuffer(message.pcm8k, dtype=np.int16), self._far_end)
        if transition is VadTransition.STARTED:
            self._log.info("caller_speech_started", stream_ms=message.stream_ms)
            self._tell("twilio", CallerSpeechStarted(message.stream_ms))
        elif transition is VadTransition.STOPPED:
            self._log.info("caller_speech_stopped", stream_ms=message.stream_ms)
            self._tell("twilio", CallerSpeechStopped(message.stream_ms))
