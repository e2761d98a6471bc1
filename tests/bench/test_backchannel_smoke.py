"""The backchannel bench in miniature: one call per case, through a real server process."""

from __future__ import annotations

import secrets

import pytest

from bench.backchannel import SPEAKS_AT_MS, TURN_MS, run_case
from sims.vapi import VapiSimConfig


# A server start and one 7-second call per case: some 20 s for the two.
@pytest.mark.timeout(90)
def test_an_acknowledgement_vapi_lets_pass_costs_a_paused_turn_nothing_and_a_dropped_one_the_rest(tmp_path):
    config = VapiSimConfig(api_key=secrets.token_hex(8), record=False, greeting_ms=TURN_MS, interruptible=False,
                           answers=False)
    (tmp_path / "pause").mkdir()
    (tmp_path / "drop").mkdir()
    [paused] = run_case("300", config, 1, tmp_path / "pause")
    [dropped] = run_case("0", config, 1, tmp_path / "drop")
    # Paused: every frame of the turn is heard in the end (the one cut part-way, twice).
    assert TURN_MS - 20 <= paused.heard_ms <= TURN_MS + 40, paused
    assert paused.wait_ms is not None and 500 < paused.wait_ms < 3000, paused
    # Dropped: what played before the clear, and nothing after it.
    assert SPEAKS_AT_MS - 100 < dropped.heard_ms < SPEAKS_AT_MS + 400, dropped
    assert dropped.heard_after_clear_ms == 0 and dropped.wait_ms is None, dropped
