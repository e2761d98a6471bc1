import numpy as np
import pytest

from audio.signals import level_dbfs, pink_noise, silence, speech_like, white_noise
from audio.vad import WARMUP_MS, EnergyVad, VadParams, VadTransition, pitch_strength

RATE = 8000
FRAME = 160  # 20 ms
PARAMS = VadParams()
STARTED, STOPPED = VadTransition.STARTED, VadTransition.STOPPED


def run(pcm, far_dbfs=None, vad=None):
    """Feed `pcm` frame by frame; return [(ms at the end of the frame, transition)]."""
    vad = vad or EnergyVad(PARAMS)
    events = []
    for i in range(pcm.size // FRAME):
        far = None if far_dbfs is None else far_dbfs[i]
        transition = vad.process(pcm[i * FRAME : (i + 1) * FRAME], far)
        if transition is not None:
            events.append(((i + 1) * 20, transition))
    return events


def frame_levels(pcm):
    return [level_dbfs(pcm[i : i + FRAME]) for i in range(0, pcm.size, FRAME)]


def mix(*parts):
    total = np.sum([p.astype(np.int32) for p in parts], axis=0)
    return np.clip(total, -32768, 32767).astype(np.int16)


def delayed(pcm, ms, gain_db):
    n = RATE * ms // 1000
    out = np.zeros_like(pcm)
    out[n:] = np.round(pcm[:-n] * 10 ** (gain_db / 20))
    return out


def test_defaults_are_the_documented_constants():
    assert PARAMS.threshold_db > 0 and PARAMS.min_speech_ms < PARAMS.hangover_ms
    assert PARAMS.echo_margin_db < 20.0  # 20 dB-down echo must be rejected


# Onset and end


def test_speech_after_quiet_noise_starts_within_min_speech_plus_40_ms():
    pcm = np.concatenate([white_noise(1000, RATE, -55.0), speech_like(2000, RATE, -20.0)])
    pcm = mix(pcm, white_noise(3000, RATE, -55.0, seed=1))
    (when, what), *_ = run(pcm)
    assert what is STARTED
    assert 1000 + PARAMS.min_speech_ms <= when <= 1000 + PARAMS.min_speech_ms + 40


def test_speech_onset_halfway_through_a_frame_starts_within_min_speech_plus_40_ms():
    pcm = np.concatenate([white_noise(1010, RATE, -55.0), speech_like(1990, RATE, -20.0)])
    (when, what), *_ = run(pcm)
    assert what is STARTED and when <= 1010 + PARAMS.min_speech_ms + 40


def test_speech_stops_after_the_hangover():
    pcm = np.concatenate([speech_like(2000, RATE, -20.0), silence(1000, RATE)])
    pcm = np.concatenate([white_noise(1000, RATE, -55.0), pcm])
    pcm = mix(pcm, white_noise(4000, RATE, -55.0, seed=1))
    events = run(pcm)
    assert [what for _, what in events] == [STARTED, STOPPED]
    assert 3000 + PARAMS.hangover_ms <= events[1][0] <= 3000 + PARAMS.hangover_ms + 40


def test_a_pause_shorter_than_the_hangover_does_not_end_speech():
    word = speech_like(600, RATE, -20.0)
    pause = silence(PARAMS.hangover_ms - 100, RATE)
    speech = np.concatenate([silence(1000, RATE), word, pause, word, silence(1000, RATE)])
    pcm = mix(speech, white_noise(speech.size * 1000 // RATE, RATE, -55.0))
    assert [what for _, what in run(pcm)] == [STARTED, STOPPED]


def test_long_speech_neither_stops_nor_lifts_the_noise_floor_into_it():
    noise = white_noise(32000, RATE, -55.0)
    speech = speech_like(30000, RATE, -20.0)
    pcm = mix(noise, np.concatenate([silence(1000, RATE), speech, silence(1000, RATE)]))
    vad = EnergyVad(PARAMS)
    events = run(pcm[: 31000 * 8], vad=vad)
    assert [what for _, what in events] == [STARTED]
    assert vad.speaking
    assert vad.noise_floor_dbfs < -20.0 - PARAMS.threshold_db - 5.0
    # ...and once the speech ends, the floor drops back to the noise.
    assert [what for _, what in run(pcm[31000 * 8 :], vad=vad)] == [STOPPED]
    assert vad.noise_floor_dbfs == pytest.approx(-55.0, abs=3.0)


# Noise, clicks and breaths never start speech


@pytest.mark.parametrize("make", [white_noise, pink_noise])
def test_sixty_seconds_of_stationary_noise_at_minus_35_dbfs_never_start(make):
    vad = EnergyVad(PARAMS)
    assert run(make(60000, RATE, -35.0, seed=3), vad=vad) == []
    assert vad.noise_floor_dbfs == pytest.approx(-35.0, abs=2.0)


def test_noise_that_appears_after_silence_never_starts_once_the_floor_has_met_it():
    # A step of less than the threshold is followed at the noise time constant.
    pcm = np.concatenate([white_noise(2000, RATE, -60.0), white_noise(10000, RATE, -52.0, seed=1)])
    vad = EnergyVad(PARAMS)
    assert run(pcm, vad=vad) == []
    assert vad.noise_floor_dbfs == pytest.approx(-52.0, abs=1.5)


def test_short_full_scale_clicks_every_500_ms_never_start():
    pcm = white_noise(10000, RATE, -55.0).astype(np.int32)
    for start in range(37, pcm.size, RATE // 2):  # 10 ms clicks, straddling frame borders
        pcm[start : start + 80] = np.where(np.arange(80) % 2, 32767, -32768)
    assert run(pcm.astype(np.int16)) == []


def test_short_breaths_never_start():
    pcm = white_noise(10000, RATE, -55.0)
    for k, start in enumerate(range(1000, pcm.size - 480, RATE // 2)):
        pcm[start : start + 480] = white_noise(60, RATE, -30.0, seed=10 + k)  # 60 ms
    assert run(pcm) == []


def test_speech_quieter_than_the_absolute_floor_never_starts():
    quiet = speech_like(2000, RATE, PARAMS.min_level_dbfs - 3.0)
    pcm = np.concatenate([silence(1000, RATE), quiet])
    assert run(pcm) == []


# Echo of the assistant, and barge-in over it


def assistant_and_echo(ms, then_ms=1000):
    """Levels of `ms` of assistant audio followed by `then_ms` of nothing playing (None),
    and the caller-side audio over the same span: its echo, 20 dB down and 160 ms late
    (a PSTN round trip plus jitter buffers), over line noise."""
    assistant = np.concatenate([speech_like(ms, RATE, -20.0, seed=5), silence(then_ms, RATE)])
    far = frame_levels(assistant[: RATE * ms // 1000]) + [None] * (then_ms // 20)
    line = mix(delayed(assistant, 160, -20.0), white_noise(ms + then_ms, RATE, -55.0))
    return far, line


def test_the_assistants_own_audio_coming_back_20_db_down_never_starts():
    far, line = assistant_and_echo(10000)
    assert run(line, far) == []


def test_the_echo_tail_after_the_assistant_stops_never_starts():
    # The last 160 ms of echo arrive when nothing plays any more: the held level covers them.
    far, line = assistant_and_echo(1000)
    assert run(line, far) == []


def test_the_same_echo_does_start_when_the_far_end_level_is_not_given():
    # At -30 dBFS, as loud as a quiet caller (at -40 it would sit too close to the room's
    # background to start at all).
    _, line = assistant_and_echo(3000)
    assert [what for _, what in run(line * 10 ** (10 / 20))] == [STARTED, STOPPED]


def test_caller_talking_over_the_assistant_at_the_same_level_starts():
    far, line = assistant_and_echo(10000)
    caller = speech_like(2000, RATE, -20.0, seed=7)
    pcm = mix(line, np.concatenate([silence(3000, RATE), caller, silence(6000, RATE)]))
    events = run(pcm, far)
    assert [what for _, what in events] == [STARTED, STOPPED]
    assert events[0][0] <= 3000 + PARAMS.min_speech_ms + 40


def test_echo_gating_ends_shortly_after_the_assistant_stops():
    # 300 ms after the assistant's last frame, echo-level audio counts as speech again.
    far, _ = assistant_and_echo(2000, then_ms=1300)
    pcm = np.concatenate([white_noise(2300, RATE, -55.0), speech_like(1000, RATE, -35.0)])
    events = run(pcm, far)
    assert [what for _, what in events] == [STARTED]
    assert events[0][0] <= 2300 + PARAMS.min_speech_ms + 40


# State, parameters, input checks


def test_reset_returns_to_a_fresh_detector():
    pcm = np.concatenate([white_noise(1000, RATE, -55.0), speech_like(1000, RATE, -20.0)])
    vad = EnergyVad(PARAMS)
    run(pcm, vad=vad)
    assert vad.speaking
    vad.reset()
    assert not vad.speaking
    assert run(pcm, vad=vad) == run(pcm)


def test_noise_floor_follows_the_noise_down_quickly():
    pcm = np.concatenate([white_noise(2000, RATE, -40.0), white_noise(500, RATE, -60.0, seed=1)])
    vad = EnergyVad(PARAMS)
    run(pcm, vad=vad)
    assert vad.noise_floor_dbfs == pytest.approx(-60.0, abs=1.5)


@pytest.mark.parametrize(
    "field",
    [
        {"threshold_db": 0.0},
        {"min_level_dbfs": 3.0},
        {"min_speech_ms": -20},
        {"hangover_ms": -1},
        {"echo_margin_db": -1.0},
        {"noise_adapt_ms": 0},
    ],
)
def test_invalid_params_are_refused_naming_the_field(field):
    (name,) = field
    with pytest.raises(ValueError, match=name):
        VadParams(**field)


def test_a_frame_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="160"):
        EnergyVad(PARAMS).process(np.zeros(159, dtype=np.int16))


def test_other_frame_sizes_are_supported():
    vad = EnergyVad(PARAMS, frame_ms=10)
    pcm = np.concatenate([white_noise(1000, RATE, -55.0), speech_like(1000, RATE, -20.0)])
    events = [vad.process(pcm[i : i + 80]) for i in range(0, pcm.size, 80)]
    assert [e for e in events if e] == [STARTED]
    with pytest.raises(ValueError):
        EnergyVad(PARAMS, frame_ms=0)


# --- Issue 13: the first frame, a voice in the room, the echo floor, a classifier ----------


def words(ms, dbfs, seed=1):
    """speech_like with a 60 ms dip between 160 ms syllables, as talk has (speech_like alone
    swings by only 5 dB: steadier than any voice)."""
    pcm = speech_like(ms, RATE, dbfs=dbfs, seed=seed)
    for start in range(RATE * 160 // 1000, pcm.size, RATE * 220 // 1000):
        pcm[start : start + RATE * 60 // 1000] //= 10
    return pcm


def test_a_caller_speaking_from_the_first_frame_starts_by_the_end_of_the_warmup():
    # The noise floor used to start at the first frame's level: the caller's own voice.
    events = run(words(1500, -26.0))
    assert events and events[0][1] is STARTED
    assert events[0][0] <= max(PARAMS.min_speech_ms, WARMUP_MS) + 60  # at most a syllable dip late


@pytest.mark.parametrize("noise", [pink_noise, white_noise])
def test_a_noisy_line_from_the_first_frame_never_starts(noise):
    # ...and starting the floor low must not make steady noise from the first frame speech.
    assert run(noise(10_000, RATE, dbfs=-35.0, seed=4)) == []


def tv(ms, dbfs, seed=6):
    """Another voice in the room: talk with pauses, 1.2 s on, 0.6 s off, at `dbfs`."""
    out = np.zeros(RATE * ms // 1000, dtype=np.int16)
    on, period = RATE * 1200 // 1000, RATE * 1800 // 1000
    for k, start in enumerate(range(0, out.size - on, period)):
        out[start : start + on] = speech_like(1200, RATE, dbfs=dbfs, seed=seed + k)
    return out


def test_a_tv_at_minus_38_dbfs_stops_starting_within_seconds_and_the_caller_still_does():
    room = mix(tv(20_000, -38.0), pink_noise(20_000, RATE, dbfs=-50.0, seed=2))
    vad = EnergyVad(PARAMS)
    events = run(room, vad=vad)
    assert [ms for ms, t in events if t is STARTED and ms > 5000] == []
    assert vad.background_dbfs > -41.0  # it has learnt the voice in the room
    caller = mix(speech_like(1000, RATE, dbfs=-28.0, seed=9), pink_noise(1000, RATE, dbfs=-50.0, seed=3))
    after = run(caller, vad=vad)
    assert after and after[0][1] is STARTED and after[0][0] <= 300


def test_a_frame_under_the_echo_floor_is_never_speech():
    vad = EnergyVad(PARAMS)
    pcm = np.concatenate([pink_noise(1000, RATE, dbfs=-50.0), speech_like(1000, RATE, dbfs=-26.0)])
    events = [vad.process(pcm[i : i + FRAME], echo_dbfs=-20.0) for i in range(0, pcm.size, FRAME)]
    assert STARTED not in events
    vad.reset()
    events = [vad.process(pcm[i : i + FRAME], echo_dbfs=-35.0) for i in range(0, pcm.size, FRAME)]
    assert STARTED in events


class FakeClassifier:
    def __init__(self, answer):
        self.answer, self.calls, self.skips, self.closed = answer, 0, 0, False

    def is_speech(self, pcm8k):
        self.calls += 1
        return self.answer

    @property
    def likely(self):
        return self.answer

    def skip(self):
        self.skips += 1

    def close(self):
        self.closed = True


def test_with_a_classifier_loud_non_speech_never_starts_and_speech_does():
    loud = speech_like(1000, RATE, dbfs=-20.0)
    assert run(loud, vad=EnergyVad(PARAMS, classifier=FakeClassifier(False))) == []
    events = run(loud, vad=EnergyVad(PARAMS, classifier=FakeClassifier(True)))
    assert events and events[0] == (PARAMS.min_speech_ms, STARTED)


def test_the_classifier_is_not_asked_about_a_quiet_line():
    classifier = FakeClassifier(True)
    run(pink_noise(5000, RATE, dbfs=-55.0, seed=1), vad=EnergyVad(PARAMS, classifier=classifier))
    assert classifier.calls == 0
    burst = np.concatenate([silence(1000, RATE), speech_like(200, RATE, dbfs=-20.0), silence(1000, RATE)])
    run(burst, vad=EnergyVad(PARAMS, classifier=classifier))
    # The 200 ms of speech, and 200 ms after it so it keeps its context over short dips.
    assert 10 <= classifier.calls <= 10 + 10 + 1


def run_with_echo(pcm, echo_dbfs):
    """Like run, with the echo canceller's floor per frame: `echo_dbfs(frame index)`."""
    vad = EnergyVad(PARAMS)
    events = []
    for i in range(pcm.size // FRAME):
        transition = vad.process(pcm[i * FRAME : (i + 1) * FRAME], echo_dbfs=echo_dbfs(i))
        if transition is not None:
            events.append(((i + 1) * 20, transition))
    return events


@pytest.mark.parametrize("caller_ms", [500, 700], ids=["before-the-echo", "after-the-echo"])
def test_a_caller_already_talking_when_the_echo_becomes_possible_is_judged_against_the_echo_itself(caller_ms):
    # The assistant's echo may be in the caller's audio from 560 ms on, predicted as loud as a
    # -30 dBFS caller. A caller talking before that was first: heard within the onset time. One
    # who starts once the echo is there is judged as always: not over the echo, not a caller.
    line = pink_noise(2000, RATE, dbfs=-60.0, seed=3)
    caller = np.zeros_like(line)
    talk = speech_like(1200, RATE, dbfs=-30.0, seed=4)
    caller[caller_ms * 8 : caller_ms * 8 + talk.size] = talk[: line.size - caller_ms * 8]
    events = run_with_echo(mix(line, caller), lambda i: None if i * 20 < 560 else -26.0)
    if caller_ms < 560:
        assert events and events[0][1] is STARTED and events[0][0] <= caller_ms + PARAMS.min_speech_ms + 60
    else:
        assert events == []


def test_an_onset_during_the_warmup_is_reported_when_it_ends():
    # A short first word ("Hi?") over within the warm-up: it is not lost for having been early.
    pcm = mix(np.concatenate([speech_like(120, RATE, dbfs=-24.0, seed=5), silence(1880, RATE)]),
              pink_noise(2000, RATE, dbfs=-65.0, seed=6))
    events = run(pcm)
    assert events and events[0] == (WARMUP_MS, STARTED)


def test_a_voice_barely_over_the_room_at_the_call_start_is_not_taken_for_the_caller():
    # A TV syllable 10 dB over the room's noise in the first 200 ms: nothing is known of the room
    # yet, so an onset there must stand well clear of the quietest frame heard.
    pcm = mix(np.concatenate([speech_like(120, RATE, dbfs=-34.0, seed=7), silence(1880, RATE)]),
              pink_noise(2000, RATE, dbfs=-44.0, seed=8))
    assert run(pcm) == []


def test_a_distant_voice_just_over_the_absolute_floor_never_starts():
    # The background starts at the quietest level that can count as a voice, not below it, so a
    # voice across the room does not count before the tracker has learnt it.
    voice = np.concatenate([silence(500, RATE), speech_like(3500, RATE, dbfs=-43.0, seed=2)])
    assert run(mix(pink_noise(4000, RATE, dbfs=-65.0, seed=1), voice)) == []


def test_an_answer_starting_while_the_caller_only_runs_out_the_hangover_is_not_taken_for_them():
    # The caller asked and stopped at 600 ms; the answer's echo is possible from 700 ms, as loud
    # as the prediction. Their speech ends on time: the echo does not keep them talking.
    line = pink_noise(2500, RATE, dbfs=-60.0, seed=9)
    question = np.concatenate([silence(300, RATE), speech_like(300, RATE, dbfs=-20.0, seed=10), silence(1900, RATE)])
    echo = np.concatenate([silence(700, RATE), speech_like(1800, RATE, dbfs=-30.0, seed=11)])
    events = run_with_echo(mix(line, question, echo), lambda i: None if i * 20 < 700 else -26.0)
    assert [t for _, t in events] == [STARTED, STOPPED]
    assert events[1][0] <= 600 + PARAMS.hangover_ms + 60


def _burst_after_room(burst_dbfs, burst_ms=160):
    room = pink_noise(2000 + burst_ms + 600, RATE, dbfs=-45.0, seed=31)
    burst = np.concatenate([silence(2000, RATE), white_noise(burst_ms, RATE, dbfs=burst_dbfs, seed=32),
                            silence(600, RATE)])
    return mix(room, burst)


def test_a_voice_only_just_over_the_rooms_background_builds_an_onset_at_half_rate():
    # A TV's syllable, 160 ms a few dB over the room: it would start at full rate (100 ms).
    assert run(_burst_after_room(-34.0)) == []
    # The same 160 ms well clear of the room: a caller.
    assert [what for _, what in run(_burst_after_room(-24.0))] == [STARTED, STOPPED]


def test_a_caller_hidden_under_the_echo_floor_does_not_become_the_rooms_background():
    vad = EnergyVad(PARAMS)
    caller = speech_like(1000, RATE, dbfs=-30.0, seed=33)
    for i in range(caller.size // FRAME):
        vad.process(caller[i * FRAME : (i + 1) * FRAME], echo_dbfs=-20.0)  # the echo floor hides them
    # Learnt at the full rate, the background would be at the caller's own level by now.
    assert vad.background_dbfs < -38.0


def test_an_onset_the_warm_up_rejects_does_not_start_on_the_evidence_it_gathered():
    # A voice from the first frame with little contrast (a TV at the call's start, 12 dB over
    # its own pauses): its onset is not reported, and the speech counted meanwhile is not enough.
    n = WARMUP_MS
    tv = white_noise(n, RATE, dbfs=-33.0, seed=34)
    tv[: RATE * 40 // 1000] = np.round(tv[: RATE * 40 // 1000] * 10 ** (-12 / 20)).astype(np.int16)
    line = np.concatenate([tv, silence(600, RATE)])
    assert run(line) == []


def test_a_rejected_warm_up_onset_leaves_no_head_start_to_the_next_syllable():
    # A TV talking through the warm-up, 10 dB over its own quietest frame: rejected. Its next
    # syllable, 60 ms just after, must build an onset from nothing; it used to need only 40 ms
    # more (bench.bargein_offline: a third of the false onsets at a call's start in the room).
    room = pink_noise(1200, RATE, dbfs=-50.0, seed=44)
    tv = white_noise(WARMUP_MS, RATE, dbfs=-31.0, seed=45)
    tv[: RATE * 40 // 1000] = np.round(tv[: RATE * 40 // 1000] * 10 ** (-10 / 20)).astype(np.int16)
    syllable = white_noise(60, RATE, dbfs=-27.0, seed=46)
    line = mix(room, np.concatenate([tv, syllable, silence(1200 - WARMUP_MS - 60, RATE)]))
    assert run(line) == []
    # A caller who goes on talking still starts.
    longer = white_noise(300, RATE, dbfs=-27.0, seed=46)
    line = mix(room, np.concatenate([tv, longer, silence(1200 - WARMUP_MS - 300, RATE)]))
    assert [what for _, what in run(line)] == [STARTED, STOPPED]


def _line_with_burst(at_ms, dbfs, ms=300, first=True):
    total = at_ms + ms + 800
    room = pink_noise(total, RATE, dbfs=-50.0, seed=41)
    burst = np.concatenate([silence(at_ms, RATE), white_noise(ms, RATE, dbfs=dbfs, seed=42), silence(800, RATE)])
    if first:  # something in the room in the first 200 ms: 60 ms of a distant voice
        burst[RATE * 60 // 1000 : RATE * 120 // 1000] = white_noise(60, RATE, dbfs=-40.0, seed=43)
    return mix(room, burst)


def test_until_the_room_is_known_a_voice_must_stand_further_over_the_noise():
    # 12 dB over the line's noise: a TV across the room is that loud; a caller more.
    assert run(_line_with_burst(500, -38.0)) == []
    assert [what for _, what in run(_line_with_burst(2000, -38.0))] == [STARTED, STOPPED]


def test_a_line_that_starts_with_steady_noise_asks_nothing_more():
    assert [what for _, what in run(_line_with_burst(500, -38.0, first=False))] == [STARTED, STOPPED]


def _syllables(on_ms, gap_ms, times=2, dbfs=-24.0):
    parts = [pink_noise(1000, RATE, dbfs=-55.0, seed=43)]
    for _ in range(times):
        parts += [white_noise(on_ms, RATE, dbfs=dbfs, seed=44), silence(gap_ms, RATE)]
    return np.concatenate([*parts, silence(600, RATE)])


def test_short_words_with_short_gaps_add_up_to_an_onset_and_clicks_do_not():
    assert STARTED in [what for _, what in run(_syllables(80, 100))]  # two 80 ms words
    assert run(_syllables(40, 100)) == []  # two clicks


@pytest.mark.parametrize("under_db", [1.0, 3.0])
def test_speech_quieter_than_speech_from_dbfs_never_starts_and_louder_does(under_db):
    # The echo canceller skips its costlier checks on frames under this level, so it must
    # be a true bound: speech whose loudest frame is just under it is never speech, and
    # the same speech 6 dB over it is.
    def warmed():
        vad = EnergyVad(PARAMS)
        run(pink_noise(2000, RATE, dbfs=-50.0, seed=3), vad=vad)
        return vad

    bound = warmed().speech_from_dbfs
    voice = speech_like(1500, RATE, dbfs=0.0, seed=4).astype(np.float64)
    peak = max(frame_levels(voice.astype(np.int16)))
    under = np.round(voice * 10 ** ((bound - under_db - peak) / 20)).astype(np.int16)
    assert STARTED not in [t for _, t in run(under, vad=warmed())]
    over = np.round(voice * 10 ** ((bound + 6.0 - peak) / 20)).astype(np.int16)
    assert STARTED in [t for _, t in run(over, vad=warmed())]


def held_vowel(ms, dbfs, rise_db):
    """A vowel held from the first frame ("Hellooo?"), rising by `rise_db`: as steady as a fan."""
    t = np.arange(RATE * ms // 1000) / RATE
    voiced = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 20))
    rising = voiced * 10 ** (np.linspace(-rise_db, 0.0, t.size) / 20)
    return np.round(rising / np.sqrt(np.mean(voiced**2)) * 32767 * 10 ** (dbfs / 20)).astype(np.int16)


def test_a_caller_holding_a_vowel_through_the_warm_up_is_not_taken_for_the_lines_noise():
    # A steady warm-up used to become the noise floor: the caller's own voice, who then went
    # unheard until the floor had fallen back through the gaps between their words.
    voice = np.concatenate([held_vowel(240, -27.0, 6.0), words(2000, -27.0, seed=7)])
    line = mix(voice, pink_noise(2240, RATE, dbfs=-45.0, seed=8))
    first = frame_levels(line)[: WARMUP_MS // 20]
    assert max(first) - min(first) < 5.0  # steadier than any noise test below
    events = run(line)
    assert events and events[0] == (WARMUP_MS, STARTED)


@pytest.mark.parametrize("noise", [pink_noise, white_noise])
def test_noise_has_no_pitch_and_a_vowel_has(noise):
    frames = noise(10_000, RATE, dbfs=-40.0, seed=11).astype(np.float64).reshape(-1, FRAME)
    strengths = np.array([pitch_strength(f) for f in frames])
    assert np.mean(strengths >= 0.6) < 0.02  # the warm-up asks for a pitch in half its frames
    vowel = held_vowel(200, -30.0, 0.0).astype(np.float64).reshape(-1, FRAME)
    assert min(pitch_strength(f) for f in vowel) > 0.9
    assert pitch_strength(np.zeros(FRAME)) == 0.0


def _bursts(*on_gap_ms, dbfs=-24.0, seed=60):
    """A known quiet line (1 s), then bursts of noise with gaps: (on, gap), (on, gap), ..."""
    parts = [pink_noise(1000, RATE, dbfs=-55.0, seed=43)]
    for k, (on, gap) in enumerate(on_gap_ms):
        parts += [white_noise(on, RATE, dbfs=dbfs, seed=seed + k), silence(gap, RATE)]
    return np.concatenate([*parts, silence(600, RATE)])


def test_the_closure_inside_a_word_does_not_throw_its_first_syllable_away():
    # "Ex- cuse me": a 60 ms syllable, 80 ms of closure, the next syllable. The build-up used to
    # leak through the closure, and the word had to start all over again.
    events = run(_bursts((60, 80), (60, 0)))
    assert events and events[0] == (1000 + 60 + 80 + 40, STARTED)


@pytest.mark.parametrize(("click_ms", "period_ms"), [(20, 100), (20, 120), (40, 120), (40, 160)])
def test_keys_typed_six_to_ten_a_second_never_start(click_ms, period_ms):
    # A keystroke is a 20-40 ms click: too short to be a syllable, so its build-up is not held.
    assert run(_bursts(*[(click_ms, period_ms - click_ms)] * 15)) == []
