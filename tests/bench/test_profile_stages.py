"""bench.profile_stages: each sample of a py-spy raw profile lands in the stage of its code."""

from bench.profile_stages import main, stage_of

_DISPATCH = (
    "Dispatcher._run (supervision/dispatcher.py:178);Dispatcher._turn (supervision/dispatcher.py:201);"
    "SupervisedActor._dispatch_message (supervision/actor.py:259);"
    "SupervisedActor._handle_receive (supervision/actor.py:232)"
)
_VAD = _DISPATCH + ";VadActor.on_receive (actors/vad.py:64);VadActor._on_pcm (actors/vad.py:99)"


def test_the_echo_canceller_is_its_own_stage_not_the_vad_actors_handler():
    stack = _VAD + ";EchoCanceller.process (audio/echo.py:279);EchoCanceller._search (audio/echo.py:335)"
    assert stage_of(stack + ";rfft (numpy/fft/_pocketfft.py:417);_raw_fft (numpy/fft/_pocketfft.py:101)") == (
        "echo canceller"
    )
    assert stage_of(_VAD) == "actor handlers (own code)"


def test_the_dispatchers_own_frames_are_actor_hops():
    assert stage_of(_DISPATCH) == "actor hops (tell, mailbox, dispatch)"
    assert stage_of("Dispatcher._run (supervision/dispatcher.py:172)") == "actor hops (tell, mailbox, dispatch)"


def test_a_send_whose_callers_were_not_sampled_is_a_socket_write_not_the_event_loop():
    assert stage_of("SocketMixin.send (gevent/_socketcommon.py:716)") == "socket write, caller not sampled"
    twilio_send = "TwilioSocket._send_frame (links/twilio.py:301);SocketMixin.send (gevent/_socketcommon.py:716)"
    assert stage_of(twilio_send) == "Twilio socket write"
    assert stage_of("Hub.run (gevent/hub.py:647)") == "event loop (gevent hub)"


def test_the_table_turns_shares_into_microseconds_per_call(tmp_path, capsys):
    raw = tmp_path / "x.raw"
    raw.write_text("Hub.run (gevent/hub.py:647) 3\n" + _VAD + ";EchoCanceller.process (audio/echo.py:279) 1\n")
    assert main([str(raw), "--cpu", "50", "--calls", "10"]) == 0
    out = capsys.readouterr().out
    # 50 % of a core over 10 calls: 50,000 µs per call per second, 1,000 per 20 ms.
    assert "| event loop (gevent hub) | 75.0 % | 37500 | 750.0 |" in out
    assert "| echo canceller | 25.0 % | 12500 | 250.0 |" in out
