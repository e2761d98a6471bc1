from media.playback import FRAME_BYTES, MarkResult, Playback


class Wire:
    def __init__(self):
        self.sent = []

    def media(self, frame, received_ns=0):
        self.sent.append(("media", len(frame)))

    def mark(self, name):
        self.sent.append(("mark", name))

    def marks(self):
        return [name for kind, name in self.sent if kind == "mark"]

    def media_count(self):
        return sum(1 for kind, _ in self.sent if kind == "media")


def test_only_the_lead_goes_to_twilio_and_the_rest_waits_for_marks():
    playback = Playback(lead_ms=200, max_frames=1500)
    wire = Wire()
    playback.enqueue(bytes(FRAME_BYTES * 50), -20.0)  # one second, arriving at once
    playback.pump(wire.media, wire.mark)
    assert wire.media_count() == 10
    assert playback.queued_frames == 40
    assert playback.on_mark(wire.marks()[0]) == MarkResult.PLAYED
    playback.pump(wire.media, wire.mark)
    assert wire.media_count() == 12


def test_a_reply_longer_than_a_second_is_not_cut():
    playback = Playback(lead_ms=200, max_frames=1500)
    wire = Wire()
    playback.enqueue(bytes(FRAME_BYTES * 500), -20.0)  # ten seconds
    assert playback.dropped_overflow == 0
    while playback.audible:
        playback.pump(wire.media, wire.mark)
        for name in wire.marks()[-5:]:
            playback.on_mark(name)
    assert wire.media_count() == 500


def test_overflow_drops_the_oldest_frames_and_counts_them():
    playback = Playback(lead_ms=200, max_frames=100)
    assert playback.enqueue(bytes(FRAME_BYTES * 150), -20.0) == 50
    assert playback.dropped_overflow == 50


def test_marks_echoed_after_a_clear_are_cancelled_not_played():
    playback = Playback(lead_ms=200, max_frames=1500)
    wire = Wire()
    playback.enqueue(bytes(FRAME_BYTES * 20), -20.0)
    playback.pump(wire.media, wire.mark)
    first, *rest = wire.marks()
    assert playback.on_mark(first) == MarkResult.PLAYED  # echoed before the clear
    assert playback.clear() == 10
    assert [playback.on_mark(name) for name in rest] == [MarkResult.CANCELLED] * len(rest)
    assert not playback.audible
    assert playback.marks_played == 1 and playback.marks_cancelled == len(rest)


def test_audible_follows_marks_not_the_send_clock():
    playback = Playback(lead_ms=200, max_frames=1500)
    wire = Wire()
    playback.enqueue(bytes(FRAME_BYTES * 2), -20.0)
    playback.pump(wire.media, wire.mark)
    assert playback.queued_frames == 0
    assert playback.audible  # sent, but Twilio has not played it yet
    playback.on_mark(wire.marks()[-1])
    assert not playback.audible


def test_far_end_level_is_the_loudest_unplayed_frame():
    playback = Playback(lead_ms=200, max_frames=1500)
    wire = Wire()
    playback.enqueue(bytes(FRAME_BYTES * 2), -30.0)
    playback.enqueue(bytes(FRAME_BYTES * 2), -10.0)
    playback.pump(wire.media, wire.mark)
    assert playback.far_end_dbfs == -10.0
    for name in wire.marks():
        playback.on_mark(name)
    assert playback.far_end_dbfs is None


def test_foreign_mark_names_are_reported_unknown():
    assert Playback(lead_ms=200, max_frames=10).on_mark("hello") == MarkResult.UNKNOWN


# --- The send clock (issue 13): audible whatever the delivery pace ------------------------


