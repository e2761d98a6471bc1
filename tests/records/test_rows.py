import pytest

from records.errors import InvalidRecord
from records.rows import COLUMNS, from_row, to_row
from tests.records.helpers import make_record


def test_a_row_reads_back_as_the_same_record():
    record = make_record()
    assert from_row(to_row(record)) == record


def test_the_row_stores_the_duration_and_the_restarts_as_a_json_object():
    row = dict(zip(COLUMNS, to_row(make_record(started_at=10.0, ended_at=70.0)), strict=True))
    assert row["duration_s"] == 60.0
    assert row["restarts"] == '{"codec":0,"twilio":1,"vad":0,"vapi":2}'


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"call_sid": None}, "call_sid"),
        ({"stream_sid": 5}, "stream_sid"),
        ({"started_at": "yesterday"}, "started_at"),
        ({"ended_at": float("nan")}, "ended_at"),
        ({"turns": -1}, "turns"),
        ({"frames_in": 1.5}, "frames_in"),
        ({"barge_ins": True}, "barge_ins"),
        ({"turn_latency_p95_ms": float("inf")}, "turn_latency_p95_ms"),
        ({"restarts": {"vapi": 1}}, "restarts"),
        ({"restarts": (("vapi", 1), ("vapi", 2))}, "restarts"),
        ({"restarts": (("vapi", -1),)}, "restarts[vapi]"),
        ({"recording_path": 7}, "recording_path"),
        ({"node_id": 7}, "node_id"),
    ],
)
def test_a_field_the_table_cannot_take_is_refused_naming_it(changes, field):
    with pytest.raises(InvalidRecord) as info:
        to_row(make_record(**changes))
    assert info.value.field_name == field
