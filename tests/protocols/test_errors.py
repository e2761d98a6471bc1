from __future__ import annotations

import pickle

import pytest

from protocols.errors import PROTOCOL_ERROR_KINDS, ProtocolError


def test_protocol_error_is_a_value_error_carrying_kind_and_detail() -> None:
    error = ProtocolError("bad_json", "Expecting value")

    assert isinstance(error, ValueError)
    assert error.kind == "bad_json"
    assert error.detail == "Expecting value"
    assert str(error) == "bad_json: Expecting value"


def test_the_kinds_are_exactly_the_documented_metrics_labels() -> None:
    assert {
        "binary_frame",
        "oversize",
        "bad_json",
        "not_object",
        "unknown_event",
        "missing_field",
        "bad_field",
        "bad_base64",
    } == PROTOCOL_ERROR_KINDS


def test_an_unknown_kind_is_refused_so_no_stray_metrics_label_appears() -> None:
    with pytest.raises(ValueError, match="unknown ProtocolError kind"):
        ProtocolError("bad-json", "typo")


def test_protocol_error_survives_pickling_with_its_kind() -> None:
    error = pickle.loads(pickle.dumps(ProtocolError("oversize", "70000 characters")))  # noqa: S301 - our own bytes

    assert (error.kind, error.detail) == ("oversize", "70000 characters")
