"""VadActor: decides when the caller starts and stops speaking.

Each caller frame goes first through the echo canceller (ECHO_CANCELLER=on), whose
reference is the assistant audio the Twilio actor sent, on the call's far-end track; the
VAD (audio/vad.py, with the VAD_ENGINE classifier of audio/voice.py) judges what is left.
With the canceller off it is told the level of the assistant audio playing, as before.

A Silero model takes ~45 ms to load the first time in a process: it loads in a worker
thread while the energy VAD judges alone, so no call waits for it.
"""

from __future__ import annotations

from typing import Any

import gevent
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
from audio.echo import EchoCanceller
from audio.vad import EnergyVad, VadParams, VadTransition
from audio.voice import SpeechClassifier, make_classifier
from supervision import ChildHandle

__all__ = ["VadActor"]


class VadActor(CallActor):
    role = "vad"

    def __init__(self, handle: ChildHandle | None, call: CallContext) -> None:
        super().__init__(handle, call)
        s = call.settings
        self._params = VadParams(
            threshold_db=s.vad_threshold_db,
            min_level_dbfs=s.vad_min_level_dbfs,
            min_speech_ms=s.vad_min_speech_ms,
            hangover_ms=s.vad_hangover_ms,
            echo_margin_db=s.vad_echo_margin_db,
        )
        self._vad = EnergyVad(self._params)
        self._canceller = EchoCanceller(call.far_end, max_delay_ms=s.echo_max_delay_ms) if s.echo_canceller else None
        self._far = call.far_end
        self._far_end: float | None = None
        self._far_was_active = False
        self._reassert = False  # the assistant started while the caller was speaking
        self._echo_delay: int | None = None
        self._loading: Any = None  # the worker thread loading the classifier
        if s.vad_engine != "energy":
            self._loading = gevent.get_hub().threadpool.spawn(make_classifier, s.vad_engine, s.vad_silero_threshold)

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

    def _close(self) -> None:
        classifier = self._vad.classifier
        if classifier is not None:
            classifier.close()
        loading, self._loading = self._loading, None
        if loading is not None:
            # Not attached yet: whoever gets it gives it back.
            loading.rawlink(lambda result: _close_loaded(result.value))

    def _attach_classifier(self) -> None:
        loading = self._loading
        if loading is None or not loading.ready():
            return
        self._loading = None
        classifier: SpeechClassifier | None = loading.value
        if classifier is None:
            engine = self._call.settings.vad_engine
            self._log.warning("vad_engine_unavailable", engine=engine, detail=str(loading.exception))
            return
        self._vad.attach(classifier)

    def _on_pcm(self, message: CallerPcm) -> None:
        if self._loading is not None:
            self._attach_classifier()
        pcm = np.frombuffer(message.pcm8k, dtype=np.int16)
        canceller, vad = self._canceller, self._vad
        if canceller is not None:
            estimate = canceller.process(pcm, message.stream_ms, caller_speaking=vad.speaking,
                                        speech_from_dbfs=vad.speech_from_dbfs)
            transition = vad.process(estimate.residual, echo_dbfs=estimate.floor_dbfs)
            if canceller.delay != self._echo_delay:
                self._echo_delay = canceller.delay
                self._log.info("echo_path_found", delay_ms=canceller.delay_ms, stream_ms=message.stream_ms)
        else:
            transition = vad.process(pcm, self._far_end)
        if transition is VadTransition.STARTED:
            self._log.info("caller_speech_started", stream_ms=message.stream_ms)
            self._tell("twilio", CallerSpeechStarted(message.stream_ms))
        elif transition is VadTransition.STOPPED:
            self._log.info("caller_speech_stopped", stream_ms=message.stream_ms)
            self._tell("twilio", CallerSpeechStopped(message.stream_ms))
        # The assistant starting while the caller is already talking: the caller was first.
        # Said again at the caller's next speech frame (they may be between two words), so
        # not if the VAD is only running out its hangover when an answer starts.
        far_active = self._far.active_until > message.stream_ms * 8
        if far_active and not self._far_was_active and vad.speaking:
            self._reassert = True
        if not vad.speaking or not far_active:
            self._reassert = False
        elif self._reassert and vad.quiet_ms == 0:
            self._reassert = False
            self._log.info("caller_already_speaking", stream_ms=message.stream_ms)
            self._tell("twilio", CallerSpeechStarted(message.stream_ms))
        self._far_was_active = far_active


def _close_loaded(classifier: SpeechClassifier | None) -> None:
    if classifier is not None:
        classifier.close()