def test_real_time_delivery_is_audible_by_the_send_clock_though_marks_say_all_played():
    # Real-time delivery: each frame is played (and its mark echoed) before the next one
    # comes, so marks alone say "nothing playing" between frames.
    from audio.echo import FarEndTrack

    playback = Playback(lead_ms=200, max_frames=1500, hangover_ms=300, far_end=FarEndTrack())
    wire = Wire()
    for k in range(5):
        now_ms = 1000.0 + 20 * k
        playback.enqueue(bytes(FRAME_BYTES), -20.0)
        playback.pump(wire.media, wire.mark, now_ms)
        playback.on_mark(wire.marks()[-1])
        assert not playback.audible  # what marks alone say
        assert playback.audible_at(now_ms + 10)
    assert playback.play_end_ms == 1100.0
    assert playback.audible_at(1100.0 + 299)
    assert not playback.audible_at(1100.0 + 300)


def test_a_burst_plays_back_to_back_from_when_it_was_sent():
    playback = Playback(lead_ms=200, max_frames=1500)
    wire = Wire()
    playback.enqueue(bytes(FRAME_BYTES * 50), -20.0)
    playback.pump(wire.media, wire.mark, 500.0)
    assert playback.play_end_ms == 500.0 + 200  # the lead, queued behind each other
    playback.on_mark(wire.marks()[0])  # 40 ms played
    playback.pump(wire.media, wire.mark, 540.0)
    assert playback.play_end_ms == 500.0 + 240


def test_the_far_end_track_gets_each_frame_at_the_time_it_plays_and_a_clear_cuts_it():
    from audio.echo import FarEndTrack

    track = FarEndTrack()
    playback = Playback(lead_ms=200, max_frames=1500, far_end=track)
    wire = Wire()
    playback.enqueue(bytes([0x10]) * FRAME_BYTES * 10, -20.0)  # loud mu-law
    playback.pump(wire.media, wire.mark, 1000.0)
    assert track.read(8000 - 160, 160).max() == 0  # nothing before 1000 ms
    assert track.read(8000, 1600).min() != 0  # 1000-1200 ms: the ten frames
    playback.clear(1100.0)  # Twilio dropped what had not played by 1100 ms
    assert track.read(8000, 800).min() != 0
    assert track.read(8800, 800).max() == 0
    assert playback.play_end_ms == 1100.0


def test_frames_timed_by_a_guessed_clock_move_when_the_stream_says_when_it_began():
    # A greeting goes out at `start`, timed by its arrival; the first media frame then says
    # the stream began 70 ms before that. Left where they were, the frames (and every frame
    # of the burst, each playing from the end of the one before) would sit 70 ms early on
    # the echo canceller's reference, and the next turn, timed by the real clock, would not.
    from audio.echo import FarEndTrack

    track = FarEndTrack()
    playback = Playback(lead_ms=200, max_frames=1500, far_end=track)
    wire = Wire()
    playback.enqueue(bytes([0x10]) * FRAME_BYTES * 50, -20.0)  # a second of loud mu-law
    playback.pump(wire.media, wire.mark, 0.0)
    assert track.read(0, 160).min() != 0
    playback.clock_known(70.0)
    assert track.read(0, 560).max() == 0  # nothing played before 70 ms
    assert track.read(560, 1600).min() != 0  # the ten frames, 70-270 ms
    assert playback.play_end_ms == 270.0
    playback.on_mark(wire.marks()[0])
    playback.pump(wire.media, wire.mark, 110.0)  # the burst goes on from the moved end
    assert playback.play_end_ms == 310.0
    assert track.read(2160, 320).min() != 0
    playback.clock_known(-50.0)  # only the first media frame says when the stream began
    assert playback.play_end_ms == 310.0


def test_frames_sent_once_the_clock_is_known_are_not_moved():
    from audio.echo import FarEndTrack

    track = FarEndTrack()
    playback = Playback(lead_ms=200, max_frames=1500, far_end=track)
    wire = Wire()
    playback.clock_known(30.0)  # the first media frame came before any audio
    playback.enqueue(bytes([0x10]) * FRAME_BYTES * 10, -20.0)
    playback.pump(wire.media, wire.mark, 500.0)
    assert playback.play_end_ms == 700.0
    assert track.read(4000, 1600).min() != 0


