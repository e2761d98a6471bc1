"""The offline barge-in bench in miniature: real speech, this tree's audio code in a worker process."""

from __future__ import annotations

import pytest

from bench import bargein_offline
from bench._bargein_audio import missing_tools

_MISSING = missing_tools()


@pytest.mark.skipif(_MISSING is not None, reason=f"needs the bench's tools: {_MISSING}")
@pytest.mark.timeout(120)
def test_every_condition_is_reported_and_a_caller_over_a_steady_echo_is_heard(capsys):
    assert bargein_offline.main(["--trials", "3"]) == 0
    out = capsys.readouterr().out
    for row in ("| -1..+1 ms | 0 in", "| -3..+5 ms |", "| -35 dBFS, echo stepping |", "| echo 300 ms |",
                "| echo -6 dB |", "| echo -10 dB, pink -45, TV -38 |"):
        assert row in out, out
    # A -30 dBFS caller over the assistant's steady echo: heard in every trial, none cut early.
    [row] = [line for line in out.splitlines() if line.startswith("| -30 dBFS, echo steady |")]
    assert row.endswith("; 0 (0) |"), row
    # Talking from the first audio with no echo: heard in every trial.
    [row] = [line for line in out.splitlines() if line.startswith("| no echo |")]
    assert row.endswith("; 0 |"), row
