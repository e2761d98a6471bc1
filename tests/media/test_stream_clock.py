from media.stream_clock import StreamClock


def feed(clock, timestamps):
    return [clock.admit(ts) for ts in timestamps]


def test_continuous_frames_need_no_filling_even_with_a_nonzero_start_and_jitter():
    clock = StreamClock()
    assert feed(clock, [52, 72, 93, 111, 132]) == [0, 0, 0, 0, 0]
    assert clock.filled_frames == 0


def test_a_gap_is_filled_with_silence_of_its_length():
    clock = StreamClock()
    assert feed(clock, [52, 72, 152]) == [0, 0, 3]  # 92, 112, 132 were lost
    assert clock.filled_frames == 3


def test_duplicate_and_stale_frames_are_dropped_and_counted():
    clock = StreamClock()
    assert feed(clock, [100, 120, 120, 80, 140]) == [0, 0, None, None, 0]
    assert clock.dropped_frames == 2


def test_a_jump_past_the_cap_is_a_clock_reset_and_fills_nothing():
    clock = StreamClock(max_fill_ms=1000)
    assert feed(clock, [0, 600_000, 600_020]) == [0, 0, 0]
    assert clock.resets == 1 and clock.filled_frames == 0


def test_a_one_second_gap_is_filled_whole():
    clock = StreamClock(max_fill_ms=1000)
    assert feed(clock, [0, 1020]) == [0, 50]


def test_timestamps_that_keep_jumping_ahead_cannot_amplify_the_stream():
    # 495 frames a second, each claiming one second more than the last: silence is
    # inserted at no more than real time after the first burst.
    clock = StreamClock(max_fill_ms=1000)
    inserted = 0
    for i in range(495 * 10):
        gap = clock.admit(i * 1000, now_s=i / 495)
        inserted += gap or 0
    assert inserted <= 100 + 50 * 10
    assert clock.fill_refused > 0


def test_frames_longer_than_20ms_advance_the_clock_by_their_length():
    clock = StreamClock()
    assert clock.admit(0, duration_ms=40) == 0
    assert clock.admit(40) == 0
