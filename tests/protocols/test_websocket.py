"""The RFC 6455 frame reader: what a server must refuse, and what it must put back together."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Closed,
    FrameReader,
    Message,
    Oversize,
    Ping,
    Pong,
    WebSocketProtocolError,
    encode_frame,
    unmask,
)
from tests.wsframes import client_frame


def events(reader: FrameReader) -> list[object]:
    out = []
    while (event := reader.next_event()) is not None:
        out.append(event)
    return out


def test_unmask_matches_the_per_byte_definition():
    payload, mask = os.urandom(1001), b"\xa1\xb2\xc3\xd4"
    assert unmask(payload, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert unmask(b"", mask) == b""


def test_a_text_message_split_across_feeds_arrives_once_whole():
    frame = client_frame(b'{"event":"media"}', OP_TEXT)
    reader = FrameReader(1024)
    for i in range(len(frame) - 1):
        reader.feed(frame[i : i + 1])
        assert reader.next_event() is None
    reader.feed(frame[-1:])
    assert reader.next_event() == Message(b'{"event":"media"}', True)
    assert reader.frames == 1 and reader.bytes == len(frame)


def test_fragments_are_joined_and_control_frames_may_come_between_them():
    reader = FrameReader(1024)
    reader.feed(client_frame(b"ab", OP_BINARY, fin=False) + client_frame(b"hi", OP_PING)
                + client_frame(b"cd", 0, fin=False) + client_frame(b"ef", 0))
    assert events(reader) == [Ping(b"hi"), Message(b"abcdef", False)]


@pytest.mark.parametrize(
    "frame, code",
    [
        (client_frame(b"x", OP_TEXT, mask=None), 1002),  # unmasked: RFC 6455 §5.1
        (client_frame(b"x", OP_TEXT, rsv=0x40), 1002),
        (client_frame(b"x", 0x3), 1002),  # reserved opcode
        (client_frame(b"x", 0), 1002),  # continuation with no message
        (client_frame(b"x" * 126, OP_PING), 1002),
        (client_frame(b"", OP_PING, fin=False), 1002),
        (client_frame(struct.pack("!H", 0), OP_CLOSE), 1002),  # close code 0
        (client_frame(struct.pack("!H", 1005), OP_CLOSE), 1002),  # reserved for reporting
        (client_frame(b"\x03", OP_CLOSE), 1002),
        (client_frame(struct.pack("!H", 1000) + b"\xff", OP_CLOSE), 1007),
        (client_frame(b"a", OP_TEXT, fin=False) + client_frame(b"b", OP_TEXT), 1002),
    ],
)
def test_protocol_violations_are_refused_with_the_right_close_code(frame, code):
    reader = FrameReader(1024)
    reader.feed(frame)
    with pytest.raises(WebSocketProtocolError) as raised:
        events(reader)
    assert raised.value.code == code


def test_an_unmasked_stop_is_not_read_as_a_message():
    reader = FrameReader(1024)
    reader.feed(client_frame(b'{"event":"stop"}', OP_TEXT, mask=None))
    with pytest.raises(WebSocketProtocolError):
        reader.next_event()


def test_close_frames_carry_their_code_and_reason():
    reader = FrameReader(1024)
    reader.feed(client_frame(struct.pack("!H", 1000) + b"bye", OP_CLOSE) + client_frame(b"", OP_CLOSE))
    assert events(reader) == [Closed(1000, "bye"), Closed(1005, "")]
    reader.feed(client_frame(struct.pack("!H", 4000), OP_CLOSE) + client_frame(b"", OP_PONG))
    assert events(reader) == [Closed(4000, ""), Pong(b"")]


def test_an_oversize_message_is_skipped_as_it_arrives_and_the_next_one_is_read():
    reader = FrameReader(1000)
    big = client_frame(b"x" * 70_000, OP_TEXT)
    # Fed in small pieces: the reader must never hold the big frame whole.
    held = 0
    for i in range(0, len(big), 4096):
        reader.feed(big[i : i + 4096])
        got = events(reader)
        held = max(held, reader.buffered)
        if got:
            assert got == [Oversize(70_000)]
    assert held <= 4096
    reader.feed(client_frame(b"ok", OP_TEXT))
    assert events(reader) == [Message(b"ok", True)]


def test_an_oversize_fragmented_message_is_reported_once_and_drops_its_parts():
    reader = FrameReader(10)
    reader.feed(client_frame(b"12345678", OP_TEXT, fin=False) + client_frame(b"12345678", 0, fin=False)
                + client_frame(b"12345678", 0) + client_frame(b"ok", OP_BINARY))
    assert events(reader) == [Oversize(24), Message(b"ok", False)]


def test_a_huge_declared_length_is_skipped_without_waiting_for_it_to_be_buffered():
    reader = FrameReader(1 << 16)
    reader.feed(struct.pack("!BBQ", 0x82, 0xFF, 50 << 20) + b"\0\0\0\0")
    assert reader.next_event() == Oversize(50 << 20)
    assert reader.skipping and reader.buffered == 0


def test_server_frames_use_the_shortest_length_form():
    assert encode_frame(b"x" * 125, OP_TEXT)[:2] == bytes([0x81, 125])
    assert encode_frame(b"x" * 126, OP_TEXT)[:4] == bytes([0x81, 126, 0, 126])
    assert encode_frame(b"x" * 65536, OP_BINARY)[:2] == bytes([0x82, 127])


@settings(max_examples=120, deadline=None, derandomize=True)
@given(
    messages=st.lists(st.tuples(st.binary(max_size=300), st.booleans(), st.integers(1, 4)), max_size=6),
    mask=st.binary(min_size=4, max_size=4),
    cut=st.integers(1, 64),
)
def test_any_sequence_of_fragmented_messages_arrives_intact_however_the_bytes_are_split(messages, mask, cut):
    stream = b""
    for payload, text, pieces in messages:
        step = max(1, len(payload) // pieces)
        chunks = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
        for i, chunk in enumerate(chunks):
            opcode = (OP_TEXT if text else OP_BINARY) if i == 0 else 0
            stream += client_frame(chunk, opcode, fin=i == len(chunks) - 1, mask=mask)
    reader = FrameReader(1 << 20)
    got = []
    for i in range(0, len(stream), cut):
        reader.feed(stream[i : i + cut])
        got += events(reader)
    assert got == [Message(payload, text) for payload, text, _ in messages]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=400), st.integers(1, 50))
def test_arbitrary_bytes_give_events_or_a_protocol_error_and_nothing_else(data, cut):
    reader = FrameReader(256)
    try:
        for i in range(0, len(data), cut):
            reader.feed(data[i : i + cut])
            for event in events(reader):
                assert isinstance(event, (Message, Ping, Pong, Closed, Oversize))
                if isinstance(event, Message):
                    assert len(event.payload) <= 256
    except WebSocketProtocolError as exc:
        assert exc.code in (1002, 1007)
    assert reader.buffered <= len(data)


# ---- a server's frames (VAPI's side: unmasked, oversize refused, fragments capped) ------------


def test_a_server_frame_that_is_masked_is_refused_and_an_unmasked_one_is_read():
    reader = FrameReader(1024, masked=False)
    reader.feed(client_frame(b"audio", OP_BINARY, mask=None))
    assert events(reader) == [Message(b"audio", False)]
    reader.feed(client_frame(b"audio", OP_BINARY))
    with pytest.raises(WebSocketProtocolError) as raised:
        events(reader)
    assert raised.value.code == 1002


def test_without_skipping_an_oversize_message_is_refused_from_the_header_that_crosses_the_cap():
    reader = FrameReader(1000, masked=False, skip_oversize=False)
    reader.feed(client_frame(b"x" * 600, OP_BINARY, fin=False, mask=None))
    assert events(reader) == []
    # Only the next header: its declared length takes the message over the cap.
    reader.feed(struct.pack("!BBH", 0x00, 126, 600))
    with pytest.raises(WebSocketProtocolError) as raised:
        events(reader)
    assert raised.value.code == 1009


def test_a_message_in_more_fragments_than_the_cap_is_refused_even_when_they_are_empty():
    reader = FrameReader(1000, masked=False, skip_oversize=False, max_fragments=8)
    reader.feed(client_frame(b"{", OP_TEXT, fin=False, mask=None) + client_frame(b"", 0, fin=False, mask=None) * 7)
    assert events(reader) == []
    reader.feed(client_frame(b"", 0, fin=False, mask=None))
    with pytest.raises(WebSocketProtocolError) as raised:
        events(reader)
    assert raised.value.code == 1009


def _frames_and_events(items, mask):
    """The wire bytes of `items` (messages, possibly fragmented, and pings) and the events they must give."""
    stream, expected = b"", []
    for item in items:
        if item[0] == "ping":
            stream += client_frame(item[1], OP_PING, mask=mask)
            expected.append(Ping(item[1]))
            continue
        _, payload, text, pieces = item
        step = max(1, -(-len(payload) // pieces))
        chunks = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
        for i, chunk in enumerate(chunks):
            opcode = (OP_TEXT if text else OP_BINARY) if i == 0 else 0
            stream += client_frame(chunk, opcode, fin=i == len(chunks) - 1, mask=mask)
        expected.append(Message(payload, text))
    return stream, expected


_ITEMS = st.lists(
    st.one_of(
        # Up to 400 bytes: short lengths and 16-bit ones, whole frames and fragments.
        st.tuples(st.just("message"), st.one_of(st.binary(max_size=40), st.binary(min_size=120, max_size=400)),
                  st.booleans(), st.integers(1, 3)),
        st.tuples(st.just("ping"), st.binary(max_size=125)),
    ),
    max_size=6,
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(items=_ITEMS, client=st.booleans(), cut=st.integers(1, 900))
def test_any_frames_of_either_side_arrive_intact_however_the_bytes_are_split(items, client, cut):
    stream, expected = _frames_and_events(items, b"\x9a\x0b\x7c\xfd" if client else None)
    reader = FrameReader(1 << 20, masked=client, skip_oversize=client, max_fragments=None if client else 16)
    got = []
    for i in range(0, len(stream), cut):
        reader.feed(stream[i : i + cut])
        got += events(reader)
    assert got == expected
    assert reader.buffered == 0


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=600), st.integers(1, 80), st.booleans())
def test_arbitrary_bytes_from_a_server_give_capped_events_or_a_protocol_error(data, cut, masked_prefix):
    # Often start with a valid unmasked header, so the parser gets past the first byte.
    if masked_prefix:
        data = bytes([0x82, len(data) % 126]) + data
    reader = FrameReader(256, masked=False, skip_oversize=False, max_fragments=4)
    try:
        for i in range(0, len(data), cut):
            reader.feed(data[i : i + cut])
            for event in events(reader):
                assert isinstance(event, (Message, Ping, Pong, Closed))
                if isinstance(event, Message):
                    assert len(event.payload) <= 256
            assert len(reader._parts) <= 4
    except WebSocketProtocolError as exc:
        assert exc.code in (1002, 1007, 1009)
