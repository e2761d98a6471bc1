import json

from records.model import OUTCOMES
from tests.records.helpers import make_record


def test_duration_is_the_time_from_start_to_end():
    assert make_record(started_at=100.0, ended_at=161.5).duration_s == 61.5


def test_duration_is_never_negative_when_the_wall_clock_stepped_back():
    assert make_record(started_at=100.0, ended_at=99.0).duration_s == 0.0


def test_to_json_is_plain_json_with_restarts_as_an_object_and_the_duration():
    record = make_record(stream_sid=None, turn_latency_p50_ms=None)
    data = record.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["restarts"] == {"codec": 0, "twilio": 1, "vad": 0, "vapi": 2}
    assert data["duration_s"] == record.duration_s
    assert data["stream_sid"] is None and data["turn_latency_p50_ms"] is None
    fields = set(record.__dataclass_fields__)  # every field is in the JSON, plus the duration
    assert set(data) == fields | {"duration_s"}


def test_the_outcome_vocabulary_is_the_one_the_issue_names():
    assert OUTCOMES == ("completed", "assistant-ended", "gave-up", "drained", "failed", "refused", "handed-off")