def test_a_restarted_actors_guess_moves_only_what_it_sent_not_the_audio_before_it():
    # After the Twilio actor's restart its clock starts from zero until the next media frame;
    # the track still holds what its previous incarnation sent, timed right and still echoing.
    from audio.echo import FarEndTrack

    track = FarEndTrack()
    before = Playback(lead_ms=200, max_frames=1500, far_end=track)
    before.clock_known(0.0)
    before.enqueue(bytes([0x10]) * FRAME_BYTES * 10, -20.0)
    before.pump(Wire().media, Wire().mark, 3000.0)  # 3000-3200 ms, the old incarnation's
    restarted = Playback(lead_ms=200, max_frames=1500, far_end=track)
    restarted.enqueue(bytes([0x20]) * FRAME_BYTES * 2, -20.0)
    restarted.pump(Wire().media, Wire().mark, 0.0)  # timed by a clock that starts at zero
    restarted.clock_known(3200.0)  # the next media frame: the stream is 3.2 s old
    assert track.read(3000 * 8, 1600).min() != 0  # the old incarnation's audio is still there
    assert track.read(3200 * 8, 320).min() != 0  # the new frames, where they play
    assert track.active_until >= 3240 * 8


class Frames(Wire):
    """A wire that keeps each frame sent, to tell which audio went out."""

    def media(self, frame, received_ns=0):
        self.sent.append(("media", frame))

    def frames(self):
        return [frame for kind, frame in self.sent if kind == "media"]


def numbered(count, first=0):
    """`count` frames, each filled with its own byte, so a frame says which it is."""
    return b"".join(bytes([first + n]) * FRAME_BYTES for n in range(count))


def test_a_paused_turn_goes_on_from_the_frame_the_caller_was_hearing_when_cut():
    playback = Playback(lead_ms=200, max_frames=1500)
    wire = Frames()
    playback.enqueue(numbered(50), -20.0)
    playback.pump(wire.media, wire.mark, 1000.0)  # frames 0-9 play 1000-1200 ms
    assert playback.clear(1050.0, pause=True) == 0  # cut while frame 2 plays: nothing dropped
    assert playback.paused and playback.paused_frames == 48
    assert not playback.audible_at(1400.0)  # the caller hears nothing while it is paused
    playback.enqueue(numbered(5, 50), -20.0)  # VAPI talks on meanwhile
    assert playback.paused_frames == 53 and playback.queued_frames == 0
    playback.pump(wire.media, wire.mark, 1100.0)
    assert len(wire.frames()) == 10  # nothing goes out while paused
    assert playback.resume() == 53
    playback.pump(wire.media, wire.mark, 1900.0)
    assert [frame[0] for frame in wire.frames()[10:]] == list(range(2, 12))  # from frame 2 on
    assert playback.play_end_ms == 1900.0 + 200  # played from now, not from where it was cut


def test_a_paused_turn_dropped_is_gone_and_audio_queues_as_before():
    playback = Playback(lead_ms=200, max_frames=1500)
    wire = Frames()
    playback.enqueue(numbered(20), -20.0)
    playback.pump(wire.media, wire.mark, 0.0)
    playback.clear(100.0, pause=True)
    playback.enqueue(numbered(3, 20), -20.0)
    assert playback.drop_paused() == 15 + 3  # frames 5-19, unplayed at 100 ms, and 20-22
    assert not playback.paused and playback.resume() == 0
    playback.enqueue(numbered(2, 40), -20.0)  # the next turn
    playback.pump(wire.media, wire.mark, 500.0)
    assert [frame[0] for frame in wire.frames()[10:]] == [40, 41]


def test_frames_the_marks_say_played_are_not_played_again():
    playback = Playback(lead_ms=200, max_frames=1500)
    wire = Frames()
    playback.enqueue(numbered(20), -20.0)
    playback.pump(wire.media, wire.mark, 0.0)  # frames 0-9 by the send clock 0-200 ms
    playback.on_mark(wire.marks()[2])  # Twilio says frames 0-5 played
    playback.clear(60.0, pause=True)  # the send clock says frame 3 was playing: the marks know better
    playback.resume()
    playback.pump(wire.media, wire.mark, 300.0)
    assert wire.frames()[10][0] == 6
