from media.uplink import UplinkBuffer


def test_replay_holds_only_what_was_sent_after_vapi_last_spoke():
    buf = UplinkBuffer(capacity_frames=100)
    for n in range(10):
        buf.mark_sent(buf.append(bytes([n])))
        if n == 5:
            buf.mark_answered()
    assert [seq for seq, _ in buf.pending_replay()] == [7, 8, 9, 10]


def test_frames_never_sent_are_replayed_too():
    buf = UplinkBuffer(capacity_frames=100)
    buf.append(b"a")
    buf.append(b"b")
    assert [data for _, data in buf.pending_replay()] == [b"a", b"b"]


def test_replay_is_capped_at_the_buffer_capacity():
    buf = UplinkBuffer(capacity_frames=3)
    for n in range(10):
        buf.append(bytes([n]))
    assert [seq for seq, _ in buf.pending_replay()] == [8, 9, 10]


def test_a_zero_capacity_buffer_replays_nothing():
    buf = UplinkBuffer(capacity_frames=0)
    buf.append(b"a")
    assert buf.pending_replay() == []
