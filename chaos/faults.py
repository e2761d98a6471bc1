"""The vocabulary of injectable faults, and which actor each applies to."""

from __future__ import annotations

__all__ = ["ACTORS", "FAULTS", "LINK_FAULTS", "applicable_pairs", "check_fault"]

ACTORS = ("twilio", "vapi", "codec", "vad", "supervisor")
# raise: an exception in a handler; kill: a BaseException (what pykka alone would turn
# into stopping every actor); hang: a handler that never returns; slow: one that takes
# 0.3 s; sever: the VAPI socket closes; blackhole: it stays open but silent.
FAULTS = ("raise", "kill", "hang", "slow", "sever", "blackhole")
LINK_FAULTS = ("sever", "blackhole")


def check_fault(actor: object, fault: object) -> str | None:
    """None when (actor, fault) can be injected; otherwise what is wrong, for a 400."""
    if actor not in ACTORS:
        return f"actor must be one of {', '.join(ACTORS)}"
    if fault not in FAULTS:
        return f"fault must be one of {', '.join(FAULTS)}"
    if fault in LINK_FAULTS and actor != "vapi":
        return f"{fault} applies to the vapi actor only"
    return None


def applicable_pairs() -> tuple[tuple[str, str], ...]:
    """Every (actor, fault) the chaos monkey may pick."""
    return tuple((a, f) for a in ACTORS for f in FAULTS if check_fault(a, f) is None)
