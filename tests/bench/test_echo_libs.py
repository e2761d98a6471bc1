"""The echo comparison bench: our canceller's row, on real speech, as docs/barge-in.md quotes it."""

from __future__ import annotations

import re

import pytest

from bench import echo_libs
from bench._bargein_audio import missing_tools

_MISSING = missing_tools()


@pytest.mark.skipif(_MISSING is not None, reason=f"needs the bench's tools: {_MISSING}")
@pytest.mark.timeout(120)
def test_our_canceller_removes_the_echo_at_every_delay_and_leaves_a_caller_over_it_whole(capsys):
    assert echo_libs.main([]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ours |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    erle = [float(cell.removesuffix(" dB")) for cell in cells[1 : 1 + len(echo_libs.DELAYS_MS)]]
    kept = [float(x) for x in re.findall(r"([+-][\d.]+) dB", cells[-1])]
    assert len(erle) == len(echo_libs.DELAYS_MS) and min(erle) >= 20.0, row
    assert len(kept) == len(echo_libs.WINDOWS_S) and max(abs(k) for k in kept) <= 1.0, row
